"""One kernel as the manager sees it: its state machine, its execution FIFO, its timers.

State machine (`Status`, the table `TRANSITIONS`; `KernelRecord.set_status` is the one setter
and raises `IllegalTransition` for anything the table does not list):

- starting → idle (started), or → dead (the start failed, or a destroy came first);
- idle ⇄ busy: an execution runs; as one ends the next queued one starts;
- idle, busy ⇄ paused: rows for pause/resume (no op reaches them yet);
- idle, busy, paused, dead → restarting → idle: a fresh backend with the same id, spec,
  permissions and timeouts; or restarting → dead (the new backend failed, or a destroy);
- any other status → dead: a death, a destroy, terminate or expiry. `dead` is the only end: a
  destroyed kernel leaves the manager's table as a dead record (there is no `removed` state).

What runs the kernel is its `Backend` (`kerneld.backends`): a confined worker process or an
in-process thread. The record sends it requests and gets back, through `on_message` and
`on_exit` (it is the backend's `BackendHost`), the runtime's messages and its death. Messages
for an execution other than the running one are dropped: a worker cannot speak out of turn.
The one exception: a comm message (`comm_open`/`comm_msg`/`comm_close`) the kernel sent while
none of its executions ran (from a thread, between cells) arrives with exec_id "" and goes to
the kernel's listeners (`on_kernel_event`, `subscribe`) with execution_id None, never into an
execution's outputs: widgets updated from a thread reach a front end that listens. Comm
events must have a str `comm_id` and `buffers` that are a list of bytes; others are dropped,
like events of unknown types.

The record imports nothing above it: everything it needs from the manager comes through a
`KernelHost` (make a backend, dispatch an event, expire or terminate a kernel, run a task, the
config), which the manager implements and unit tests fake.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from kerneld import lifecycle
from kerneld import protocol as p
from kerneld.errors import KernelError, KernelNotFound
from kerneld.execution import Execution

if TYPE_CHECKING:
    from kerneld.backends import Backend, ExitInfo
    from kerneld.config import ManagerConfig
    from kerneld.ops import KernelSpec
    from kerneld.permissions import Lowered
    from kerneld.permissions.hostdir import HostDir

log = logging.getLogger(__name__)

_WORKER_EVENTS = p.EVENT_TYPES - {"execution_stalled"}
ASK_TIMEOUT = 60.0  # seconds a complete / inspect / is_complete waits for its answer


class KernelMode(str, Enum):
    WORKER = "worker"
    IN_PROCESS = "in_process"


class KernelEvents(str, Enum):
    STREAM = "stream"
    DISPLAY_DATA = "display_data"
    UPDATE_DISPLAY_DATA = "update_display_data"
    EXECUTE_RESULT = "execute_result"
    EXECUTE_ERROR = "execute_error"
    CLEAR_OUTPUT = "clear_output"
    INPUT_REQUEST = "input_request"
    COMM_OPEN = "comm_open"
    COMM_MSG = "comm_msg"
    COMM_CLOSE = "comm_close"
    EXECUTION_STALLED = "execution_stalled"
    KERNEL_DIED = "kernel_died"
    KERNEL_RESTARTED = "kernel_restarted"
    KERNEL_TERMINATED = "kernel_terminated"
    ALL = "*"


class Status(str, Enum):
    """A kernel's status; the values are what `describe()["status"]` says."""

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    PAUSED = "paused"
    RESTARTING = "restarting"
    DEAD = "dead"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.STARTING: frozenset({Status.IDLE, Status.DEAD}),
    Status.IDLE: frozenset({Status.BUSY, Status.PAUSED, Status.RESTARTING, Status.DEAD}),
    Status.BUSY: frozenset({Status.IDLE, Status.PAUSED, Status.RESTARTING, Status.DEAD}),
    Status.PAUSED: frozenset({Status.IDLE, Status.BUSY, Status.RESTARTING, Status.DEAD}),
    Status.RESTARTING: frozenset({Status.IDLE, Status.DEAD}),
    Status.DEAD: frozenset({Status.RESTARTING}),
}
"""from → the statuses it may go to; anything else is a bug (`IllegalTransition`)."""


class IllegalTransition(RuntimeError):
    """A status change the table does not allow: a bug in kerneld, never a client's error."""


