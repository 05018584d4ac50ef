"""The daemon's request whitelist: every op a client may send, its arguments and how it runs.

An op is either a `KernelManager` method of the same name (kind "sync", "async" or "stream")
or one the daemon answers itself (kind "local": subscribe, unsubscribe, get_kernel, status,
ping). Arguments are keyword arguments named as in the manager's signatures; `check_args`
rejects unknown names (naming them), missing required ones and values of the wrong type, so
nothing arbitrary is ever passed through. docs/protocol.md documents the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kerneld.errors import InvalidArgument

_NONE = type(None)
STR = (str,)
OPT_STR = (str, _NONE)
BOOL = (bool,)
OPT_INT = (int, _NONE)
INT = (int,)
OPT_NUM = (int, float, _NONE)
OPT_DICT = (dict, _NONE)

KID = {"kernel_id": STR}
EXEC = {"kernel_id": STR, "code": STR, "allow_stdin": BOOL, "silent": BOOL,
        "store_history": BOOL}


@dataclass(frozen=True)
class Op:
    kind: str                                   # sync | async | stream | local
    args: Mapping[str, tuple[type, ...]]        # name → accepted types
    required: frozenset[str] = frozenset()


def _op(kind: str, args: Mapping[str, tuple[type, ...]], *required: str) -> Op:
    return Op(kind, dict(args), frozenset(required))


OPS: dict[str, Op] = {
    "create_kernel": _op("async", {
        "id": OPT_STR, "namespace": OPT_STR, "mode": OPT_STR, "profile": OPT_STR,
        "env": OPT_DICT, "filesystem": OPT_DICT, "permissions": OPT_DICT, "limits": OPT_DICT,
        "inactivity_timeout": OPT_NUM, "max_execution_time": OPT_NUM}),
    "destroy_kernel": _op("async", KID, "kernel_id"),
    "destroy_all": _op("async", {"namespace": OPT_STR}),
    "list_kernels": _op("sync", {"namespace": OPT_STR}),
    "get_kernel_ids": _op("sync", {}),
    "get_kernel": _op("local", KID, "kernel_id"),
    "execute": _op("async", EXEC, "kernel_id", "code"),
    "execute_stream": _op("stream", EXEC, "kernel_id", "code"),
    "input_reply": _op("sync", {"kernel_id": STR, "value": STR}, "kernel_id", "value"),
    "interrupt_kernel": _op("sync", KID, "kernel_id"),
    "restart_kernel": _op("async", KID, "kernel_id"),
    "ping_kernel": _op("sync", KID, "kernel_id"),
    "set_inactivity_timeout": _op("sync", {"kernel_id": STR, "timeout": OPT_NUM},
                                  "kernel_id", "timeout"),
    "get_inactivity_timeout": _op("sync", KID, "kernel_id"),
    "get_time_until_shutdown": _op("sync", KID, "kernel_id"),
    "get_execution_info": _op("sync", KID, "kernel_id"),
    "get_ongoing_execution_count": _op("sync", KID, "kernel_id"),
    "get_stuck_executions": _op("sync", KID, "kernel_id"),
    "force_terminate_kernel": _op("async", {"kernel_id": STR, "reason": OPT_STR}, "kernel_id"),
    "complete": _op("async", {"kernel_id": STR, "code": STR, "cursor_pos": OPT_INT},
                    "kernel_id", "code"),
    "inspect": _op("async", {"kernel_id": STR, "code": STR, "cursor_pos": OPT_INT,
                             "detail_level": INT}, "kernel_id", "code"),
    "is_complete": _op("async", {"kernel_id": STR, "code": STR}, "kernel_id", "code"),
    "get_pool_stats": _op("sync", {}),
    "check_profile": _op("sync", {"profile": OPT_STR}),
    "subscribe": _op("local", {"kernel_id": STR, "event_type": STR}, "kernel_id", "event_type"),
    "unsubscribe": _op("local", {"subscription": STR}, "subscription"),
    "status": _op("local", {}),
    "ping": _op("local", {}),
}


def check_args(name: str, op: Op, args: dict[str, Any]) -> None:
    """Raise InvalidArgument unless `args` fits `op` exactly (names, presence, types)."""
    accepted = op.args
    for key, value in args.items():
        types = accepted.get(key)
        if types is None:
            unknown = sorted(k for k in args if k not in accepted)
            shown = ", ".join(k if len(k) <= 64 else f"{k[:64]}…" for k in unknown[:10])
            if len(unknown) > 10:
                shown += f", … ({len(unknown)} in all)"
            raise InvalidArgument(
                f"{name}: unknown argument{'s' if len(unknown) > 1 else ''} "
                f"{shown} (accepted: {', '.join(accepted) or 'none'})")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is _NONE else t.__name__ for t in types)
            raise InvalidArgument(f"{name}: argument {key} must be {names}, "
                                  f"not {type(value).__name__}")
    if op.required and not op.required <= args.keys():
        missing = sorted(op.required - args.keys())
        raise InvalidArgument(f"{name}: missing required argument{'s' if len(missing) > 1 else ''}"
                              f" {', '.join(missing)}")
