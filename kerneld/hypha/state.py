"""What the attach process keeps between calls: executeCode results, open streams, counters.

State, all of it per caller namespace (the caller's Hypha workspace) and bounded:
- `Results`: the executions started by `executeCode`, for `getExecutionResult`. An entry is kept
  while its execution runs and `ttl` seconds after it ends; a namespace keeps at most
  `per_namespace` entries (the oldest finished one goes first; when all are still running the
  new execution is refused, which `max_executions_per_workspace` below that bound prevents).
- `Streams`: every `streamExecution` generator handed to a caller, with the time since which
  it has been waiting for its caller to ask for the next event. Hypha gives a host no notice
  when a caller in another workspace goes away in the middle of a stream (HYPHA.md §5), so
  `sweep()` closes streams idle longer than `idle_timeout` (their execution runs on to its end
  in the kernel; only the caller's view of it is closed, and the execution's quota slot is
  released when the execution ends, not when the view closes: the service drains it).
- `InFlight`: executions running or queued per namespace (the quota), and creates under way
  (so two concurrent creates cannot both pass the kernel quota).

Everything here is plain data driven by the service and a periodic `sweep`; the clock is
injected so unit tests can move time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from kerneld.errors import KernelNotFound, LimitExceeded, shown

log = logging.getLogger(__name__)


@dataclass
class Execution:
    """One executeCode execution: its events in the seed's shape, and how it ended."""

    id: str
    namespace: str
    kernel_id: str
    code: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None
    finished_at: float | None = None


class Results:
    def __init__(self, ttl: float, per_namespace: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.per_namespace, self.clock = ttl, per_namespace, clock
        self._by_ns: dict[str, OrderedDict[str, Execution]] = defaultdict(OrderedDict)

    def add(self, execution: Execution) -> None:
        entries = self._by_ns[execution.namespace]
        self._expire(entries)
        while len(entries) >= self.per_namespace:
            oldest = next((e for e in entries.values() if e.finished_at is not None), None)
            if oldest is None:
                raise LimitExceeded(
                    f"executeCode: {len(entries)} executions of this workspace are still "
                    f"running on this host (limit [hypha] max_results_per_workspace = "
                    f"{self.per_namespace})")
            del entries[oldest.id]
        entries[execution.id] = execution

    def finish(self, execution: Execution) -> None:
        execution.finished_at = self.clock()
        execution.done.set()

    def get(self, namespace: str, kernel_id: str, execution_id: str) -> Execution:
        entries = self._by_ns.get(namespace)
        if entries is not None:
            self._expire(entries)
            found = entries.get(execution_id)
            if found is not None and found.kernel_id == kernel_id:
                return found
        raise KernelNotFound(f"execution {shown(execution_id)} not found for kernel "
                             f"{shown(kernel_id)} (results are kept for {self.ttl:g} s after "
                             "the execution ends)")

    def sweep(self) -> None:
        for ns in list(self._by_ns):
            self._expire(self._by_ns[ns])
            if not self._by_ns[ns]:
                del self._by_ns[ns]

    def _expire(self, entries: OrderedDict[str, Execution]) -> None:
        now = self.clock()
        for key in [k for k, e in entries.items()
                    if e.finished_at is not None and now - e.finished_at > self.ttl]:
            del entries[key]

    def __len__(self) -> int:
        return sum(len(e) for e in self._by_ns.values())


@dataclass(eq=False)
class OpenStream:
    """One generator handed to a caller. `waiting_since`: when it last handed out an event
    (or was made) and began waiting for the caller's next `next`; None while it works."""

    namespace: str
    kernel_id: str
    release: Callable[[], None]
    generator: AsyncGenerator[dict[str, Any], None] | None = None
    waiting_since: float | None = None
    released: bool = False
    started: bool = False     # the generator ran (it then releases the slot itself)

    def done(self) -> None:
        if not self.released:
            self.released = True
            self.release()


class Streams:
    def __init__(self, idle_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout, self.clock = idle_timeout, clock
        self.open: set[OpenStream] = set()
        self.closed_idle = 0   # how many the sweep closed (status, tests)

    def add(self, stream: OpenStream) -> None:
        stream.waiting_since = self.clock()
        self.open.add(stream)

    def waiting(self, stream: OpenStream) -> None:
        stream.waiting_since = self.clock()

    def working(self, stream: OpenStream) -> None:
        stream.waiting_since = None

    def finished(self, stream: OpenStream) -> None:
        """The caller's view of `stream` is over. Its slot is released by the generator at
        the execution's end; a generator that never ran never started an execution."""
        self.open.discard(stream)
        if not stream.started:
            stream.done()

    async def sweep(self) -> None:
        now = self.clock()
        for stream in [s for s in self.open if s.waiting_since is not None
                       and now - s.waiting_since > self.idle_timeout]:
            log.info("closing a stream its caller stopped reading kernel=%s idle=%.1fs",
                     stream.kernel_id, now - (stream.waiting_since or now))
            self.closed_idle += 1
            if stream.generator is not None:
                with contextlib.suppress(RuntimeError):  # resumed by its caller meanwhile
                    await stream.generator.aclose()
            self.finished(stream)

    async def close_all(self) -> None:
        for stream in list(self.open):
            if stream.generator is not None:
                with contextlib.suppress(RuntimeError):
                    await stream.generator.aclose()
            self.finished(stream)


class InFlight:
    """Executions running or queued, and creates under way, per namespace."""

    def __init__(self, max_executions: int) -> None:
        self.max_executions = max_executions
        self.executions: dict[str, int] = defaultdict(int)
        self.creating: dict[str, int] = defaultdict(int)

    def admit(self, namespace: str, fn: str) -> Callable[[], None]:
        """Count one execution of `namespace`, or LimitExceeded; returns its release."""
        if self.executions[namespace] >= self.max_executions:
            raise LimitExceeded(
                f"{fn}: this workspace has {self.executions[namespace]} executions running or "
                f"queued on this host (limit [hypha] max_executions_per_workspace = "
                f"{self.max_executions})")
        self.executions[namespace] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.executions[namespace] -= 1
                if not self.executions[namespace]:
                    del self.executions[namespace]
        return release

    def total(self) -> int:
        return sum(self.executions.values())
