"""How a kernel runs: one `Backend` per kernel, behind which sits a process or a thread.

The kernel record (`kerneld.kernel`) owns a kernel's state machine and its executions; a
backend owns what runs them (jupyter_client's provisioner role): for a `worker` kernel a
confined process forked by the zygote (`backends.worker`, with the host-wide parts in
`backends.supervisor`), for an `in_process` kernel a thread of this program
(`backends.inprocess`); later a Deno process or a paused image. The record talks to a backend
only through `Backend`, and a backend reports only through the `BackendHost` it is attached
to, so a backend can be moved from one record to another (the warm pool does) by `attach`.

Messages both ways are `kerneld.protocol` records: the record sends `Activate`, `Execute`,
`InputReply`, `Complete`/`Inspect`/`IsComplete`; the backend delivers `Output`, `Done`,
`Answer` (and nothing else: `Hello` and the zygote's reports stay inside the backend).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ExitInfo:
    """Why a backend's process or thread ended without being told to (a death)."""

    reason: str                 # for people: "killed by SIGKILL", "exited with code 1", ...
    exit_code: int | None       # None: killed by a signal, or the status is unknown
    signal: int | None


class BackendHost(Protocol):
    """What a backend reports to, set by `Backend.attach` (the kernel record)."""

    def on_message(self, msg: Any) -> None:
        """A protocol message from the runtime (`Output`, `Done`, `Answer`)."""

    def on_exit(self, info: ExitInfo) -> None:
        """The process or thread ended on its own (never called for an end `kill()` caused)."""


class Backend(Protocol):
    """One kernel's process or thread, started and ready to serve (the factory that made it
    waited for its runtime's hello). Every method is called on the manager's event loop."""

    pid: int | None             # the kernel's main process; None for a thread

    def attach(self, host: BackendHost) -> None:
        """From now on deliver messages and exits to `host` (the pool hands idle backends over)."""

    def send(self, msg: Any) -> None:
        """Queue a protocol message to the runtime; never blocks, never raises for a dead one."""

    def interrupt(self) -> bool:
        """Interrupt the running code (SIGINT to the worker; an async exception in a thread)."""

    async def kill(self) -> None:
        """End it and everything it started and release what it held (uid, cgroup, proxy,
        sockets). Idempotent; returns once nothing of it is left."""

    async def pause(self) -> None:
        """Stop it from running (no CPU, memory kept) until `resume`."""

    async def resume(self) -> None:
        """Let a paused backend run again."""

    @property
    def exited(self) -> asyncio.Future[ExitInfo | None]:
        """Done once it has ended: with its ExitInfo after a death, None after `kill()`."""

    def memory_bytes(self) -> int | None:
        """Memory it holds now (its cgroup's, else its process's RSS); None if unknown."""
