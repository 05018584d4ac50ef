"""How a kernel runs: one `Backend` per kernel, behind which sits a process or a thread.

The kernel record (`kerneld.kernel`) owns a kernel's state machine and its executions; a
backend owns what runs them (jupyter_client's provisioner role): for a `worker` kernel a
confined process forked by the zygote (`backends.worker`, with the host-wide parts in
`backends.supervisor`), for an `in_process` kernel a thread of this program
(`backends.inprocess`); later a Deno process or a paused image. The record talks to a backend
only through `Backend`, and a backend reports only through the `BackendHost` it is attached
to, so a backend can be moved from one record to another (the warm pool does) by `attach`.

A `BackendFactory` makes a backend from a `Launch` (what the kernel runs with, decided once by
`permissions.lower`) without starting it; `start()` then brings it up. Two steps, so that the
record holds its backend from the first moment: a destroy (or a shutdown) while a kernel is
still starting kills what has been started so far, and the start fails, leaving nothing.

Messages both ways are `kerneld.protocol` records: the record sends `Execute`, `InputReply`,
`Complete`/`Inspect`/`IsComplete`; the backend delivers `Output`, `Done`, `Answer` (and nothing
else: `Hello`, `Activate` and the zygote's reports stay inside the backend).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kerneld.permissions import Lowered
    from kerneld.permissions.hostdir import HostDir


@dataclass(frozen=True)
class Launch:
    """What one kernel's backend is made from."""

    kernel_id: str
    mode: str                   # "worker" or "in_process" (kerneld.kernel.KernelMode)
    lowered: Lowered            # the kernel's permissions, env and limits, decided once
    host_dir: HostDir | None = None  # its checked, pinned `filesystem.root`, if it mounts one


@dataclass(frozen=True)
class ExitInfo:
    """Why a backend's process or thread ended without being told to (a death)."""

    reason: str                 # for people: "killed by SIGKILL", "exited with code 1", ...
    exit_code: int | None       # None: killed by a signal, or the status is unknown
    signal: int | None


class BackendHost(Protocol):
    """What a backend reports to (the kernel record, or the pool while the backend is idle)."""

    def on_message(self, msg: Any) -> None:
        """A protocol message from the runtime (`Output`, `Done`, `Answer`)."""

    def on_exit(self, info: ExitInfo) -> None:
        """The process or thread ended on its own after `start()` succeeded (never called for
        an end `kill()` caused, nor for one that made `start()` fail)."""


class Backend(Protocol):
    """One kernel's process or thread. Every method is called on the manager's event loop."""

    @property
    def pid(self) -> int | None:
        """The kernel's main process while it runs; None for a thread, and once it ended."""

    async def start(self) -> None:
        """Bring it up and wait until it can serve (the runtime's hello). Raises
        `KernelStartError` (or `SandboxUnavailable`, `LimitExceeded`, ...) after releasing
        what it took, also when `kill()` was called meanwhile. Returns at once if started."""

    def attach(self, host: BackendHost) -> None:
        """From now on deliver messages and exits to `host` (the pool hands idle backends over)."""

    def activate(self, env: Mapping[str, str]) -> None:
        """Lay `env` (the kernel's own variables) over the environment it started with: the
        pool calls this when it hands over a backend that was started for no kernel yet."""

    def send(self, msg: Any) -> None:
        """Queue a protocol message to the runtime; never blocks, never raises for a dead one."""

    def interrupt(self) -> bool:
        """Interrupt the running code (SIGINT to the worker; an async exception in a thread)."""

    async def kill(self) -> None:
        """End it and everything it started and release what it held (uid, cgroup, proxy,
        sockets). Idempotent, safe at any moment (also during `start()`); returns once
        nothing of it is left."""

    async def pause(self) -> None:
        """Stop it from running (no CPU, memory kept) until `resume`."""

    async def resume(self) -> None:
        """Let a paused backend run again."""

    @property
    def exited(self) -> asyncio.Future[ExitInfo | None]:
        """Done once it has ended: with its ExitInfo after a death, None after `kill()`."""

    def memory_bytes(self) -> int | None:
        """Memory it holds now (its cgroup's, else its process's RSS); None if unknown."""


class BackendFactory(Protocol):
    """Makes (does not start) the backend of one kernel, attached to `host`."""

    def __call__(self, launch: Launch, host: BackendHost) -> Backend: ...
