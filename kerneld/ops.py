"""The op table: every request a front may hand to the service, one frozen Struct each.

Each op is a `msgspec.Struct` (frozen, `forbid_unknown_fields`) whose fields are the op's
keyword arguments, named and defaulted exactly as in the `KernelManager` method it calls
(tests/unit/test_ops.py holds them against `inspect.signature` of the manager and of both
clients, and against docs/protocol.md's table). `OPS` maps the wire name to an `Op`: the
Struct, how it runs (`kind`) and the method it calls.

Kinds:
- "call": a manager method; its value is the reply (a coroutine's once it resolves);
- "stream": a manager method returning an `ExecutionStream`: events, then the result
  (`execute_stream`, `send_comm`);
- "local": answered by the service itself (subscriptions, `status`, `ping`, `get_kernel`).

`CreateKernel` is also the kernel's `KernelSpec`: the manager stores it with the kernel,
restart starts the same spec again, the pool compares what it lowers to.

Decoding (`lookup`, then `decode`) checks a request's arguments against the Struct's fields before anything
runs — unknown names (named in the error), missing required ones, values of the wrong type —
so nothing arbitrary reaches the manager, and each front gets the same `InvalidArgument`
messages whatever its framing. Values are checked by type only here; their meaning (ids,
seconds, env names, profiles) is checked once, where it is used (manager, permissions).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from kerneld.errors import InvalidArgument

Kind = Literal["call", "stream", "local"]


class _Args(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every op's arguments."""


class CreateKernel(_Args, frozen=True):
    id: str | None = None
    namespace: str | None = None
    mode: str = "worker"
    profile: str | None = None
    env: dict[str, Any] | None = None
    filesystem: dict[str, Any] | None = None
    permissions: dict[str, Any] | None = None
    limits: dict[str, Any] | None = None
    inactivity_timeout: int | float | None = None
    max_execution_time: int | float | None = None


KernelSpec = CreateKernel
"""A kernel's creation options, as stored with it (restart reuses them)."""


class _Kernel(_Args, frozen=True):
    kernel_id: str


class _Namespace(_Args, frozen=True):
    namespace: str | None = None


class _NoArgs(_Args, frozen=True):
    pass


class DestroyKernel(_Kernel, frozen=True):
    """Kill a kernel's whole process tree and forget it."""


class DestroyAll(_Namespace, frozen=True):
    """Destroy every kernel (of one namespace); the number destroyed."""


class ListKernels(_Namespace, frozen=True):
    """Every kernel (of one namespace), described."""


class GetKernelIds(_NoArgs, frozen=True):
    """The ids of every kernel."""


class GetKernel(_Kernel, frozen=True):
    """One kernel, described as `list_kernels` does."""


class Execute(_Args, frozen=True):
    kernel_id: str
    code: str
    allow_stdin: bool = False
    silent: bool = False
    store_history: bool = True
    user_expressions: dict[str, Any] | None = None


class ExecuteStream(Execute, frozen=True):
    """As `execute`, streaming the execution's events before its result."""


class InputReply(_Args, frozen=True):
    kernel_id: str
    value: str


class InterruptKernel(_Kernel, frozen=True):
    """Interrupt the running execution (SIGINT); false for an unknown kernel."""


class RestartKernel(_Kernel, frozen=True):
    """A fresh process for the kernel, same id and spec; state is lost."""


class PingKernel(_Kernel, frozen=True):
    """Count as activity for the inactivity timeout."""


class SetInactivityTimeout(_Args, frozen=True):
    kernel_id: str
    timeout: int | float | None


class GetInactivityTimeout(_Kernel, frozen=True):
    """The kernel's inactivity timeout in seconds, or null."""


class GetTimeUntilShutdown(_Kernel, frozen=True):
    """Seconds until the inactivity timeout fires, or null."""


class GetExecutionInfo(_Kernel, frozen=True):
    """The executions running or queued, and whether any is stuck."""


class GetOngoingExecutionCount(_Kernel, frozen=True):
    """How many executions are running or queued."""


class GetStuckExecutions(_Kernel, frozen=True):
    """The executions past `max_execution_time`."""


class ForceTerminateKernel(_Args, frozen=True):
    kernel_id: str
    reason: str | None = None


class Complete(_Args, frozen=True):
    kernel_id: str
    code: str
    cursor_pos: int | None = None


class Inspect(_Args, frozen=True):
    kernel_id: str
    code: str
    cursor_pos: int | None = None
    detail_level: int = 0


class IsComplete(_Args, frozen=True):
    kernel_id: str
    code: str


class History(_Args, frozen=True):
    """Jupyter's history_request: the kernel's input (and output) history."""

    kernel_id: str
    hist_access_type: str = "tail"
    output: bool = False
    raw: bool = True
    session: int = 0
    start: int = 0
    stop: int | None = None
    n: int | None = None
    pattern: str | None = None
    unique: bool = False


class CommInfo(_Args, frozen=True):
    kernel_id: str
    target_name: str | None = None


