"""Hypothesis strategies for kerneld's wire, built from the whitelist (`kerneld.ops.OPS`).

- `requests()`: `Request`s for every op, each argument drawn from its valid domain (ids of the
  fuzz daemon's live kernels, code snippets, plausible profile options) or from `anything`
  (wrong types, ±2**63 / 2**64-1, NaN / ±inf, huge, unicode and newline-bearing strings, nested
  maps with non-string keys, bytes, msgpack extension types); optional and required arguments
  sometimes left out, unknown names sometimes added; the op itself and `v` sometimes wrong.
- `raw_cases()`: frames that are not (quite) requests: random bytes, truncated or padded
  requests, deep nesting, wrong versions and tags, non-map top levels, duplicate keys, invalid
  UTF-8, oversized frames, several frames in one message.
- `worker_messages()`: what a worker could send to the manager's hub (`p.FromWorker`), fields
  drawn from their valid domains (the running execution's id, pending question ids, another
  kernel's execution id) or from `anything`, plus raw junk.

Request ids are not drawn here: the test assigns unique ones (the protocol requires ids unique
among a client's requests in flight), except where a drawn id is the point (`Req.rid`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import strategies as st

from kerneld import KernelEvents
from kerneld import protocol as p
from kerneld.ops import OPS

# Kernels the fuzz daemon keeps alive between examples (recreated when a request removed one).
TARGETS = ("fz-a", "fz-b", "fzns:fz-c")
NAMESPACES = ("fzns", "fzx")
PROFILES = ("default", "data-science", "networked", "trusted")
MOUNT_ROOT = os.path.join(tempfile.gettempdir(), f"kerneld-fuzz-mnt-{os.getpid()}")
SUBSCRIPTION_REF = "\x00previous-subscribe"  # replaced by the id of the example's last subscribe
# what a listener may subscribe to: the public vocabulary, "*" last
EVENT_NAMES = (*sorted(e.value for e in KernelEvents if e is not KernelEvents.ALL), "*")

SNIPPETS = (
    "1+1", "print('fuzz')", "x = 41\nx + 1", "import sys; sys.stderr.write('err\\n')",
    "raise ValueError('boom')", "1/0", "def f(:", "for i in range(3): print(i)",
    "from IPython.display import display; display({'a': 1}, raw=True)",
    "print('\\n'.join(map(str, range(200))))", "'é' * 3 + '\\U0001F600'",
    "import time; time.sleep(0.05)", "input('? ')", "%time 1", "!true", "None",
    "print('x' * 100_000)", "import os; os.getpid()", "get_ipython().kernel", "_", "",
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A choice among strategies with integer weights (shrinking towards the first)."""
    strategies = [s for _, s in choices]
    slots = [i for i, (weight, _) in enumerate(choices) for _ in range(weight)]
    return st.sampled_from(slots).flatmap(strategies.__getitem__)


# ------------------------------------------------------------------------------- values

BIG_INTS = st.sampled_from([2**63 - 1, -2**63, 2**64 - 1, 2**63, 2**32, -2**31 - 1, 2**53 + 1])
INTS = weighted((3, st.integers(-10, 300)), (2, st.integers(-2**63, 2**64 - 1)), (2, BIG_INTS))
FLOATS = weighted((3, st.floats()), (2, st.sampled_from(
    [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, 5e-324, -1.0, 1e-9, 2.0**64])))
WEIRD_TEXT = st.sampled_from([
    "", " ", "\n", "x\n", "\nx", "\r\n", "\t", "\x00", "a\x00b", "..", "/", "../../etc/passwd",
    "é", "\u202e", "\ufeff", "\U0001F600", "名前", "%s%n", "{0}", "*", "$HOME", "\\",
])
TEXT = weighted((4, st.text(max_size=12)), (2, WEIRD_TEXT),
                (1, st.text(alphabet=st.characters(codec="utf-8"), max_size=40)))