class KernelHost(Protocol):
    """What a kernel record needs from its manager."""

    @property
    def config(self) -> ManagerConfig:
        """The manager's config now (timeout defaults, stall grace)."""

    def backend_for(self, kernel: KernelRecord) -> Backend:
        """A backend for `kernel`, attached to it: made and not started, or a started one
        from the warm pool (`start()` then returns at once)."""

    def kernel_record(self, kernel_id: str) -> KernelRecord | None:
        """The record registered under `kernel_id` now (None once destroyed)."""

    def dispatch(self, event: p.KernelEvent) -> None:
        """Deliver an event to the kernel's listeners."""

    async def expire(self, kernel: KernelRecord) -> None:
        """The inactivity timeout fired: destroy `kernel` and tell its listeners."""

    async def force_terminate_kernel(self, kernel_id: str, reason: str | None = None) -> bool:
        """Destroy the kernel and tell its listeners `kernel_terminated`."""

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run `coro` in the background (kept, and cancelled when the manager closes)."""


def _comm_event_ok(data: dict[str, Any]) -> bool:
    """A comm event from a worker names its comm and carries bytes buffers (or none)."""
    buffers = data.get("buffers", [])
    return (isinstance(data.get("comm_id"), str) and isinstance(buffers, list)
            and all(type(b) is bytes for b in buffers))


# What the daemon keeps of an untrusted worker's comm messages (the worker's own output cap
# covers stream text only): per execution, the bytes of comm messages stored with it and
# queued for its stream; between cells, a token bucket of bytes per second. Past either,
# comm messages still reach the kernel's listeners (which drop when slow) and are counted.
COMM_BYTES_PER_EXECUTION = 64 * 1024 * 1024
COMM_IDLE_BYTES_PER_S = 8 * 1024 * 1024
COMM_IDLE_BURST = 32 * 1024 * 1024


def _comm_size(data: dict[str, Any]) -> int:
    """A comm message's size as the daemon holds it: its buffers, plus a floor for the rest
    (its JSON part was bounded by the worker's message size already)."""
    return 1024 + sum(len(b) for b in data.get("buffers", ()))


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


class KernelRecord:
    """Manager-internal record of one kernel (see the module docstring)."""

    def __init__(self, host: KernelHost, kernel_id: str, spec: KernelSpec, mode: KernelMode,
                 lowered: Lowered, *, host_dir: HostDir | None = None,
                 owner: str | None = None) -> None:
        self.host, self.id, self.spec, self.mode = host, kernel_id, spec, mode
        self.namespace: str | None = spec.namespace
        # the request validated and lowered once (permissions.lower); restart reuses it
        self.lowered, self.profile = lowered, lowered.profile
        self.host_dir = host_dir    # checked and pinned once: a restart mounts the same inode
        self.owner = owner          # the creating caller's principal; None: this program
        self._status = Status.STARTING
        self.created = time.time()
        self.backend: Backend | None = None
        self.execution_count = 0
        self.queue: collections.deque[Execution] = collections.deque()
        self.current: Execution | None = None
        self.last_activity = time.monotonic()
        self._asks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.comm_dropped = 0  # comm messages past COMM_* budgets (not kept or not dispatched)
        self._comm_tokens, self._comm_at = float(COMM_IDLE_BURST), time.monotonic()
        self._restart_lock = asyncio.Lock()
        # set once the first start is over: it succeeded, failed, or a kill came first
        self._start_ended = asyncio.Event()
        cfg, profile = host.config, self.profile
        self.inactivity_timeout: float | None = _first(
            spec.inactivity_timeout, profile.inactivity_timeout, cfg.inactivity_timeout) or None
        self.max_execution_time: float | None = _first(
            spec.max_execution_time, profile.max_execution_time, profile.limits.wall_seconds,
            cfg.max_execution_time) or None
        self.on_stall: str = profile.on_stall or "event"
        self.stall_escalation: str = profile.stall_escalation
        self.output_limit = int(profile.limits.output or 0)

    # ------------------------------------------------------------------ status

    @property
    def status(self) -> Status:
        return self._status

    def set_status(self, status: Status) -> None:
        """The one way the status changes: along `TRANSITIONS`, else IllegalTransition."""
        if status not in TRANSITIONS[self._status]:
            raise IllegalTransition(f"kernel {self.id}: {self._status.value} → {status.value}")
        self._status = status

    @property
    def pid(self) -> int | None:
        return self.backend.pid if self.backend is not None else None

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Bring the kernel up (status `starting`): idle, or dead and raising if it failed."""
        try:
            if self._status is Status.DEAD:  # destroyed before its start could begin
                raise KernelNotFound(f"kernel {self.id} was destroyed while it started")
            await self._start_backend()
            if self._destroyed():  # while it started (a backend's start may win the race)
                raise KernelNotFound(f"kernel {self.id} was destroyed while it started")
        except BaseException as exc:
            await self.kill()
            if self._status is not Status.DEAD:
                self.set_status(Status.DEAD)
                self.end_executions("KernelDied", f"the kernel failed to start: "
                                                  f"{exc or type(exc).__name__}")
            raise
        else:
            self._ready()
        finally:
            self._start_ended.set()

    async def _start_backend(self) -> None:
        self.backend = self.host.backend_for(self)
        await self.backend.start()

    def _ready(self) -> None:
        self.set_status(Status.IDLE)
        self.touch()
        self._start_next()

    async def kill(self) -> None:
        """Kill the backend (the whole process tree, or the thread) and fail pending asks."""
        self._start_ended.set()
        backend = self.backend
        if backend is not None:
            await backend.kill()
            if self.backend is backend:
                self.backend = None
        self._fail_asks()

    def _fail_asks(self) -> None:
        for future in self._asks.values():
            if not future.done():
                future.set_exception(KernelError(f"kernel {self.id} stopped"))
        self._asks.clear()

    def end_executions(self, ename: str, evalue: str) -> None:
        running, queued = self.current, list(self.queue)
        self.current = None
        self.queue.clear()
        if running is not None:
            running.fail(ename, evalue)
        for execution in queued:
            execution.fail(ename, evalue, status="aborted")

    async def destroy(self, ename: str, evalue: str) -> None:
        """End the kernel: dead, its executions ended with `ename`, its backend killed."""
        if self._status is not Status.DEAD:
            self.set_status(Status.DEAD)
        self.end_executions(ename, evalue)
        await self.kill()

    async def restart(self) -> None:
        """A fresh backend for this kernel. Restarts queue behind one another (two at once would
        kill each other's new worker); one asked for after a destroy is KernelNotFound."""
        async with self._restart_lock:
            await self._start_ended.wait()  # a restart asked for while it starts comes after
            if self.host.kernel_record(self.id) is not self:
                raise KernelNotFound(f"kernel {self.id} not found")
            await self._restart()

    async def _restart(self) -> None:
        # from here on an execution waits for the new backend: were the status left "idle" or
        # "busy" while the old one is killed, `submit` would hand it to the dying worker and
        # it would never be answered (issue 16: an execute sent during a restart hung)
        self.set_status(Status.RESTARTING)
        try:
            self.end_executions("KernelRestarted", "the kernel was restarted")
            await self.kill()
            if self._destroyed():
                raise KernelNotFound(f"kernel {self.id} was destroyed while it restarted")
            self.created = time.time()
            self.execution_count = 0
            await self._start_backend()
            if self._destroyed():
                # destroyed while the new backend started: it must not outlive its kernel
                raise KernelNotFound(f"kernel {self.id} was destroyed while it restarted")
        except BaseException as exc:
            # the new backend never came up (e.g. its mount was refused): the kernel is dead,
            # not "restarting" forever with executions queued behind nothing
            await self.kill()
            if self._destroyed():
                if self._status is not Status.DEAD:
                    self.set_status(Status.DEAD)
                # destroyed while restarting: a normal end, not a failure
                raise KernelNotFound(f"kernel {self.id} was destroyed while it restarted") from None
            reason = f"the restart failed: {exc or type(exc).__name__}"
            log.warning("kernel died kernel=%s reason=%r", self.id, reason)
            self.set_status(Status.DEAD)
            self.end_executions("KernelDied", reason)
            self._dispatch("kernel_died", {
                "kernel_id": self.id, "reason": reason, "exit_code": None, "signal": None})
            raise
        self._ready()
        self._dispatch("kernel_restarted", {"kernel_id": self.id})

    def _destroyed(self) -> bool:
        """Whether a destroy came while a start or restart awaited (either began with status
        `starting` / `restarting`, so `dead` now can only be a destroy's)."""
        return self._status is Status.DEAD or self.host.kernel_record(self.id) is not self

    def _dispatch(self, type_: str, data: dict[str, Any]) -> None:
        self.host.dispatch(p.KernelEvent(type_, data, self.id))

    # ------------------------------------------------------------------ from the backend

    def on_message(self, msg: Any) -> None:
        if isinstance(msg, p.Output):
            if msg.type not in _WORKER_EVENTS or (msg.type in p.COMM_EVENTS
                                                  and not _comm_event_ok(msg.data)):
                return
            current = self.current
            if msg.exec_id == "" and msg.type in p.COMM_EVENTS:
                if self._idle_comm_admitted(_comm_size(msg.data)):
                    self.host.dispatch(p.KernelEvent(msg.type, msg.data, self.id, None))
                return
            if current is None or msg.exec_id != current.id:
                return
            event = p.KernelEvent(msg.type, msg.data, self.id, current.id)
            if msg.type in p.COMM_EVENTS:
                current.comm_bytes += _comm_size(msg.data)
                if current.comm_bytes > COMM_BYTES_PER_EXECUTION:
                    self.comm_dropped += 1  # not kept: listeners only
                    self.host.dispatch(event)
                    return
            current.add(event)
            self.host.dispatch(event)
        elif isinstance(msg, p.Done):
            self._finish(msg)
        elif isinstance(msg, p.Answer):
            future = self._asks.pop(msg.req_id, None)
            if future is not None and not future.done():
                future.set_result(msg.content)

    def _idle_comm_admitted(self, size: int) -> bool:
        """The token bucket of comm messages sent between cells (COMM_IDLE_*)."""
        now = time.monotonic()
        self._comm_tokens = min(float(COMM_IDLE_BURST), self._comm_tokens
                                + (now - self._comm_at) * COMM_IDLE_BYTES_PER_S)
        self._comm_at = now
        if size > self._comm_tokens:
            self.comm_dropped += 1
            return False
        self._comm_tokens -= size
        return True

    def _finish(self, msg: p.Done) -> None:
        current = self.current
        if current is None or msg.exec_id != current.id:
            return
        if msg.result is not None and not current.has_result:
            event = p.KernelEvent("execute_result", msg.result, self.id, current.id)
            current.add(event)
            self.host.dispatch(event)
        status = msg.status if msg.status in ("ok", "error") else "error"
        if msg.execution_count is not None:
            self.execution_count = msg.execution_count
        current.finish(status, msg.execution_count, msg.result, msg.error,
                       payload=msg.payload, user_expressions=msg.user_expressions)
        self.current = None
        if self._status is Status.BUSY:
            self.set_status(Status.IDLE)
        self.touch()
        self._start_next()

    def on_exit(self, info: ExitInfo) -> None:
        """The backend died on its own: the kernel is dead (and restarted if its profile
        says `restart_on_death`)."""
        if self._status in (Status.DEAD, Status.RESTARTING, Status.STARTING):
            return  # a backend being replaced, or one whose start reports its own failure
        log.warning("kernel died kernel=%s reason=%r", self.id, info.reason)
        self.set_status(Status.DEAD)
        self.end_executions("KernelDied", info.reason)
        self._fail_asks()
        self._dispatch("kernel_died", {"kernel_id": self.id, "reason": info.reason,
                                       "exit_code": info.exit_code, "signal": info.signal})
        if self.profile.restart_on_death:
            self.host.spawn(self._restart_on_death(), f"restart on death kernel={self.id}")

    async def _restart_on_death(self) -> None:
        try:
            await self.restart()
        except KernelNotFound:
            pass  # destroyed meanwhile
        except KernelError as exc:  # told to its listeners as kernel_died already
            log.warning("restart on death failed kernel=%s error=%s", self.id, exc)

    # ------------------------------------------------------------------ executions

    def send(self, msg: Any) -> None:
        if self.backend is not None:
            self.backend.send(msg)

    def submit(self, execution: Execution) -> None:
        if self._status is Status.DEAD:
            execution.fail("KernelDied", f"kernel {self.id} is dead; restart it first")
            return
        self.queue.append(execution)
        self._start_next()

    def _start_next(self) -> None:
        if self.current is not None or not self.queue or self._status is not Status.IDLE:
            return
        execution = self.queue.popleft()
        self.current = execution
        self.set_status(Status.BUSY)
        execution.started = time.time()
        execution.started_mono = time.monotonic()
        comm = execution.comm
        if comm is not None:
            self.send(p.CommRequest(execution.id, comm.msg_type, comm.content, comm.metadata,
                                    comm.buffers, self.output_limit))
        else:
            self.send(p.Execute(execution.id, execution.code, execution.silent,
                                execution.store_history, execution.allow_stdin,
                                self.output_limit, execution.user_expressions))

    def input_reply(self, value: str) -> bool:
        if self.current is None:
            return False
        self.send(p.InputReply(self.current.id, value))
        return True

    async def ask(self, make: Callable[[str], Any]) -> dict[str, Any]:
        """Send a Complete/Inspect/IsComplete built by `make(req_id)`; await its Answer."""
        if self._status is Status.DEAD:
            raise KernelError(f"kernel {self.id} is dead; restart it first")
        if self._status in (Status.STARTING, Status.RESTARTING):
            # no backend would answer: it would wait the whole ASK_TIMEOUT
            raise KernelError(f"kernel {self.id} is {self._status.value}; ask again once it "
                              "is idle")
        req_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[req_id] = future
        try:
            self.send(make(req_id))
            return await asyncio.wait_for(future, timeout=ASK_TIMEOUT)
        finally:
            self._asks.pop(req_id, None)

    def interrupt(self) -> bool:
        if self._status is Status.DEAD:
            return False
        if self.current is None:
            return True
        return self.backend.interrupt() if self.backend is not None else False

    # ------------------------------------------------------------------ timers

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def clock(self) -> lifecycle.KernelClock:
        current = self.current
        return lifecycle.KernelClock(
            busy=(current is not None or bool(self.queue)
                  or self._status in (Status.STARTING, Status.RESTARTING)),
            last_activity=self.last_activity, inactivity_timeout=self.inactivity_timeout,
            running_since=current.started_mono if current else None,
            stalled=current.stalled if current else False,
            interrupted_at=current.interrupted_at if current else None,
            max_execution_time=self.max_execution_time, on_stall=self.on_stall,
            stall_grace=self.host.config.stall_grace, escalation=self.stall_escalation)

    def time_until_shutdown(self) -> float | None:
        return lifecycle.time_until_shutdown(self.clock(), time.monotonic())

    async def apply_rules(self, now: float) -> None:
        if self._status is Status.DEAD and not self.inactivity_timeout:
            return
        for action in lifecycle.decide(self.clock(), now):
            await self._perform(action, now)

    async def _perform(self, action: lifecycle.Action, now: float) -> None:
        current = self.current
        if action is lifecycle.Action.EXPIRE:
            await self.host.expire(self)
        elif action is lifecycle.Action.STALLED and current is not None:
            current.stalled = True
            event = p.KernelEvent("execution_stalled", {
                "kernel_id": self.id, "execution_id": current.id,
                "max_execution_time": self.max_execution_time,
                "actual_runtime": now - (current.started_mono or now),
                "code": current.code, "start_time": current.started}, self.id, current.id)
            current.add(event)
            self.host.dispatch(event)
        elif action is lifecycle.Action.INTERRUPT and current is not None:
            current.interrupted_at = now
            self.interrupt()
        elif action is lifecycle.Action.RESTART:
            try:
                await self.restart()
            except KernelNotFound:
                log.info("kernel destroyed during its stall restart kernel=%s", self.id)
            except KernelError as exc:  # told to its listeners as kernel_died already
                log.warning("stall restart failed kernel=%s error=%s", self.id, exc)
        elif action is lifecycle.Action.TERMINATE:
            await self.host.force_terminate_kernel(self.id, "execution stalled")

    # ------------------------------------------------------------------ reporting

    def execution_info(self) -> dict[str, Any]:
        now = time.monotonic()
        running = [self.current] if self.current is not None else []
        executions = [e.info(now) for e in [*running, *self.queue]]
        return {"count": len(executions), "is_stuck": any(e["is_stuck"] for e in executions),
                "execution_ids": [e["id"] for e in executions],
                "longest_running_time": max((e["runtime"] for e in executions), default=0.0),
                "executions": executions}

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "namespace": self.namespace, "mode": self.mode.value,
                "profile": self.profile.name,
                "profile_description": self.profile.description.strip(),
                "status": self._status.value,
                "created": dt.datetime.fromtimestamp(self.created, dt.UTC).isoformat(),
                "pid": self.pid, "execution_count": self.execution_count,
                "memory_bytes": self.memory_bytes()}

    def memory_bytes(self) -> int | None:
        return self.backend.memory_bytes() if self.backend is not None else None