class SendComm(_Args, frozen=True):
    """A front end's comm_open / comm_msg / comm_close, run like an execution (a stream)."""

    kernel_id: str
    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] | None = None
    buffers: list[Any] | None = None


class GetPoolStats(_NoArgs, frozen=True):
    """The warm pool's counters per profile."""


class CheckProfile(_Args, frozen=True):
    profile: str | None = None


class Subscribe(_Args, frozen=True):
    kernel_id: str
    event_type: str


class Unsubscribe(_Args, frozen=True):
    subscription: str


class Status(_NoArgs, frozen=True):
    """The daemon's health (answered by the service)."""


class Ping(_NoArgs, frozen=True):
    """Liveness and protocol version (answered by the service)."""


@dataclass(frozen=True)
class Op:
    """One op: its arguments' Struct, how it runs, and (derived) its argument table."""

    name: str
    args_type: type[_Args]
    kind: Kind
    args: dict[str, tuple[type, ...]]   # name → accepted types (bool is never an int here)
    required: frozenset[str]

    @property
    def method(self) -> str:
        """The `KernelManager` method a "call" or "stream" op calls (the op's name)."""
        return self.name


def _accepted(annotation: Any) -> tuple[type, ...]:
    """The runtime types a field's annotation accepts (`int | float | None` → int, float,
    NoneType; `dict[str, Any]` → dict)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(t for arg in typing.get_args(annotation) for t in _accepted(arg))
    return (typing.get_origin(annotation) or annotation,)


def _op(name: str, args_type: type[_Args], kind: Kind = "call") -> Op:
    fields = msgspec.structs.fields(args_type)
    hints = typing.get_type_hints(args_type)
    return Op(name, args_type, kind, {f.name: _accepted(hints[f.name]) for f in fields},
              frozenset(f.name for f in fields if f.required))


OPS: dict[str, Op] = {op.name: op for op in (
    _op("create_kernel", CreateKernel),
    _op("destroy_kernel", DestroyKernel),
    _op("destroy_all", DestroyAll),
    _op("list_kernels", ListKernels),
    _op("get_kernel_ids", GetKernelIds),
    _op("get_kernel", GetKernel, "local"),
    _op("execute", Execute),
    _op("execute_stream", ExecuteStream, "stream"),
    _op("input_reply", InputReply),
    _op("interrupt_kernel", InterruptKernel),
    _op("restart_kernel", RestartKernel),
    _op("ping_kernel", PingKernel),
    _op("set_inactivity_timeout", SetInactivityTimeout),
    _op("get_inactivity_timeout", GetInactivityTimeout),
    _op("get_time_until_shutdown", GetTimeUntilShutdown),
    _op("get_execution_info", GetExecutionInfo),
    _op("get_ongoing_execution_count", GetOngoingExecutionCount),
    _op("get_stuck_executions", GetStuckExecutions),
    _op("force_terminate_kernel", ForceTerminateKernel),
    _op("complete", Complete),
    _op("inspect", Inspect),
    _op("is_complete", IsComplete),
    _op("history", History),
    _op("comm_info", CommInfo),
    _op("send_comm", SendComm, "stream"),
    _op("get_pool_stats", GetPoolStats),
    _op("check_profile", CheckProfile),
    _op("subscribe", Subscribe, "local"),
    _op("unsubscribe", Unsubscribe, "local"),
    _op("status", Status, "local"),
    _op("ping", Ping, "local"),
)}


def check_args(op: Op, args: dict[str, Any]) -> None:
    """Raise InvalidArgument unless `args` fits `op` exactly (names, presence, types)."""
    accepted = op.args
    for key, value in args.items():
        kinds = accepted.get(key)
        if kinds is None:
            unknown = sorted(str(k) for k in args if k not in accepted)
            shown = ", ".join(k if len(k) <= 64 else f"{k[:64]}…" for k in unknown[:10])
            if len(unknown) > 10:
                shown += f", … ({len(unknown)} in all)"
            raise InvalidArgument(
                f"{op.name}: unknown argument{'s' if len(unknown) > 1 else ''} "
                f"{shown} (accepted: {', '.join(accepted) or 'none'})")
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join("null" if t is types.NoneType else t.__name__ for t in kinds)
            raise InvalidArgument(f"{op.name}: argument {key} must be {names}, "
                                  f"not {type(value).__name__}")
    if op.required and not op.required <= args.keys():
        missing = sorted(op.required - args.keys())
        raise InvalidArgument(f"{op.name}: missing required argument"
                              f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def lookup(name: str) -> Op:
    """The op named `name`; InvalidArgument naming it if there is none."""
    op = OPS.get(name) if isinstance(name, str) else None
    if op is None:
        raise InvalidArgument(f"unknown op {str(name)[:64]!r}")
    return op


def decode(op: Op, args: dict[str, Any]) -> _Args:
    """`args` as `op`'s Struct; InvalidArgument (see `check_args`) if they do not fit."""
    check_args(op, args)
    return op.args_type(**args)


def as_kwargs(args: _Args) -> dict[str, Any]:
    """A Struct's fields as the keyword arguments of the method its op calls."""
    return msgspec.structs.asdict(args)
