"""kerneld: stateful, Jupyter-like Python kernels for untrusted code, each confined by the OS.

Public surface only; everything else is internal. See README.md and docs/.

The names are loaded on first use (PEP 562 `__getattr__`): `import kerneld.errors`, a program
that only calls `kerneld.connect()`, and every `kerneld` command line would otherwise pay for
IPython, ZeroMQ, psutil and the sandbox (~110 ms) that only the embedded manager needs.
`tests/unit/test_import_weight.py` holds that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module defining it, imported when the name is first looked up
_HOMES = {
    "DaemonUnavailable": "kerneld.errors",
    "InternalError": "kerneld.errors",
    "InvalidArgument": "kerneld.errors",
    "KernelError": "kerneld.errors",
    "KernelNotFound": "kerneld.errors",
    "KernelStartError": "kerneld.errors",
    "LimitExceeded": "kerneld.errors",
    "PermissionDenied": "kerneld.errors",
    "ProfileError": "kerneld.errors",
    "SandboxUnavailable": "kerneld.errors",
    "ExecutionStream": "kerneld.execution",
    "KernelEvents": "kerneld.kernel",
    "KernelMode": "kerneld.kernel",
    "Kernel": "kerneld.manager",
    "KernelManager": "kerneld.manager",
    "create_kernel": "kerneld.manager",
    "create_kernel_manager": "kerneld.manager",
    "ExecutionResult": "kerneld.protocol",
    "KernelEvent": "kerneld.protocol",
}

if TYPE_CHECKING:
    from kerneld.client import AsyncClient, Client
    from kerneld.errors import (
        DaemonUnavailable,
        InternalError,
        InvalidArgument,
        KernelError,
        KernelNotFound,
        KernelStartError,
        LimitExceeded,
        PermissionDenied,
        ProfileError,
        SandboxUnavailable,
    )
    from kerneld.execution import ExecutionStream
    from kerneld.kernel import KernelEvents, KernelMode
    from kerneld.manager import Kernel, KernelManager, create_kernel, create_kernel_manager
    from kerneld.protocol import ExecutionResult, KernelEvent


def connect(address: str | None = None, **options: Any) -> Client:
    """A synchronous client of a running daemon, connected (see `kerneld.client.Client`).

    `address` defaults to `$KERNELD_ADDRESS`, else the daemon's default endpoint. Options:
    `timeout`, `connect_timeout`, and CURVE keys for tcp (`server_key`, `public_key`,
    `secret_key`). Raises `DaemonUnavailable` (naming the address) if no daemon answers.
    """
    from kerneld.client import Client
    return Client(address, **options)


def connect_async(address: str | None = None, **options: Any) -> AsyncClient:
    """An asyncio client of a running daemon (see `kerneld.client.AsyncClient`); it connects
    on first use, or use `async with connect_async() as client:`."""
    from kerneld.client import AsyncClient
    return AsyncClient(address, **options)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "DaemonUnavailable",
    "ExecutionResult",
    "ExecutionStream",
    "InternalError",
    "InvalidArgument",
    "Kernel",
    "KernelError",
    "KernelEvent",
    "KernelEvents",
    "KernelManager",
    "KernelMode",
    "KernelNotFound",
    "KernelStartError",
    "LimitExceeded",
    "PermissionDenied",
    "ProfileError",
    "SandboxUnavailable",
    "__version__",
    "connect",
    "connect_async",
    "create_kernel",
    "create_kernel_manager",
]
