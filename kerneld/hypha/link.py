"""The attach process's link to its host's daemon: one `AsyncClient`, watched.

Process model: lives on the attach process's event loop. A watch task asks the daemon for its
`status` every `interval` (0.5 s) with a short deadline; that one request is both the liveness
check and the source of the host's kernel count, so `load()` (what Hypha's
`select:min:getEngineLoad` asks every instance before each placement) answers from memory in
microseconds and never waits on the daemon (HYPHA.md §4: an instance whose getEngineLoad
blocks stalls every user's `get_service`).

State: `up` (the last status answered), `kernels` (the daemon's kernel count, minus dead
ones, adjusted at once by `adjust` after a create or destroy through this link, so placements
made between two polls see it), `reason` (why it is down).

Liveness: the client itself ends requests in flight with `DaemonUnavailable` within ~50 ms of
the connection dropping; the watch marks the link down after one status that fails because
the daemon is not connected (≤ interval + CONNECT_TIMEOUT, ~1.5 s), or after SLOW_STRIKES
statuses in a row slower than STATUS_DEADLINE (a daemon that is connected but does not answer:
frozen, or a host so busy that placing kernels there is wrong anyway), and calls
`on_change(False)` so the attach process stops advertising. While
down, every probe uses a *fresh* client (a dead ipc socket fails at once, without waiting for
a reconnection), and the first that answers replaces the old one and calls `on_change(True)`.

Failure modes: every error a service function gets from the daemon goes through `failure()`,
which turns `DaemonUnavailable` into a message naming this host and its daemon's address
(HYPHA.md pitfall 10: callers only see the text).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kerneld.client import AsyncClient
from kerneld.errors import DaemonUnavailable, KernelError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0   # a daemon not connected for this long is gone (DaemonUnavailable)
STATUS_DEADLINE = 2.0   # a connected daemon's status slower than this is one "slow" strike
SLOW_STRIKES = 3        # consecutive slow statuses before a connected daemon counts as gone


class DaemonLink:
    """See the module docstring. `host` names this host in every error message."""

    def __init__(self, address: str | None, host: str, *, interval: float = 0.5,
                 factory: Callable[[str | None], AsyncClient] | None = None) -> None:
        self.host = host
        self.interval = interval
        self._factory = factory or (lambda a: AsyncClient(a, connect_timeout=CONNECT_TIMEOUT))
        self.client = self._factory(address)
        self.address = self.client.address
        self.up = False
        self.kernels = 0
        self.reason = "not connected yet"
        self.since = time.monotonic()
        self.closing = False   # set by the attach process when it stops
        self._changes = 0      # adjust() calls: a status sent before one is stale
        self._slow = 0         # consecutive statuses past STATUS_DEADLINE
        self.on_change: Callable[[bool], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ what callers use

    def load(self) -> int:
        """This host's kernel count (getEngineLoad); raises while the daemon is gone, so
        Hypha skips this instance when placing new kernels."""
        if not self.up:
            raise self.unavailable()
        return self.kernels

    def adjust(self, delta: int) -> None:
        self.kernels = max(0, self.kernels + delta)
        self._changes += 1

    def unavailable(self) -> DaemonUnavailable:
        if self.closing:
            return self._closing()
        return DaemonUnavailable(
            f"kerneld host {self.host}: its daemon at {self.address} is unavailable "
            f"({self.reason}); kernels of this host are unreachable until it is back")

    def require_up(self) -> AsyncClient:
        if not self.up or self.closing:
            raise self.unavailable()
        return self.client

    def failure(self, exc: BaseException) -> BaseException:
        """The error a caller should see for `exc`, raised by a request to the daemon."""
        if isinstance(exc, DaemonUnavailable) and self.closing:
            return self._closing()
        if isinstance(exc, DaemonUnavailable):
            self.reason = str(exc)
            return DaemonUnavailable(f"kerneld host {self.host}: lost its daemon at "
                                     f"{self.address} during the request ({exc})")
        return exc

    def _closing(self) -> DaemonUnavailable:
        return DaemonUnavailable(f"kerneld host {self.host} is shutting down (its attach "
                                 "process was stopped); its kernels keep running in the "
                                 "daemon and are reachable again once it is back")

    # ------------------------------------------------------------------ the watch

    async def start(self) -> None:
        """Probe once now (so a daemon that is already up is advertised at once), then keep
        watching in the background."""
        await self._probe()
        self._task = asyncio.create_task(self._watch(), name="kerneld-hypha-watch")

    async def wait_change(self, timeout: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._probe()
            except Exception:  # a bug in a callback must not end the watch
                log.exception("daemon watch failed host=%s", self.host)

    async def _probe(self) -> None:
        client = self.client if self.up else self._factory(self.address)
        changes = self._changes
        try:
            status = await asyncio.wait_for(client.status(), STATUS_DEADLINE)
            counts = status.get("kernels") or {}
            kernels = int(counts.get("total", 0)) - int(counts.get("dead", 0))
        except (KernelError, TimeoutError, OSError) as exc:
            if client is not self.client:
                await _close(client)
            if isinstance(exc, TimeoutError) and self.up:
                self._slow += 1     # connected but slow (a busy host): not gone yet
                if self._slow < SLOW_STRIKES:
                    return
            if self.up:
                self.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                await self._set(False)
            return
        self._slow = 0
        if client is not self.client:
            old, self.client = self.client, client
            await _close(old)
        if changes == self._changes:
            self.kernels = kernels
        if not self.up:
            await self._set(True)

    async def _set(self, up: bool) -> None:
        self.up, self.since = up, time.monotonic()
        if up:
            log.info("daemon up host=%s address=%s kernels=%d", self.host, self.address,
                     self.kernels)
        else:
            log.warning("daemon unavailable host=%s address=%s reason=%s", self.host,
                        self.address, self.reason)
        self._changed.set()
        if self.on_change is not None:
            await self.on_change(up)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await _close(self.client)


async def _close(client: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 2.0)
