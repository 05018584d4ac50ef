"""The wire schema of kerneld: every message between client, daemon, zygote and worker.

Encoding is MessagePack through msgspec (typed decode = validation; never pickle). Records are
frozen msgspec Structs; a tagged union per direction lets one `decode` both parse and validate.
Sizes are checked *before* decoding.

Client ↔ daemon (client DEALER → daemon ROUTER; the ROUTER prepends the peer identity):

    client → daemon   [ Request{v, id, op, args} ]
    daemon → client   [ Event{v, id, event} ]*          zero or more, in order (streams,
                                                        subscriptions), routed by request id
                      [ Reply{v, id, ok, value|error} ]  exactly one terminal reply per request

Manager ↔ worker (worker DEALER, routing id = the kernel's secret token → manager ROUTER):

    manager → worker  [ Execute | CommRequest | InputReply | Complete | Inspect | IsComplete
                        | History | CommInfo | Shutdown | Activate (first, right after Hello) ]
    worker → manager  [ Hello ] once, then
                      [ Output{exec_id, type, data} ]*  events of the running execution, in order
                                                        (exec_id "": a comm message the kernel
                                                        sent outside any execution)
                      [ Done{exec_id, status, ...} ]    end of that execution (or CommRequest)
                      [ Answer{req_id, content} ]       reply to Complete/Inspect/IsComplete/
                                                        History/CommInfo

Manager ↔ zygote (pipes, 4-byte big-endian length + msgpack): ForkRequest → Forked;
the zygote also reports BootFailed (the child could not confine itself) and Exited (reaped).

Everything a worker sends is untrusted: the manager decodes it with these types, drops what does
not fit, and only accepts events for the execution it is actually running on that kernel.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

VERSION = 1

# Bounds. A worker message larger than MAX_WORKER_MESSAGE is dropped by ZeroMQ itself
# (ZMQ_MAXMSGSIZE on the manager's ROUTER); the worker splits stream output below it.
MAX_CODE_BYTES = 1 * 1024 * 1024
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_WORKER_MESSAGE = 32 * 1024 * 1024
STREAM_CHUNK_BYTES = 256 * 1024
# A worker's second DEALER (routing id = its token + this), opened the first time one of its
# threads sends a comm message between executions, when the main socket is the main thread's
SIDE_ROUTING_SUFFIX = b"/side"

# Jupyter vocabulary for execution events (the seed surfaces `error` as `execute_error`).
COMM_EVENTS = frozenset({"comm_open", "comm_msg", "comm_close"})
EVENT_TYPES = frozenset({
    "stream", "display_data", "update_display_data", "execute_result", "execute_error",
    "clear_output", "input_request", "execution_stalled", *COMM_EVENTS,
})
HISTORY_LIMIT = 10_000  # cells of input (and output) history a kernel keeps, the newest


class KernelEvent(msgspec.Struct, frozen=True):
    """One event as users see it: listeners, `execute_stream` and `ExecutionResult.outputs`."""

    type: str
    data: dict[str, Any]
    kernel_id: str
    execution_id: str | None = None


class ExecutionResult(msgspec.Struct, frozen=True):
    """The outcome of one execution (SPEC: Execution semantics)."""

    execution_id: str
    kernel_id: str
    status: str  # "ok" | "error" | "aborted"
    execution_count: int | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    outputs: list[KernelEvent]
    started: float | None
    finished: float | None
    # Jupyter's execute_reply extras: payloads (the pager of `obj?`, `set_next_input`) and
    # the values of the request's `user_expressions` (name → {status, data, metadata} or an
    # error content), evaluated after a cell that succeeded
    payload: list[dict[str, Any]] = []
    user_expressions: dict[str, Any] = {}

    @property
    def success(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------- manager → worker

class Execute(msgspec.Struct, frozen=True, tag="execute", tag_field="t"):
    exec_id: str
    code: str
    silent: bool = False
    store_history: bool = True
    allow_stdin: bool = False
    output_limit: int = 8 * 1024 * 1024
    user_expressions: dict[str, str] | None = None


class CommRequest(msgspec.Struct, frozen=True, tag="comm", tag_field="t"):
    """A front end's comm_open / comm_msg / comm_close, run like an execution: queued with the
    cells, its handler's output belongs to `exec_id`, it ends with a `Done`."""

    exec_id: str
    msg_type: str  # "comm_open" | "comm_msg" | "comm_close"
    content: dict[str, Any]
    metadata: dict[str, Any] = {}
    buffers: list[bytes] = []
    output_limit: int = 8 * 1024 * 1024


class InputReply(msgspec.Struct, frozen=True, tag="input_reply", tag_field="t"):
    exec_id: str
    value: str


class Complete(msgspec.Struct, frozen=True, tag="complete", tag_field="t"):
    req_id: str
    code: str
    cursor_pos: int


class Inspect(msgspec.Struct, frozen=True, tag="inspect", tag_field="t"):
    req_id: str
    code: str
    cursor_pos: int
    detail_level: int = 0


