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
`on_change(False)` so the attach process stops advertising. Marking the link down closes its
client, so every request still waiting on it (a frozen daemon answers none) fails at once with
`DaemonUnavailable` instead of hanging. While down, every probe uses a *fresh* client (a dead
ipc socket fails at once, without waiting for a reconnection), and the first that answers
replaces the old one and calls `on_change(True)`. Any exception in a probe counts as a failed
probe. `on_change` (registering with Hypha, which may be slow or down) runs in a task of its
own, so it never delays the next probe; it is called with the state current when it runs,
again until it has seen the latest one.

Every request but an execution's stream has a deadline of REQUEST_TIMEOUT (the client's
`timeout`): a daemon that accepts a request and never answers cannot hold a Hypha caller
(nor this process's sweep) forever. Streams are bounded by the execution, which the caller
can interrupt, and by the link going down.

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
from kerneld.errors import DaemonUnavailable

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 1.0   # a daemon not connected for this long is gone (DaemonUnavailable)
STATUS_DEADLINE = 2.0   # a connected daemon's status slower than this is one "slow" strike
SLOW_STRIKES = 3        # consecutive slow statuses before a connected daemon counts as gone
REQUEST_TIMEOUT = 30.0  # seconds any one request (not a stream) may wait for the daemon


class DaemonLink:
    """See the module docstring. `host` names this host in every error message."""

    def __init__(self, address: str | None, host: str, *, interval: float = 0.5,
                 factory: Callable[[str | None], AsyncClient] | None = None) -> None:
        self.host = host
        self.interval = interval
        self._factory = factory or (lambda a: AsyncClient(a, connect_timeout=CONNECT_TIMEOUT,
                                                          timeout=REQUEST_TIMEOUT))
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
        self._notifier: asyncio.Task[None] | None = None
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
            if self.up:
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
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the probe failed
            if client is not self.client:
                await _close(client)
            if isinstance(exc, TimeoutError) and self.up:
                self._slow += 1     # connected but slow (a busy host): not gone yet
                if self._slow < SLOW_STRIKES:
                    return
            if self.up:
                self.reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._slow = 0
                await self._set(False)
                # requests still waiting on the old client fail now, naming this host,
                # instead of waiting for a frozen daemon (the next probe makes a new client)
                old, self.client = self.client, self._factory(self.address)
                await _close(old)
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
        if self.on_change is not None and (self._notifier is None or self._notifier.done()):
            self._notifier = asyncio.create_task(self._notify(), name="kerneld-hypha-advertise")

    async def _notify(self) -> None:
        """Tell `on_change` the current state until it has seen the latest (the state may
        change again while a slow Hypha server handles a registration)."""
        told: bool | None = None
        while self.on_change is not None and told != self.up:
            told = self.up
            try:
                await self.on_change(told)
            except Exception:  # a failed registration is retried by the attach process's sweep
                log.exception("advertising the daemon's state failed host=%s", self.host)

    async def wait_notified(self) -> None:
        """Until `on_change` has been told the latest state (the attach process's start)."""
        if self._notifier is not None:
            with contextlib.suppress(Exception):
                await self._notifier

    async def close(self) -> None:
        for task in (self._task, self._notifier):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._notifier = None
        await _close(self.client)


async def _close(client: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 2.0)
