"""kerneld: stateful, Jupyter-like Python kernels for untrusted code, each confined by the OS.

Public surface only; everything else is internal. See README.md and docs/.
"""

from __future__ import annotations

from kerneld.errors import (DaemonUnavailable, InternalError, InvalidArgument, KernelError,
                            KernelNotFound, KernelStartError, LimitExceeded, PermissionDenied,
                            ProfileError, SandboxUnavailable)
from kerneld.execution import ExecutionStream
from kerneld.kernels import KernelEvents, KernelMode
from kerneld.manager import Kernel, KernelManager, create_kernel, create_kernel_manager
from kerneld.protocol import ExecutionResult, KernelEvent

__version__ = "0.1.0"


def connect(address: str | None = None, **kwargs: object) -> "Client":  # noqa: F821
    """A synchronous client of a running daemon (see kerneld.client.Client)."""
    from kerneld.client import Client
    return Client(address, **kwargs)  # type: ignore[arg-type]


def connect_async(address: str | None = None, **kwargs: object) -> "AsyncClient":  # noqa: F821
    """An asyncio client of a running daemon (see kerneld.client.AsyncClient)."""
    from kerneld.client import AsyncClient
    return AsyncClient(address, **kwargs)  # type: ignore[arg-type]


__all__ = [
    "KernelManager", "Kernel", "KernelMode", "KernelEvents", "KernelEvent", "ExecutionResult",
    "ExecutionStream", "create_kernel", "create_kernel_manager", "connect", "connect_async",
    "KernelError", "KernelNotFound", "InvalidArgument", "ProfileError", "PermissionDenied",
    "LimitExceeded", "SandboxUnavailable", "KernelStartError", "DaemonUnavailable",
    "InternalError", "__version__",
]
