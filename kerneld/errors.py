"""The one error tree of kerneld, shared by the embedded manager, the daemon and the clients.

    KernelError                      base: everything kerneld raises on purpose
    ├── KernelNotFound               no kernel with that id
    ├── InvalidArgument              a bad id, option, profile value or request
    │   └── ProfileError             a profile file or key is wrong (message cites file:table.key)
    ├── PermissionDenied             a request tries to widen its profile, or a refused mode
    ├── LimitExceeded                a size or count limit (code size, message size, kernels)
    ├── SandboxUnavailable           the host cannot enforce what the profile needs (fail closed)
    ├── KernelStartError             the worker could not boot (its own message says why)
    ├── DaemonUnavailable            a client cannot reach the daemon, or it went away
    └── InternalError                a bug: reported, never silently swallowed

Every error crosses the wire as `{"type": <class name>, "message": str}` and is rebuilt on the
other side as the same class, so a `Client` raises exactly what `KernelManager` raises.
Execution failures (a Python exception in user code, a kernel that died) are *not* exceptions:
they are `execute_error` events and an `ExecutionResult` with status "error".
"""

from __future__ import annotations

from typing import Any


class KernelError(Exception):
    """Base of every deliberate kerneld error."""

    def to_wire(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self)}


class KernelNotFound(KernelError):
    pass


class InvalidArgument(KernelError):
    pass


class ProfileError(InvalidArgument):
    pass


class PermissionDenied(KernelError):
    pass


class LimitExceeded(KernelError):
    pass


class SandboxUnavailable(KernelError):
    pass


class KernelStartError(KernelError):
    pass


class DaemonUnavailable(KernelError):
    pass


class InternalError(KernelError):
    pass


def shown(value: object, limit: int = 64) -> str:
    """`repr(value)` for an error message, cut to about `limit` characters (a client's bad
    value goes back to it, and into logs: never a megabyte of it)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else f"{text[:limit]}…"


def kernel_not_found(kernel_id: object) -> KernelNotFound:
    """The one "not found" for a kernel id: the same words whether the kernel does not exist
    or belongs to another caller (different words would tell that it exists)."""
    return KernelNotFound(f"kernel {shown(kernel_id)} not found")


_BY_NAME: dict[str, type[KernelError]] = {
    cls.__name__: cls
    for cls in (
        KernelError, KernelNotFound, InvalidArgument, ProfileError, PermissionDenied,
        LimitExceeded, SandboxUnavailable, KernelStartError, DaemonUnavailable, InternalError,
    )
}


def from_wire(payload: object) -> KernelError:
    """Rebuild an error sent by `KernelError.to_wire`; anything malformed is an InternalError."""
    if isinstance(payload, dict):
        cls = _BY_NAME.get(str(payload.get("type")), InternalError)
        return cls(str(payload.get("message", "")))
    return InternalError(f"malformed error payload: {payload!r:.200}")