class IsComplete(msgspec.Struct, frozen=True, tag="is_complete", tag_field="t"):
    req_id: str
    code: str


class History(msgspec.Struct, frozen=True, tag="history", tag_field="t"):
    """Jupyter's history_request content; answered with history_reply content."""

    req_id: str
    hist_access_type: str = "tail"
    output: bool = False
    raw: bool = True
    session: int = 0
    start: int = 0
    stop: int | None = None
    n: int | None = None
    pattern: str | None = None
    unique: bool = False


class CommInfo(msgspec.Struct, frozen=True, tag="comm_info", tag_field="t"):
    req_id: str
    target_name: str | None = None


class Shutdown(msgspec.Struct, frozen=True, tag="shutdown", tag_field="t"):
    pass


class Activate(msgspec.Struct, frozen=True, tag="activate", tag_field="t"):
    """The worker's environment becomes exactly `env`; sent right after Hello (and again when
    a pooled worker starts serving a kernel). Environments travel only this way, never through
    the zygote, whose memory every later worker inherits."""

    env: dict[str, str]


ToWorker = (Execute | CommRequest | InputReply | Complete | Inspect | IsComplete | History
            | CommInfo | Shutdown | Activate)

# --------------------------------------------------------------------------- worker → manager


class Hello(msgspec.Struct, frozen=True, tag="hello", tag_field="t"):
    pid: int
    version: int = VERSION


class Output(msgspec.Struct, frozen=True, tag="output", tag_field="t"):
    exec_id: str
    type: str
    data: dict[str, Any]


class Done(msgspec.Struct, frozen=True, tag="done", tag_field="t"):
    exec_id: str
    status: str
    execution_count: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    payload: list[dict[str, Any]] = []
    user_expressions: dict[str, Any] = {}


class Answer(msgspec.Struct, frozen=True, tag="answer", tag_field="t"):
    req_id: str
    content: dict[str, Any]


FromWorker = Hello | Output | Done | Answer

# --------------------------------------------------------------------------- manager ↔ zygote


class ForkRequest(msgspec.Struct, frozen=True, tag="fork", tag_field="t"):
    req_id: int
    kernel_id: str
    token: bytes
    endpoint: str
    confine: bool
    policy: Any  # sandbox.Policy without its env (see Activate); decoded by the zygote
    cwd: str | None = None


class Forked(msgspec.Struct, frozen=True, tag="forked", tag_field="t"):
    req_id: int
    pid: int = 0
    init_pid: int | None = None  # PID 1 of the worker's PID namespace (killing it kills all)
    error: str | None = None


class BootFailed(msgspec.Struct, frozen=True, tag="boot_failed", tag_field="t"):
    pid: int
    message: str


class Exited(msgspec.Struct, frozen=True, tag="exited", tag_field="t"):
    pid: int
    exit_code: int | None
    signal: int | None


FromZygote = Forked | BootFailed | Exited

# --------------------------------------------------------------------------- client ↔ daemon


class Request(msgspec.Struct, frozen=True, tag="request", tag_field="t"):
    v: int
    id: str
    op: str
    args: dict[str, Any] = {}


class Event(msgspec.Struct, frozen=True, tag="event", tag_field="t"):
    v: int
    id: str
    event: KernelEvent


class Reply(msgspec.Struct, frozen=True, tag="reply", tag_field="t"):
    v: int
    id: str
    ok: bool
    value: Any = None
    error: dict[str, Any] | None = None


ToClient = Event | Reply

# --------------------------------------------------------------------------- codecs

_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
to_worker_decoder = msgspec.msgpack.Decoder(ToWorker)
from_worker_decoder = msgspec.msgpack.Decoder(FromWorker)
from_zygote_decoder = msgspec.msgpack.Decoder(FromZygote)
fork_request_decoder = msgspec.msgpack.Decoder(ForkRequest)
request_decoder = msgspec.msgpack.Decoder(Request)
to_client_decoder = msgspec.msgpack.Decoder(ToClient)

DecodeError = msgspec.DecodeError
_LEN = struct.Struct(">I")


class _IdOnly(msgspec.Struct):
    """Enough of a request to answer it when the rest does not decode."""

    id: str


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def request_id(payload: bytes) -> str | None:
    """The `id` of a request that did not decode as a `Request`, if it can be read: a
    top-level map whose last `id` key holds a str. None otherwise.

    msgspec reads it (in C) unless the frame nests deeper than the decoder recurses (~1000
    levels: msgspec recurses even to skip a value); then `scan_request_id` reads the same id
    without recursion."""
    try:
        return _id_decoder.decode(payload).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    except RecursionError:
        return scan_request_id(payload)