def _repeat(unit: str, n: int) -> str:
    return (unit or "x") * max(1, n // max(1, len((unit or "x").encode())))


# ~ n bytes once UTF-8 encoded: around the id limit (128), NAME_MAX (255), a page, 64 KiB
# (zero-copy sends), the code limit (1 MiB) and the request limit (4 MiB).
HUGE_TEXT = st.builds(_repeat, st.sampled_from(["x", "é", "\n", "ab\n", "\U0001F600", "名"]),
                      st.sampled_from([129, 256, 4097, 70_000, 1_048_577, 4_200_000]))
HUGE_BYTES = st.builds(lambda n: b"\xff" * n, st.sampled_from([256, 70_000, 1_100_000]))
EXTS = st.one_of(st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=8)),
                 st.datetimes(timezones=st.just(__import__("datetime").UTC)))
KEYS = weighted((5, st.text(max_size=8)), (1, st.integers(-2**63, 2**64 - 1)), (1, WEIRD_TEXT))
SCALARS = weighted((1, st.none()), (1, st.booleans()), (3, INTS), (2, FLOATS), (3, TEXT),
                   (1, st.binary(max_size=16)), (1, EXTS))


def anything(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any msgpack value: scalars, lists and maps nested a few levels; rarely a huge one."""
    nested = st.recursive(
        SCALARS, lambda inner: st.lists(inner, max_size=4)
        | st.dictionaries(KEYS, inner, max_size=4), max_leaves=max_leaves)
    return weighted((12, nested), (1, HUGE_TEXT), (1, HUGE_BYTES))


ANY = anything()

# ------------------------------------------------------------------------------- valid domains


def _text_or(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return weighted(*choices, (2, TEXT), (1, HUGE_TEXT))


KERNEL_ID = _text_or((8, st.sampled_from(TARGETS)))
VALID_ID = st.from_regex(r"\A[A-Za-z0-9._-]{1,24}\Z")
SECONDS_OK = weighted((2, st.none()), (1, st.just(0)), (2, st.floats(3600, 1e9)),
                      (1, st.integers(3600, 2**40)))
SECONDS = weighted((4, SECONDS_OK), (1, st.floats(0.05, 2.0)), (1, FLOATS), (1, INTS))
PATHS = st.sampled_from(["/tmp", "/etc", "/etc/passwd", "~/x", "relative", "/", "", MOUNT_ROOT])
GRANT = weighted((2, st.booleans()), (3, st.lists(st.one_of(PATHS, st.sampled_from(
    ["example.com:443", "10.0.0.0/8", "*.example.org", "HOME", "PATH*", "echo", "/usr/bin/sh",
     "hostname", "cpus", "loadavg"]), TEXT), max_size=3)), (1, ANY))
PERMISSIONS = weighted((1, st.just({})), (4, st.fixed_dictionaries({}, optional={
    k: GRANT for k in ("read", "write", "net", "env", "run", "sys", "deny_read", "deny_write",
                       "deny_net", "deny_env", "deny_run", "ffi")})),
    (1, st.dictionaries(TEXT, ANY, max_size=3)))
SIZES = st.one_of(st.sampled_from(["64MiB", "1GiB", "16MiB", "1B", "0", "lots", "1e3", "-5MiB",
                                   False, True]), INTS, FLOATS)
LIMITS = weighted((1, st.just({})), (4, st.fixed_dictionaries({}, optional={
    k: SIZES for k in ("memory", "cpu_seconds", "wall_seconds", "processes", "open_files",
                       "file_size", "disk", "output", "cpus")})),
    (1, st.dictionaries(TEXT, ANY, max_size=3)))
FILESYSTEM = weighted((1, st.just({})), (4, st.fixed_dictionaries(
    {"enabled": st.booleans(), "root": weighted((3, st.just(MOUNT_ROOT)), (1, PATHS),
                                                (1, TEXT))},
    optional={"mount_point": weighted((3, st.sampled_from(["/data", "/home/kernel"])),
                                      (1, st.sampled_from(["/", "/proc", "/tmp/x", "data",
                                                           "/data/", "/a/../b"])), (1, TEXT)),
              "read_only": weighted((3, st.booleans()), (1, ANY))})),
    (1, st.dictionaries(TEXT, ANY, max_size=3)))
ENV = weighted((3, st.dictionaries(st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,10}\Z"), TEXT,
                                   max_size=3)),
               (1, st.dictionaries(KEYS, ANY, max_size=3)))

VALID: dict[str, st.SearchStrategy[Any]] = {
    "kernel_id": KERNEL_ID,
    "code": weighted((8, st.sampled_from(SNIPPETS)), (3, TEXT), (1, HUGE_TEXT)),
    "allow_stdin": st.booleans(), "silent": st.booleans(), "store_history": st.booleans(),
    "cursor_pos": weighted((4, st.none()), (4, st.integers(0, 12)), (1, INTS)),
    "detail_level": weighted((4, st.integers(0, 1)), (1, INTS)),
    "value": TEXT, "reason": weighted((2, st.none()), (2, TEXT), (1, HUGE_TEXT)),
    "timeout": SECONDS,
    "event_type": _text_or((8, st.sampled_from(EVENT_NAMES))),
    "subscription": _text_or((6, st.just(SUBSCRIPTION_REF))),
    "namespace": _text_or((2, st.none()), (4, st.sampled_from(NAMESPACES))),
    "id": _text_or((3, st.none()), (5, VALID_ID), (1, st.sampled_from(TARGETS))),
    "mode": _text_or((3, st.none()), (3, st.sampled_from(["worker", "in_process"]))),
    "profile": _text_or((3, st.none()), (5, st.sampled_from(PROFILES)),
                        (1, st.sampled_from(["/etc/passwd", "default.toml", "../default"]))),
    "env": weighted((2, st.none()), (3, ENV)),
    "filesystem": weighted((4, st.none()), (3, FILESYSTEM)),
    "permissions": weighted((4, st.none()), (3, PERMISSIONS)),
    "limits": weighted((4, st.none()), (3, LIMITS)),
    "inactivity_timeout": SECONDS, "max_execution_time": SECONDS,
    # Jupyter's extras (issue 13): user_expressions, history, comms
    "user_expressions": weighted((4, st.none()), (3, st.dictionaries(
        KEYS, st.sampled_from(["1+1", "x", "1/0", "import os", "", "'a' * 10"]), max_size=3)),
        (1, st.dictionaries(KEYS, ANY, max_size=3))),
    "hist_access_type": _text_or((6, st.sampled_from(["tail", "range", "search"]))),
    "output": st.booleans(), "raw": st.booleans(), "unique": st.booleans(),
    "session": weighted((4, st.integers(-2, 2)), (1, INTS)),
    "start": weighted((4, st.integers(0, 5)), (1, INTS)),
    "stop": weighted((2, st.none()), (3, st.integers(0, 10)), (1, INTS)),
    "n": weighted((2, st.none()), (3, st.integers(0, 10)), (1, INTS)),
    "pattern": weighted((2, st.none()), (3, st.sampled_from(["*", "x*", "?", "[a-", "*1+1*"])),
                        (1, TEXT)),
    "target_name": weighted((3, st.none()), (2, st.sampled_from(["jupyter.widget", "echo"])),
                            (1, TEXT)),
    "msg_type": _text_or((6, st.sampled_from(["comm_open", "comm_msg", "comm_close"]))),
    "content": weighted((4, st.fixed_dictionaries(
        {"comm_id": _text_or((4, st.sampled_from(["c1", "c2"])))},
        optional={"target_name": st.sampled_from(["jupyter.widget", "echo", "nope"]),
                  "data": st.dictionaries(KEYS, ANY, max_size=3)})),
        (1, st.dictionaries(KEYS, ANY, max_size=3))),
    "metadata": weighted((3, st.none()), (1, st.dictionaries(KEYS, ANY, max_size=2))),
    "buffers": weighted((3, st.none()), (2, st.lists(st.binary(max_size=64), max_size=3)),
                        (1, st.lists(ANY, max_size=2))),
}
assert {a for op in OPS.values() for a in op.args} <= VALID.keys(), "an argument has no domain"

ALL_ARG_NAMES = sorted({a for op in OPS.values() for a in op.args})
UNKNOWN_NAME = weighted((3, TEXT), (2, st.sampled_from(ALL_ARG_NAMES)), (1, st.sampled_from(
    ["kernel_id ", "Kernel_id", "kernelId", "__class__", "self", "kwargs", "args", "op"])))
OP_NAMES = sorted(OPS)
# executions and creations twice as often as the rest: they are what the daemon is for
OP = weighted((40, st.sampled_from([*OP_NAMES, "execute", "execute_stream", "create_kernel"])),
              (1, TEXT),
              (1, st.sampled_from(
    ["__init__", "_op_ping", "_get", "close", "submit", "hub", "execute ", "PING", "ping\n",
     "start", "pool", "dispatch", "_kernels", "reconfigure", "handle_shutdown", "shutdown"])))


@dataclass
class Req:
    """One request to send: `rid` None means "assign a fresh id"."""

    op: str
    args: dict[str, Any]
    v: int = p.VERSION
    rid: str | None = None

    def summary(self) -> str:
        def short(value: Any) -> str:
            text = repr(value)
            return text if len(text) <= 60 else f"{text[:40]}…<{len(text)} chars>"
        args = ", ".join(f"{k}={short(v)}" for k, v in self.args.items())
        extra = "" if self.v == p.VERSION else f" v={short(self.v)}"
        return f"{self.op}({args}){extra}"


# create_kernel arguments that may well create a kernel: a few keys, each plausible
PLAUSIBLE_CREATE = st.fixed_dictionaries({}, optional={
    "id": VALID_ID, "namespace": st.sampled_from(NAMESPACES), "profile": st.sampled_from(PROFILES),
    "env": st.dictionaries(st.from_regex(r"\A[A-Z][A-Z0-9_]{0,8}\Z"), st.text(max_size=8),
                           max_size=2),
    "limits": st.fixed_dictionaries({}, optional={
        "memory": st.sampled_from(["64MiB", "128MiB", "16MiB"]),
        "processes": st.sampled_from([8, 16, 64]), "output": st.sampled_from(["1KiB", "1MiB", 4096]),
        "cpus": st.sampled_from([0.5, 1])}),
    "filesystem": st.fixed_dictionaries({"enabled": st.just(True), "root": st.just(MOUNT_ROOT)},
                                        optional={"read_only": st.booleans()}),
    "permissions": st.sampled_from([{}, {"net": []}, {"read": []}, {"ffi": False}]),
    "inactivity_timeout": st.sampled_from([0, 0.3, 3600.0]),
    "max_execution_time": st.sampled_from([0, 0.05, 60]),
})


@st.composite
def args_for(draw: st.DrawFn, op: str) -> dict[str, Any]:
    spec = OPS.get(op)
    args: dict[str, Any] = {}
    if op == "create_kernel" and draw(st.booleans()):
        return dict(draw(PLAUSIBLE_CREATE))
    for name in (spec.args if spec else ()):
        required = spec is not None and name in spec.required
        how = draw(weighted((12, st.just("valid")), (2, st.just("any")),
                            (1 if required else 4, st.just("omit"))))
        if how == "valid":
            args[name] = draw(VALID[name])
        elif how == "any":
            args[name] = draw(ANY)
    if spec is None or draw(st.sampled_from(range(10))) == 0:
        for name in draw(st.lists(UNKNOWN_NAME, min_size=1, max_size=2)):
            if name not in args and isinstance(name, str):
                args[name] = draw(weighted((2, VALID.get(name, ANY)), (1, ANY)))
    return args


@st.composite
def request(draw: st.DrawFn) -> Req:
    op = draw(OP)
    args = draw(args_for(op))
    v = draw(weighted((30, st.just(p.VERSION)), (1, INTS)))
    rid = draw(weighted((30, st.none()), (2, TEXT), (1, HUGE_TEXT)))
    return Req(op, args, v, rid)


def requests(max_size: int = 6) -> st.SearchStrategy[list[Req]]:
    return st.lists(request(), min_size=1, max_size=max_size)


# ------------------------------------------------------------------------------- raw frames

def mp_str(text: str | bytes) -> bytes:
    """A msgpack str header + body (bytes are sent as they are: invalid UTF-8 on purpose)."""
    data = text.encode() if isinstance(text, str) else text
    n = len(data)
    if n < 32:
        return bytes([0xA0 | n]) + data
    if n < 256:
        return b"\xd9" + bytes([n]) + data
    if n < 65536:
        return b"\xda" + n.to_bytes(2, "big") + data
    return b"\xdb" + n.to_bytes(4, "big") + data


def mp_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A msgpack map from already-encoded keys and values (duplicates allowed)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    return head + b"".join(k + v for k, v in pairs)


def nest(depth: int, kind: str) -> bytes:
    """`depth` levels of one-element arrays or one-key maps around nil."""
    unit = b"\x91" if kind == "array" else b"\x81\xa1a"
    return unit * depth + b"\xc0"


@dataclass
class RawCase:
    """Frames built by `build(ids)` from fresh request ids; `depth` is the deepest nesting."""

    label: str
    build: Callable[[Iterator[str]], list[bytes]]
    depth: int = 0
    frames: list[bytes] = field(default_factory=list)

    def summary(self) -> str:
        sizes = "+".join(str(len(f)) for f in self.frames)
        return f"raw[{self.label}] {sizes} bytes" + (f" depth {self.depth}" if self.depth else "")


def _request_bytes(rid: str, op: str = "ping", args: Any = None, v: Any = 1) -> bytes:
    return msgspec.msgpack.encode({"t": "request", "v": v, "id": rid, "op": op,
                                   "args": {} if args is None else args})


@st.composite
def _one_frame(draw: st.DrawFn) -> RawCase:
    kind = draw(st.sampled_from([
        *["random", "truncated", "trailing", "deep", "version", "non_map", "map", "tag",
          "missing", "extra", "dup_keys", "bad_utf8", "args_type", "typed_id"] * 3,
        "empty", "big"]))
    if kind == "random":
        data = draw(st.binary(max_size=96))
        return RawCase(kind, lambda ids: [data])
    if kind in ("truncated", "trailing"):
        req = draw(request())
        cut = draw(st.floats(0, 1, exclude_max=True))  # a whole frame is a request
        tail = draw(st.binary(min_size=1, max_size=8))

        def build(ids: Iterator[str]) -> list[bytes]:
            try:
                whole = _request_bytes(next(ids), req.op, req.args, req.v)
            except (TypeError, ValueError, OverflowError):
                whole = _request_bytes(next(ids))
            return [whole[: int(len(whole) * cut)] if kind == "truncated" else whole + tail]
        return RawCase(kind, build)
    if kind == "deep":
        depth = draw(weighted((3, st.integers(1, 200)), (2, st.integers(200, 1200)),
                              (1, st.integers(1200, 20_000))))
        where = draw(st.sampled_from(["args", "id", "top", "op", "v"]))
        shape = draw(st.sampled_from(["array", "map"]))
        inner = nest(depth, shape)

        def build(ids: Iterator[str]) -> list[bytes]:
            rid = mp_str(next(ids))
            fields = {"t": mp_str("request"), "v": b"\x01", "id": rid, "op": mp_str("ping"),
                      "args": mp_map([(mp_str("a"), inner)])}
            if where == "top":
                return [inner]
            if where != "args":
                fields[where] = inner
            return [mp_map([(mp_str(k), val) for k, val in fields.items()])]
        return RawCase(f"deep-{where}-{shape}", build, depth)
    if kind == "version":
        v = draw(st.one_of(INTS, FLOATS, TEXT, st.none()))
        return RawCase(kind, lambda ids: [_request_bytes(next(ids), v=v)])
    if kind == "non_map":
        value = draw(st.one_of(SCALARS, st.lists(ANY, max_size=4)))
        return RawCase(kind, lambda ids: [msgspec.msgpack.encode(value)])
    if kind == "map":
        junk = draw(st.dictionaries(KEYS, ANY, max_size=5))
        with_id = draw(st.booleans())

        def build(ids: Iterator[str]) -> list[bytes]:
            return [msgspec.msgpack.encode({**junk, "id": next(ids)} if with_id else junk)]
        return RawCase(kind, build)
    if kind == "tag":
        tag = draw(st.one_of(st.sampled_from(["reply", "event", "hello", "done", "REQUEST", ""]),
                             INTS, st.none(), TEXT))
        return RawCase(kind, lambda ids: [msgspec.msgpack.encode(
            {"t": tag, "v": 1, "id": next(ids), "op": "ping", "args": {}})])
    if kind == "missing":
        drop = draw(st.sets(st.sampled_from(["t", "v", "op", "args"]), min_size=1))

        def build(ids: Iterator[str]) -> list[bytes]:
            full = {"t": "request", "v": 1, "id": next(ids), "op": "ping", "args": {}}
            return [msgspec.msgpack.encode({k: val for k, val in full.items() if k not in drop})]
        return RawCase(kind, build)
    if kind == "extra":
        extra = draw(st.dictionaries(TEXT, ANY, min_size=1, max_size=3))

        def build(ids: Iterator[str]) -> list[bytes]:
            full = {**extra, "t": "request", "v": 1, "id": next(ids), "op": "ping", "args": {}}
            return [msgspec.msgpack.encode(full)]
        return RawCase(kind, build)
    if kind == "dup_keys":
        order = draw(st.permutations(["id", "id", "t", "v", "op", "op"]))
        ops = iter(draw(st.lists(st.sampled_from(["ping", "status", "nope"]), min_size=2,
                                 max_size=2)))

        def build(ids: Iterator[str]) -> list[bytes]:
            values = {"t": [mp_str("request")], "v": [b"\x01"],
                      "id": [mp_str(next(ids)), mp_str(next(ids))],
                      "op": [mp_str(next(ops)), mp_str("ping")]}
            return [mp_map([(mp_str(k), values[k].pop()) for k in order])]
        return RawCase(kind, build)
    if kind == "bad_utf8":
        junk = draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"a\x80b"]))
        where = draw(st.sampled_from(["id", "op", "key"]))

        def build(ids: Iterator[str]) -> list[bytes]:
            pairs = [(mp_str("t"), mp_str("request")), (mp_str("v"), b"\x01"),
                     (mp_str("id"), mp_str(junk if where == "id" else next(ids))),
                     (mp_str("op"), mp_str(junk if where == "op" else "ping")),
                     (mp_str("args"), mp_map([(mp_str(junk), b"\x01")] if where == "key"
                                             else []))]
            return [mp_map(pairs)]
        return RawCase(f"bad_utf8-{where}", build)
    if kind == "args_type":
        args = draw(st.one_of(SCALARS, st.lists(ANY, max_size=3),
                              st.dictionaries(INTS, ANY, min_size=1, max_size=2)))
        return RawCase(kind, lambda ids: [_request_bytes(next(ids), "ping", args)])
    if kind == "empty":
        return RawCase(kind, lambda ids: [b""])
    if kind == "big":
        size = draw(st.sampled_from([p.MAX_REQUEST_BYTES - 64, p.MAX_REQUEST_BYTES + 1,
                                     2 * p.MAX_REQUEST_BYTES - 128, 2 * p.MAX_REQUEST_BYTES + 1,
                                     3 * p.MAX_REQUEST_BYTES]))
        op = draw(st.sampled_from(["ping", "execute"]))

        def build(ids: Iterator[str]) -> list[bytes]:
            rid = next(ids)
            frame = _request_bytes(rid, op, {"kernel_id": TARGETS[0], "code": "#"})
            pad = size - len(frame) - 8
            code = "#" + "x" * max(0, pad)
            return [_request_bytes(rid, op, {"kernel_id": TARGETS[0], "code": code})]
        return RawCase(f"big-{op}", build)
    # typed_id: an id that is not a string
    rid = draw(st.one_of(INTS, FLOATS, st.none(), st.binary(max_size=8), st.lists(TEXT,
                                                                                 max_size=2)))
    return RawCase(kind, lambda ids: [msgspec.msgpack.encode(
        {"t": "request", "v": 1, "id": rid, "op": "ping", "args": {}})])


@st.composite
def raw_cases(draw: st.DrawFn) -> RawCase:
    """One message: usually one frame, sometimes several (each a raw frame or a request)."""
    if draw(st.sampled_from([True] * 7 + [False])):
        return draw(_one_frame())
    parts = draw(st.lists(st.one_of(_one_frame(), st.builds(
        lambda op: RawCase("request", lambda ids: [_request_bytes(next(ids), op)]),
        st.sampled_from(["ping", "status", "get_kernel_ids"]))), min_size=2, max_size=4))
    parts = [part for part in parts if not part.label.startswith("big")] or parts[:1]

    def build(ids: Iterator[str]) -> list[bytes]:
        return [frame for part in parts for frame in part.build(ids)]
    label = "multi(" + ",".join(part.label for part in parts) + ")"
    return RawCase(label, build, max(part.depth for part in parts))


# ------------------------------------------------------------------------------- worker messages

@dataclass
class HubIds:
    """Ids the hub fuzzer can aim at: filled in by the test for each example."""

    current: str = ""          # the victim kernel's running execution
    queued: str = ""           # the victim's next execution (queued behind the current one)
    witness: str = ""          # the witness kernel's running execution (another kernel's)
    asks: tuple[str, ...] = ()  # the victim's pending complete/inspect questions


@dataclass
class WorkerMsg:
    """A message for the hub: `build(ids)` gives its frames (msgpack of a FromWorker, or junk)."""

    label: str
    build: Callable[[HubIds], list[bytes]]
    depth: int = 0

    def summary(self, ids: HubIds) -> str:
        depth = f" (nested {self.depth} deep)" if self.depth else ""
        return f"{self.label}{depth}: " + " | ".join(repr(f[:120]) for f in self.build(ids))


def _exec_id(draw: st.DrawFn) -> Callable[[HubIds], Any]:
    which = draw(weighted((6, st.just("current")), (2, st.just("witness")),
                          (1, st.just("queued")), (2, st.just("other"))))
    other = draw(weighted((2, TEXT), (1, ANY)))
    return lambda ids: other if which == "other" else getattr(ids, which)


def _field(draw: st.DrawFn, valid: st.SearchStrategy[Any]) -> Any:
    return draw(weighted((5, valid), (1, ANY)))


@st.composite
def worker_message(draw: st.DrawFn) -> WorkerMsg:
    kind = draw(st.sampled_from(["output", "output", "done", "done", "answer", "hello", "junk",
                                 "multi", "tag", "deep"]))
    if kind == "output":
        exec_id = _exec_id(draw)
        typ = _field(draw, st.sampled_from(EVENT_NAMES[:-1]))
        data = _field(draw, st.dictionaries(st.text(max_size=8), ANY, max_size=4) | st.just(
            {"name": "stdout", "text": "spoofed\n"}))
        return WorkerMsg(kind, lambda ids: [msgspec.msgpack.encode(
            {"t": "output", "exec_id": exec_id(ids), "type": typ, "data": data})])
    if kind == "done":
        exec_id = _exec_id(draw)
        fields = {"status": _field(draw, st.sampled_from(["ok", "error", "aborted", "weird"]))}
        for name, valid in (("execution_count", st.integers(0, 10) | st.none() | BIG_INTS),
                            ("result", st.none() | st.dictionaries(st.text(max_size=6), ANY,
                                                                   max_size=3)),
                            ("error", st.none() | st.just({"ename": "E", "evalue": "v",
                                                           "traceback": []}))):
            if draw(st.booleans()):
                fields[name] = _field(draw, valid)
        return WorkerMsg(kind, lambda ids: [msgspec.msgpack.encode(
            {"t": "done", "exec_id": exec_id(ids), **fields})])
    if kind == "answer":
        pick = draw(st.sampled_from(range(4)))
        other = draw(TEXT)
        content = _field(draw, st.dictionaries(st.text(max_size=8), ANY, max_size=4))

        def build(ids: HubIds) -> list[bytes]:
            req_id = ids.asks[pick % len(ids.asks)] if ids.asks and pick < 3 else other
            return [msgspec.msgpack.encode({"t": "answer", "req_id": req_id,
                                            "content": content})]
        return WorkerMsg(kind, build)
    if kind == "hello":
        fields = {"pid": _field(draw, st.integers(1, 2**22) | BIG_INTS)}
        if draw(st.booleans()):
            fields["version"] = _field(draw, st.integers(0, 3))
        return WorkerMsg(kind, lambda ids: [msgspec.msgpack.encode({"t": "hello", **fields})])
    if kind == "tag":
        tag = draw(st.one_of(st.sampled_from(["execute", "shutdown", "activate", "request",
                                              "forked", "exited", "boot_failed"]), TEXT, INTS))
        body = draw(st.dictionaries(st.text(max_size=8), ANY, max_size=4))
        return WorkerMsg(f"tag-{tag!r:.20}", lambda ids: [msgspec.msgpack.encode(
            {**body, "t": tag})])
    if kind == "deep":  # well-formed but for one field nested `depth` levels deep
        depth = draw(weighted((4, st.integers(1, 200)), (1, st.integers(200, 1200)),
                              (1, st.integers(1200, 20_000))))
        tag = draw(st.sampled_from(["output", "done", "answer"]))
        inner = nest(depth, draw(st.sampled_from(["array", "map"])))

        def build(ids: HubIds) -> list[bytes]:
            fields = {"output": [("exec_id", mp_str(ids.current)), ("type", mp_str("stream")),
                                 ("data", mp_map([(mp_str("a"), inner)]))],
                      "done": [("exec_id", mp_str(ids.current)), ("status", mp_str("ok")),
                               ("result", mp_map([(mp_str("a"), inner)]))],
                      "answer": [("req_id", mp_str(ids.asks[0] if ids.asks else "?")),
                                 ("content", mp_map([(mp_str("a"), inner)]))]}[tag]
            return [mp_map([(mp_str("t"), mp_str(tag))]
                           + [(mp_str(k), v) for k, v in fields])]
        return WorkerMsg(f"deep-{tag}", build, depth)
    if kind == "multi":
        parts = draw(st.lists(st.binary(max_size=32), min_size=2, max_size=4))
        return WorkerMsg(kind, lambda ids: parts)
    junk = draw(weighted((3, st.binary(max_size=64)), (1, st.just(b""))))
    return WorkerMsg(kind, lambda ids: [junk])


def worker_messages(max_size: int = 8) -> st.SearchStrategy[list[WorkerMsg]]:
    return st.lists(worker_message(), min_size=1, max_size=max_size)
