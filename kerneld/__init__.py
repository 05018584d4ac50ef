"""kerneld: stateful, Jupyter-like Python kernels for untrusted code, each confined by the OS.

Public surface only; everything else is internal. See README.md and docs/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
from kerneld.kernels import KernelEvents, KernelMode
from kerneld.manager import Kernel, KernelManager, create_kernel, create_kernel_manager
from kerneld.protocol import ExecutionResult, KernelEvent

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kerneld.client import AsyncClient, Client


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