# msgpack formats by first byte, for the scanner: (kind, length-field bytes, fixed bytes).
# _RAW: `length + fixed` bytes follow; _STR: a string of `length` bytes; _ARRAY / _MAP:
# `length` values / pairs follow. Fixed-size formats have no length field.
_RAW, _STR, _ARRAY, _MAP = range(4)
_FORMATS: dict[int, tuple[int, int, int]] = {
    0xc0: (_RAW, 0, 0), 0xc2: (_RAW, 0, 0), 0xc3: (_RAW, 0, 0),                 # nil, bools
    0xc4: (_RAW, 1, 0), 0xc5: (_RAW, 2, 0), 0xc6: (_RAW, 4, 0),                 # bin
    0xc7: (_RAW, 1, 1), 0xc8: (_RAW, 2, 1), 0xc9: (_RAW, 4, 1),                 # ext (+type)
    0xca: (_RAW, 0, 4), 0xcb: (_RAW, 0, 8),                                     # floats
    0xcc: (_RAW, 0, 1), 0xcd: (_RAW, 0, 2), 0xce: (_RAW, 0, 4), 0xcf: (_RAW, 0, 8),  # uint
    0xd0: (_RAW, 0, 1), 0xd1: (_RAW, 0, 2), 0xd2: (_RAW, 0, 4), 0xd3: (_RAW, 0, 8),  # int
    0xd4: (_RAW, 0, 2), 0xd5: (_RAW, 0, 3), 0xd6: (_RAW, 0, 5), 0xd7: (_RAW, 0, 9),  # fixext
    0xd8: (_RAW, 0, 17),
    0xd9: (_STR, 1, 0), 0xda: (_STR, 2, 0), 0xdb: (_STR, 4, 0),
    0xdc: (_ARRAY, 2, 0), 0xdd: (_ARRAY, 4, 0),
    0xde: (_MAP, 2, 0), 0xdf: (_MAP, 4, 0),
}
SCAN_MAX_ITEMS = 100_000  # values the scanner skips at most (~10 ms) before giving up


def _header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(kind, length, position after the header) of the msgpack value at `pos`.
    IndexError when truncated, KeyError for the unused byte 0xc1."""
    b = data[pos]
    pos += 1
    if b <= 0x7f or b >= 0xe0:
        return _RAW, 0, pos                          # fixint
    if b <= 0x8f:
        return _MAP, b & 0x0f, pos
    if b <= 0x9f:
        return _ARRAY, b & 0x0f, pos
    if b <= 0xbf:
        return _STR, b & 0x1f, pos
    kind, width, fixed = _FORMATS[b]
    if pos + width > len(data):
        raise IndexError("truncated length")
    length = int.from_bytes(data[pos:pos + width], "big") + fixed if width else fixed
    return kind, length, pos + width


def _skip(data: bytes, kind: int, length: int, pos: int, budget: list[int]) -> int:
    """Skip the value whose header was read (`pos` is just past it), nested ones included,
    with a counter of values still to skip instead of recursion; returns the position after
    it. `budget[0]` counts down the values skipped."""
    pending = 0
    end = len(data)
    while True:
        if kind == _ARRAY:
            pending += length
        elif kind == _MAP:
            pending += 2 * length
        else:
            pos += length
        if pos > end or pending > end - pos:  # every pending value takes a byte at least
            raise IndexError("truncated")
        if not pending:
            return pos
        pending -= 1
        budget[0] -= 1
        if budget[0] < 0:
            raise OverflowError("too many values to scan")
        kind, length, pos = _header(data, pos)


def scan_request_id(payload: bytes, max_items: int = SCAN_MAX_ITEMS) -> str | None:
    """`request_id` without recursion: read the top-level map's keys and its `id` str,
    skipping every other value by its length (nested containers by counting their items).
    Same answer as decoding `_IdOnly` (keys must be str, the last `id` wins, it must be a
    valid UTF-8 str, nothing may follow the map), at any depth; None beyond `max_items`."""
    budget = [max_items]
    try:
        kind, pairs, pos = _header(payload, 0)
        if kind != _MAP or 2 * pairs > len(payload) - pos or pairs > max_items:
            return None
        rid: str | None = None
        for _ in range(pairs):
            budget[0] -= 2
            kind, length, pos = _header(payload, pos)
            if kind != _STR or pos + length > len(payload):
                return None
            key = payload[pos:pos + length]
            kind, length, pos = _header(payload, pos + length)
            if key == b"id":
                if kind != _STR or pos + length > len(payload):
                    return None
                rid = payload[pos:pos + length].decode("utf-8")
            pos = _skip(payload, kind, length, pos, budget)
        return rid if pos == len(payload) else None
    except (IndexError, KeyError, OverflowError, UnicodeDecodeError):
        return None


def frame(payload: bytes) -> bytes:
    """Length-prefix a payload for the zygote pipes."""
    return _LEN.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list[bytes]:
    """Pop every complete length-prefixed payload off the front of `buffer`."""
    out: list[bytes] = []
    while len(buffer) >= 4:
        (size,) = _LEN.unpack_from(buffer)
        if size > MAX_REQUEST_BYTES * 4:
            raise ValueError(f"pipe frame of {size} bytes exceeds the limit")
        if len(buffer) < 4 + size:
            break
        out.append(bytes(buffer[4:4 + size]))
        del buffer[:4 + size]
    return out
