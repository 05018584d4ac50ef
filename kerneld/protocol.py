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

    manager → worker  [ Execute | InputReply | Complete | Inspect | IsComplete | Shutdown
                        | Activate (first, right after Hello) ]
    worker → manager  [ Hello ] once, then
                      [ Output{exec_id, type, data} ]*  events of the running execution, in order
                      [ Done{exec_id, status, ...} ]    end of that execution
                      [ Answer{req_id, content} ]       reply to Complete/Inspect/IsComplete

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

# Jupyter vocabulary for execution events (the seed surfaces `error` as `execute_error`).
EVENT_TYPES = frozenset({
    "stream", "display_data", "update_display_data", "execute_result", "execute_error",
    "clear_output", "input_request", "execution_stalled",
})
KERNEL_EVENT_TYPES = frozenset({"kernel_died", "kernel_restarted", "kernel_terminated"})


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


class Shutdown(msgspec.Struct, frozen=True, tag="shutdown", tag_field="t"):
    pass


class Activate(msgspec.Struct, frozen=True, tag="activate", tag_field="t"):
    """The worker's environment becomes exactly `env`; sent right after Hello (and again when
    a pooled worker starts serving a kernel). Environments travel only this way, never through
    the zygote, whose memory every later worker inherits."""

    env: dict[str, str]


ToWorker = Execute | InputReply | Complete | Inspect | IsComplete | Shutdown | Activate

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
