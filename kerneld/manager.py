"""KernelManager: the kernel table, executions, events and lifecycle — embedded or in the daemon.

Process model: a library object living on one asyncio event loop (the caller's, or the
daemon's). Each kernel is a `KernelRecord` (`kerneld.kernel`: its state machine and execution
FIFO) over a `Backend` (`kerneld.backends`): WORKER kernels are processes forked by the zygote
(`backends.worker`, with the host-wide zygote client, worker hub, uid locks and pid routing in
`backends.supervisor`); IN_PROCESS kernels are threads (`backends.inprocess`). Both deliver the
same protocol messages to the record, so one code path tracks executions. Backends come from
one factory (`backends=` of the constructor, for tests and other runtimes); the warm pool
(`kerneld.pool`) hands over started ones.

State: `self._kernels` (id → KernelRecord). Each kernel has a FIFO of executions; exactly one
runs at a time, so events of different executions never interleave. A kernel's creation
options are kept as its `KernelSpec` (`kerneld.ops`), and what they allow is decided once
(`permissions.lower`): a restart starts the same again.

Liveness: a worker's exit is reported by the zygote (`Exited`) within milliseconds; every
running and queued execution then ends with `execute_error` `KernelDied`. A ticker
(`_tick`, 10 Hz) applies inactivity and stall rules from `lifecycle.decide`.
A zygote that dies takes no kernel with it: from then on the supervisor watches those kernels'
processes itself (`supervisor.ProcessWatch`, pidfds) and feeds their exits into the same path
as the zygote's reports, so death reasons, events and the pool behave the same; the next
fork starts a new zygote. Under `kerneld serve` (a child subreaper) the orphans are the
daemon's children: it reaps them with their exit status, kills what the dead zygote forked
but never reported, and reaps zombie children nobody waits for on SIGCHLD. Embedded (no
subreaper), the host's reaper gets them and an adopted kernel's exit status is unknown
(reported as exit code and signal None: "status unknown").

Shutdown: `close()` ends every execution with `DaemonShutdown`-style errors, kills every
kernel tree, cancels its background tasks, stops the zygote and removes the worker socket.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Self

from kerneld import protocol as p
from kerneld.access import Caller
from kerneld.backends import Backend, BackendFactory, BackendHost, Launch
from kerneld.backends.supervisor import Supervisor, WorkerHub, ZygoteClient
from kerneld.backends.worker import make_worker
from kerneld.config import ManagerConfig
from kerneld.errors import (
    InvalidArgument,
    KernelError,
    KernelStartError,
    LimitExceeded,
    PermissionDenied,
    kernel_not_found,
    shown,
)
from kerneld.execution import Execution, ExecutionStream
from kerneld.kernel import KernelMode, KernelRecord
from kerneld.ops import KernelSpec
from kerneld.permissions import PROFILE_NAME, Lowered, Profile, load_profile, lower, with_env
from kerneld.pool import Pool

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # always fullmatch: `$` matches before a \n
_ID_RULE = "use 1-128 characters of A-Z a-z 0-9 . _ -"
Listener = Callable[[p.KernelEvent], Any]


class KernelManager:
    """Creates, runs and tracks kernels. All methods run on the manager's event loop.

    `backends`: the factory of every kernel's backend (default: confined workers through the
    zygote, threads for in_process); a unit test passes a fake one and runs no process."""

    def __init__(self, config: ManagerConfig | None = None, *,
                 backends: BackendFactory | None = None) -> None:
        self.config = config or ManagerConfig()
        self._kernels: dict[str, KernelRecord] = {}
        self._listeners: dict[str, list[tuple[str, Listener]]] = {}
        self.supervisor = Supervisor(self.config)
        self._factory: BackendFactory = backends or self._default_backend
        self._supervised = backends is None  # the default factory needs the supervisor
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # listener coroutines, restarts on death
        self._closed = False
        self._profiles: dict[str, Profile] = {}
        self._plain: dict[str, Lowered] = {}  # profile → its lowering for an empty request
        # executions queued or running: per kernel [count, code bytes], and for all kernels
        self._queued: dict[KernelRecord, list[int]] = {}
        self._queued_total = [0, 0]
        self.pool = Pool(self)
        self.started = time.time()

    # ------------------------------------------------------------------ infrastructure

    async def _ensure_infrastructure(self) -> None:
        if self._closed:
            raise KernelError("the kernel manager is closed")
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="kerneld-lifecycle")
        if self._supervised:
            await self.supervisor.start()
        if self.config.pool_size and not self.pool.states:
            self.pool.configure()

    async def start(self) -> None:
        """Start the zygote, the worker socket and the warm pool now rather than on the first
        `create_kernel` (the daemon calls this before it reports READY)."""
        await self._ensure_infrastructure()

    @property
    def hub(self) -> WorkerHub:
        return self.supervisor.hub

    @property
    def zygote(self) -> ZygoteClient:
        return self.supervisor.zygote

    def load_profile(self, name: str) -> Profile:
        """A profile by name (or, where allowed, by path), parsed once until `reload_profiles`."""
        if not isinstance(name, str):
            raise InvalidArgument(f"profile must be a string, not {type(name).__name__}")
        if "/" in name or name.endswith(".toml"):
            if not self.config.allow_profile_paths:
                raise _paths_refused(shown(name), self.config.profile_dirs)
            if "\0" in name or len(name) > 4096:
                raise InvalidArgument(f"invalid profile path {shown(name)}: at most 4096 "
                                      "characters, no NUL")
        elif not PROFILE_NAME.fullmatch(name):
            raise InvalidArgument(f"invalid profile name {shown(name)}: use 1-128 characters "
                                  "of A-Z a-z 0-9 . _ -, not starting with . or -")
        profile = self._profiles.get(name)
        if profile is None:
            profile = self._profiles[name] = load_profile(name, self.config.profile_dirs)
        return profile

    def reload_profiles(self) -> None:
        """Forget parsed profiles: new kernels read the files again (running ones keep theirs)."""
        self._profiles.clear()
        self._plain.clear()

    def check_profile(self, profile: str | None = None) -> dict[str, Any]:
        """`kerneld profile check NAME` answered here: the profile a new kernel would get (the
        same lookup, rules and cache as `create_kernel`) and what this host can enforce of it.
        Returns {profile, source, report} (`report`: the text `profile_report` prints)."""
        from kerneld.permissions import profile_report
        loaded = self.load_profile(profile or self.config.default_profile)
        report = profile_report(loaded)
        if not self.config.confine:
            report += ("\nconfine: false: kernels here are NOT confined by this profile "
                       "(development mode)")
        return {"profile": loaded.name, "source": loaded.source, "report": report}

    # ------------------------------------------------------------------ backends

    def _runtime_prefix(self) -> str:
        return os.path.dirname(os.path.dirname(self.config.runtime_python))

    def _default_backend(self, launch: Launch, host: BackendHost) -> Backend:
        if launch.mode == KernelMode.IN_PROCESS:
            from kerneld.backends.inprocess import InProcessBackend  # IPython: only when used
            return InProcessBackend(asyncio.get_running_loop(), dict(launch.lowered.env), host)
        return make_worker(self.supervisor, launch, host, confine=self.config.confine)

    def backend_for(self, kernel: KernelRecord) -> Backend:
        """`KernelHost`: the kernel's backend, from the warm pool when one qualifies."""
        launch = Launch(kernel.id, kernel.mode.value, kernel.lowered, kernel.host_dir)
        if kernel.mode is KernelMode.WORKER:
            assert kernel.spec.profile is not None
            pooled = self.pool.take(kernel.spec.profile, launch, kernel)
            if pooled is not None:
                return pooled
        return self._factory(launch, kernel)

    # PoolHost: what the pool needs from here

    @property
    def workers_started(self) -> bool:
        return self.supervisor.started or not self._supervised

    @property
    def zygote_deaths(self) -> int:
        return self.supervisor.deaths

    def pool_launch(self, profile: str) -> Launch:
        lowered = self._lower(profile)
        host_dir = lowered.open_host_dir(mount_roots=self.config.mount_roots, caller=None)
        return Launch(f"pool+{profile}", KernelMode.WORKER.value, lowered, host_dir)

    def _lower(self, profile: str, env: dict[str, str] | None = None,
               filesystem: dict[str, Any] | None = None,
               permissions: dict[str, Any] | None = None,
               limits: dict[str, Any] | None = None) -> Lowered:
        """`permissions.lower` of a request for `profile`. A request that narrows nothing (the
        common case, and every pooled backend) lowers the same way each time until the
        profiles are reloaded: that result is kept and shared (a `Lowered` is frozen), and a
        request's `env` only replaces its env (so the pool compares the same objects)."""
        if filesystem is not None or permissions is not None or limits is not None:
            return lower(self.load_profile(profile), env=env, filesystem=filesystem,
                         permissions=permissions, limits=limits,
                         runtime_prefix=self._runtime_prefix())
        plain = self._plain.get(profile)
        if plain is None:
            plain = self._plain[profile] = lower(self.load_profile(profile),
                                                 runtime_prefix=self._runtime_prefix())
        return plain if env is None else with_env(plain, env)

    def new_backend(self, launch: Launch, host: BackendHost) -> Backend:
        return self._factory(launch, host)

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        """Run `coro` in the background: kept until it ends, cancelled by `close()`; its
        failure is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, what))

    def _task_done(self, what: str, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed task=%r error=%r", what, task.exception())

    # ------------------------------------------------------------------ creation

    async def create_kernel(
        self, id: str | None = None, namespace: str | None = None,
        mode: KernelMode | str = KernelMode.WORKER, profile: str | None = None,
        env: dict[str, str] | None = None, filesystem: dict[str, Any] | None = None,
        permissions: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
        inactivity_timeout: float | None = None, max_execution_time: float | None = None,
        *, caller: Caller | None = None,
    ) -> str:
        """Create a kernel and wait until it is ready; returns its id (SPEC: Kernel ids).

        `caller`: who asked, when that is not this program (the daemon passes its client's
        peer credentials): a requested `filesystem.root` is then opened and checked with the
        caller's rights (`kerneld.permissions.hostdir`), so a request never mounts what its
        caller could not read or write itself."""
        kernel_id = self._new_id(id, namespace)
        _check_seconds("inactivity_timeout", inactivity_timeout,
                       "0: never; null: the profile's or the configured default")
        _check_seconds("max_execution_time", max_execution_time,
                       "0: no limit; null: the profile's or the configured default")
        if profile is not None:
            self.load_profile(profile)  # a bad name fails here, before anything is set up
        mode = _mode(mode)
        if mode is KernelMode.IN_PROCESS:
            if not self.config.allow_in_process:
                raise PermissionDenied("in_process kernels are disabled here "
                                       "(allow_in_process = false in the daemon config)")
            if filesystem:
                raise InvalidArgument(
                    "filesystem is not supported for in_process kernels: they share this "
                    "program's filesystem view (nothing would be mounted); use mode \"worker\"")
        if len(self._kernels) >= self.config.max_kernels:
            raise LimitExceeded(f"kernel limit reached (max_kernels = {self.config.max_kernels})")
        spec = KernelSpec(
            id=id, namespace=namespace, mode=mode.value,
            profile=profile or self.config.default_profile, env=env, filesystem=filesystem,
            permissions=permissions, limits=limits, inactivity_timeout=inactivity_timeout,
            max_execution_time=max_execution_time)
        assert spec.profile is not None
        # validated and lowered once (the only check of env, filesystem, permissions, limits)
        lowered = self._lower(spec.profile, env, filesystem, permissions, limits)
        # resolved once into a checked, pinned directory (the worker mounts that very inode)
        host_dir = lowered.open_host_dir(mount_roots=self.config.mount_roots, caller=caller)
        kernel = KernelRecord(self, kernel_id, spec, mode, lowered, host_dir=host_dir,
                              owner=caller.principal if caller is not None else None)
        self._kernels[kernel_id] = kernel
        try:
            if mode is KernelMode.WORKER:
                await self._ensure_infrastructure()
            elif self._ticker is None:
                self._ticker = asyncio.create_task(self._tick(), name="kerneld-lifecycle")
            await kernel.start()
        except BaseException:
            self._kernels.pop(kernel_id, None)
            await kernel.kill()
            raise
        return kernel_id

    def _new_id(self, id: str | None, namespace: str | None) -> str:
        if id is None:
            base = str(uuid.uuid4())
        elif not isinstance(id, str) or not _ID_RE.fullmatch(id):
            raise InvalidArgument(f"invalid kernel id {shown(id)}: {_ID_RULE}")
        else:
            base = id
        if namespace is not None:
            if not isinstance(namespace, str) or not _ID_RE.fullmatch(namespace):
                raise InvalidArgument(f"invalid namespace {shown(namespace)}: {_ID_RULE}")
            base = f"{namespace}:{base}"
        if base in self._kernels:
            raise InvalidArgument(f"Kernel with ID {base} already exists")
        return base

    # ------------------------------------------------------------------ lookup

    def _get(self, kernel_id: str) -> KernelRecord:
        kernel = self._kernels.get(kernel_id) if isinstance(kernel_id, str) else None
        if kernel is None:
            raise kernel_not_found(kernel_id)
        return kernel

    def get_kernel(self, kernel_id: str) -> Kernel:
        self._get(kernel_id)
        return Kernel(self, kernel_id)

    def get_kernel_ids(self) -> list[str]:
        return list(self._kernels)

    def kernel_record(self, kernel_id: str) -> KernelRecord | None:
        """The record registered under `kernel_id` now (None once destroyed)."""
        return self._kernels.get(kernel_id)

    def owner_of(self, kernel_id: str) -> str | None:
        """The principal of the caller that created the kernel (`Caller.principal`), None
        for this program's own (and root's); KernelNotFound if there is no such kernel."""
        return self._get(kernel_id).owner

    def list_kernels(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [k.describe() for k in self._kernels.values()
                if namespace is None or k.namespace == namespace]

    # ------------------------------------------------------------------ execution

    def execute_stream(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
                       silent: bool = False, store_history: bool = True,
                       user_expressions: dict[str, str] | None = None) -> ExecutionStream:
        execution = self._submit(kernel_id, code, allow_stdin, silent, store_history, True,
                                 user_expressions)
        return ExecutionStream(execution)

    async def execute(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
                      silent: bool = False, store_history: bool = True,
                      user_expressions: dict[str, str] | None = None) -> p.ExecutionResult:
        execution = self._submit(kernel_id, code, allow_stdin, silent, store_history, False,
                                 user_expressions)
        return await execution.future

    def submit(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
               silent: bool = False, store_history: bool = True,
               user_expressions: dict[str, str] | None = None,
               ) -> asyncio.Future[p.ExecutionResult]:
        """Queue an execution now and return the future of its result (what `execute` awaits);
        for callers such as the daemon that answer from a done-callback."""
        return self._submit(kernel_id, code, allow_stdin, silent, store_history, False,
                            user_expressions).future

    def send_comm(self, kernel_id: str, msg_type: str, content: dict[str, Any],
                  metadata: dict[str, Any] | None = None,
                  buffers: list[bytes] | None = None) -> ExecutionStream:
        """A front end's comm_open / comm_msg / comm_close for the kernel's CommManager.

        Queued in the kernel's FIFO with its executions (as ipykernel's shell queues them),
        and counted like one against the queue limits; the stream's events are what the
        kernel's comm handler emitted (its output, the comm messages it sent back), then an
        `ExecutionResult` with status "ok", or "error" with the error of a handler that
        raised, and `execution_count` None. `content` is Jupyter's (`comm_id`; for comm_open
        also `target_name`), `buffers` the message's binary buffers."""
        kernel = self._get(kernel_id)
        request = _comm_request(msg_type, content, metadata, buffers)
        try:
            size = len(p.encode(request))  # buffers included
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(f"send_comm: the message cannot be sent: {exc}") from None
        if size > p.MAX_WORKER_MESSAGE // 2:
            raise LimitExceeded(f"send_comm: a comm message of {size} bytes exceeds the limit "
                                f"of {p.MAX_WORKER_MESSAGE // 2} bytes")
        self._admit(kernel, size)
        execution = Execution(kernel.id, "", allow_stdin=False, silent=True,
                              store_history=False, streaming=True, comm=request)
        self._queue(kernel, execution, size)
        return ExecutionStream(execution)

    def _submit(self, kernel_id: str, code: str, allow_stdin: bool, silent: bool,
                store_history: bool, streaming: bool,
                user_expressions: dict[str, str] | None = None) -> Execution:
        kernel = self._get(kernel_id)
        if not isinstance(code, str):
            raise InvalidArgument(f"code must be a string, not {type(code).__name__}")
        size = len(code) if code.isascii() else len(code.encode("utf-8", "surrogatepass"))
        if user_expressions:
            size += _expressions_size(user_expressions)
        if size > p.MAX_CODE_BYTES:
            raise LimitExceeded(f"code is larger than the limit of {p.MAX_CODE_BYTES} bytes"
                                + (" (with its user_expressions)" if user_expressions else ""))
        self._admit(kernel, size)
        execution = Execution(kernel.id, code, allow_stdin=bool(allow_stdin),
                              silent=bool(silent), store_history=bool(store_history),
                              streaming=streaming, user_expressions=user_expressions or None)
        self._queue(kernel, execution, size)
        return execution

    def _queue(self, kernel: KernelRecord, execution: Execution, size: int) -> None:
        for counts in (self._queued.setdefault(kernel, [0, 0]), self._queued_total):
            counts[0] += 1
            counts[1] += size
        execution.future.add_done_callback(functools.partial(self._unqueue, kernel, size))
        kernel.submit(execution)

    def _admit(self, kernel: KernelRecord, size: int) -> None:
        """LimitExceeded, naming the limit, unless one more execution of `size` bytes of code
        fits the queue limits (executions queued or running, per kernel and in all)."""
        cfg = self.config
        count, queued = self._queued.get(kernel, (0, 0))
        total, total_bytes = self._queued_total
        if count >= cfg.max_queued_executions:
            raise LimitExceeded(
                f"kernel {kernel.id} has {count} executions queued or running, the limit "
                f"(max_queued_executions = {cfg.max_queued_executions}); retry when some end")
        if queued + size > cfg.max_queued_code:
            raise LimitExceeded(
                f"kernel {kernel.id} has {queued} bytes of code queued; {size} more would "
                f"exceed the limit (max_queued_code = {cfg.max_queued_code} bytes)")
        if total >= cfg.max_queued_executions_total:
            raise LimitExceeded(
                f"{total} executions are queued or running on all kernels, the limit "
                f"(max_queued_executions_total = {cfg.max_queued_executions_total}); "
                "retry later")
        if total_bytes + size > cfg.max_queued_code_total:
            raise LimitExceeded(
                f"{total_bytes} bytes of code are queued on all kernels; {size} more would "
                f"exceed the limit (max_queued_code_total = {cfg.max_queued_code_total} bytes)")

    def _unqueue(self, kernel: KernelRecord, size: int, _future: object) -> None:
        counts = self._queued.get(kernel)
        if counts is not None:
            counts[0] -= 1
            counts[1] -= size
            if counts[0] <= 0:
                del self._queued[kernel]
        self._queued_total[0] -= 1
        self._queued_total[1] -= size

    def queued_executions(self) -> tuple[int, int]:
        """(executions queued or running, bytes of their code), all kernels together."""
        return self._queued_total[0], self._queued_total[1]

    def input_reply(self, kernel_id: str, value: str) -> bool:
        return self._get(kernel_id).input_reply(str(value))

    async def complete(self, kernel_id: str, code: str,
                       cursor_pos: int | None = None) -> dict[str, Any]:
        _introspected("complete", code)
        pos = _cursor(code, cursor_pos)
        return await self._get(kernel_id).ask(lambda r: p.Complete(r, code, pos))

    async def inspect(self, kernel_id: str, code: str, cursor_pos: int | None = None,
                      detail_level: int = 0) -> dict[str, Any]:
        _introspected("inspect", code)
        pos = _cursor(code, cursor_pos)
        return await self._get(kernel_id).ask(
            lambda r: p.Inspect(r, code, pos, int(detail_level)))

    async def is_complete(self, kernel_id: str, code: str) -> dict[str, Any]:
        _introspected("is_complete", code)
        return await self._get(kernel_id).ask(lambda r: p.IsComplete(r, code))

    async def history(self, kernel_id: str, hist_access_type: str = "tail",
                      output: bool = False, raw: bool = True, session: int = 0,
                      start: int = 0, stop: int | None = None, n: int | None = None,
                      pattern: str | None = None, unique: bool = False) -> dict[str, Any]:
        """Jupyter's history_reply content: `{"status": "ok", "history": [[session, line,
        input], ...]}` (with `output`: `[session, line, [input, output]]`), oldest first.

        The kernel keeps its newest `protocol.HISTORY_LIMIT` cells in memory
        (`kerneld.runtime.history`); "tail" gives the last `n`, "range" lines `start` ≤ line <
        `stop` of `session` (0: the current one; the only one a kernel has), "search" the
        cells whose raw input matches the glob `pattern` (`unique`: newest of equal inputs;
        `n`: the last n). Answered between executions, as `complete` is."""
        if hist_access_type not in ("tail", "range", "search"):
            raise InvalidArgument(f"history: unknown hist_access_type {shown(hist_access_type)} "
                                  "(use 'tail', 'range' or 'search')")
        for name, value in (("session", session), ("start", start), ("stop", stop), ("n", n)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidArgument(f"history: {name} must be an integer, not "
                                      f"{type(value).__name__}")
        if pattern is not None:
            _introspected("history", pattern)
        kernel = self._get(kernel_id)
        return await kernel.ask(lambda r: p.History(
            r, hist_access_type, bool(output), bool(raw), session, start, stop, n, pattern,
            bool(unique)))

    async def comm_info(self, kernel_id: str, target_name: str | None = None
                        ) -> dict[str, Any]:
        """Jupyter's comm_info_reply content: `{"status": "ok", "comms": {comm_id:
        {"target_name": ...}}}`, the kernel's open comms (of one target, if given)."""
        if target_name is not None and not isinstance(target_name, str):
            raise InvalidArgument(f"comm_info: target_name must be a string, not "
                                  f"{type(target_name).__name__}")
        return await self._get(kernel_id).ask(lambda r: p.CommInfo(r, target_name))

    # ------------------------------------------------------------------ events

    def on_kernel_event(self, kernel_id: str, event_type: str, callback: Listener) -> None:
        self._get(kernel_id)
        event_type = str(getattr(event_type, "value", event_type))
        self._listeners.setdefault(kernel_id, []).append((event_type, callback))

    def off_kernel_event(self, kernel_id: str, event_type: str,
                         callback: Listener | None = None) -> None:
        event_type = str(getattr(event_type, "value", event_type))
        entries = self._listeners.get(kernel_id, [])
        self._listeners[kernel_id] = [
            (t, cb) for t, cb in entries
            if not (t == event_type and (callback is None or cb == callback))]

    def dispatch(self, event: p.KernelEvent) -> None:
        """Deliver one event to the listeners of its kernel (errors are logged, not raised)."""
        for event_type, callback in list(self._listeners.get(event.kernel_id, ())):
            if event_type != "*" and event_type != event.type:
                continue
            try:
                outcome = callback(event)
                if inspect.isawaitable(outcome):
                    self.spawn(outcome, f"listener of {event.type}")  # type: ignore[arg-type]
            except Exception:
                log.exception("event listener failed kernel=%s event=%s",
                              event.kernel_id, event.type)

    # ------------------------------------------------------------------ lifecycle

    async def destroy_kernel(self, kernel_id: str) -> None:
        kernel = self._get(kernel_id)
        self._kernels.pop(kernel_id, None)
        await kernel.destroy("KernelDestroyed", "the kernel was destroyed")
        self._listeners.pop(kernel_id, None)

    async def destroy_all(self, namespace: str | None = None) -> int:
        ids = [k.id for k in self._kernels.values()
               if namespace is None or k.namespace == namespace]
        await asyncio.gather(*(self.destroy_kernel(i) for i in ids), return_exceptions=True)
        return len(ids)

    def interrupt_kernel(self, kernel_id: str) -> bool:
        kernel = self._kernels.get(kernel_id)
        return kernel.interrupt() if kernel is not None else False

    async def restart_kernel(self, kernel_id: str) -> bool:
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            return False
        await kernel.restart()
        return True

    async def force_terminate_kernel(self, kernel_id: str, reason: str | None = None) -> bool:
        kernel = self._get(kernel_id)
        reason = reason or "force-terminated"
        self._kernels.pop(kernel_id, None)
        await kernel.destroy("KernelForcedTermination", reason)
        self.dispatch(p.KernelEvent("kernel_terminated", {"kernel_id": kernel_id,
                                                          "reason": reason}, kernel_id))
        self._listeners.pop(kernel_id, None)
        return True

    def ping_kernel(self, kernel_id: str) -> bool:
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            return False
        kernel.touch()
        return True

    def set_inactivity_timeout(self, kernel_id: str, timeout: float | None) -> bool:
        _check_seconds("timeout", timeout, "0 or null: never")
        kernel = self._kernels.get(kernel_id)
        if kernel is None:
            return False
        kernel.inactivity_timeout = float(timeout) if timeout else None
        kernel.touch()
        return True

    def get_inactivity_timeout(self, kernel_id: str) -> float | None:
        return self._get(kernel_id).inactivity_timeout

    def get_time_until_shutdown(self, kernel_id: str) -> float | None:
        return self._get(kernel_id).time_until_shutdown()

    def get_execution_info(self, kernel_id: str) -> dict[str, Any]:
        return self._get(kernel_id).execution_info()

    def get_ongoing_execution_count(self, kernel_id: str) -> int:
        return int(self._get(kernel_id).execution_info()["count"])

    def get_stuck_executions(self, kernel_id: str) -> list[dict[str, Any]]:
        return [e for e in self._get(kernel_id).execution_info()["executions"] if e["is_stuck"]]

    def get_pool_stats(self) -> dict[str, Any]:
        return self.pool.stats()

    def counts(self) -> dict[str, int]:
        """Kernels by status (cheap: no process is inspected)."""
        out: dict[str, int] = {}
        for kernel in self._kernels.values():
            status = kernel.status.value
            out[status] = out.get(status, 0) + 1
        return out

    def reconfigure(self, config: ManagerConfig) -> None:
        """Adopt a new config (SIGHUP): new kernels get the new settings and re-read their
        profiles; running kernels keep theirs; pool targets follow (idle extras are dropped).
        The runtime interpreter and preload list only change with a new zygote (restart)."""
        self.config = config
        self.supervisor.config = config
        self.reload_profiles()
        self.pool.configure()

    async def _tick(self) -> None:
        while not self._closed:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for kernel in list(self._kernels.values()):
                try:
                    await kernel.apply_rules(now)
                except Exception:
                    log.exception("lifecycle rules failed kernel=%s", kernel.id)

    async def expire(self, kernel: KernelRecord) -> None:
        """Inactivity timeout reached: destroy and tell listeners."""
        if self._kernels.get(kernel.id) is not kernel:
            return
        log.info("kernel expired kernel=%s timeout=%s", kernel.id, kernel.inactivity_timeout)
        self._kernels.pop(kernel.id, None)
        await kernel.destroy("KernelTerminated", "inactivity timeout")
        self.dispatch(p.KernelEvent("kernel_terminated", {
            "kernel_id": kernel.id, "reason": "inactivity timeout"}, kernel.id))
        self._listeners.pop(kernel.id, None)

    # ------------------------------------------------------------------ shutdown

    async def close(self, reason: str = "the kernel manager is shutting down") -> None:
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        kernels = list(self._kernels.values())
        self._kernels.clear()
        await asyncio.gather(*(k.destroy("DaemonShutdown", reason) for k in kernels),
                             return_exceptions=True)
        await self.pool.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.supervisor.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Kernel:
    """A handle on one kernel: the seed's `kernel` object (`execute`, `interrupt`, ...).

    Returned by `KernelManager.get_kernel` and by the module-level `create_kernel()`, which
    owns a private manager that `close()` shuts down with the kernel.
    """

    def __init__(self, manager: KernelManager, kernel_id: str, *, owns_manager: bool = False):
        self.manager, self.id, self._owns = manager, kernel_id, owns_manager

    @property
    def info(self) -> dict[str, Any]:
        return self.manager._get(self.id).describe()

    async def execute(self, code: str, **kw: Any) -> p.ExecutionResult:
        return await self.manager.execute(self.id, code, **kw)

    def execute_stream(self, code: str, **kw: Any) -> ExecutionStream:
        return self.manager.execute_stream(self.id, code, **kw)

    def interrupt(self) -> bool:
        return self.manager.interrupt_kernel(self.id)

    async def restart(self) -> bool:
        return await self.manager.restart_kernel(self.id)

    def input_reply(self, value: str) -> bool:
        return self.manager.input_reply(self.id, value)

    async def close(self) -> None:
        if self.id in self.manager._kernels:
            await self.manager.destroy_kernel(self.id)
        if self._owns:
            await self.manager.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _paths_refused(shown: str, dirs: tuple[str, ...]) -> PermissionDenied:
    """Why `profile=PATH` is refused here, and how to allow it (a default daemon refuses
    paths: clients must not bring their own permissions)."""
    where = f" ({', '.join(dirs)})" if dirs else ""
    return PermissionDenied(
        f"profile {shown}: this daemon accepts profile names, not paths "
        f"(allow_profile_paths = false); copy the file into one of its profile directories"
        f"{where} and pass its name, or "
        "set allow_profile_paths = true under [kernels] in the daemon's config "
        "(KERNELD_KERNELS_ALLOW_PROFILE_PATHS=true) and reload it")


def _check_seconds(name: str, value: object, meaning: str) -> None:
    """A timeout argument: None or a finite number of seconds >= 0 (NaN, inf and negative
    numbers would silently mean "never" or "at once")."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise InvalidArgument(f"{name} must be a finite number of seconds >= 0 ({meaning}), "
                              f"got {shown(value)}")


MAX_INTROSPECTED_CODE = 64 * 1024  # characters of code complete/inspect/is_complete take
COMM_MSG_TYPES = ("comm_open", "comm_msg", "comm_close")


def _expressions_size(user_expressions: object) -> int:
    """Bytes of a request's `user_expressions` ({name: expression}, both str); counted with
    its code against the code limits."""
    if not isinstance(user_expressions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in user_expressions.items()):
        raise InvalidArgument("user_expressions must be a dict of str names to str "
                              "expressions")
    return sum(len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass"))
               for k, v in user_expressions.items())


def _comm_request(msg_type: object, content: object, metadata: object,
                  buffers: object) -> p.CommRequest:
    """A `send_comm` request, checked: a known message type, Jupyter content naming its comm
    (and the target of a comm_open), bytes buffers."""
    if msg_type not in COMM_MSG_TYPES:
        raise InvalidArgument(f"send_comm: unknown msg_type {shown(msg_type)} "
                              f"(use {', '.join(repr(t) for t in COMM_MSG_TYPES)})")
    if not isinstance(content, dict) or not isinstance(content.get("comm_id"), str):
        raise InvalidArgument("send_comm: content must be a dict with a str comm_id "
                              "(Jupyter's comm message content)")
    if msg_type == "comm_open" and not isinstance(content.get("target_name"), str):
        raise InvalidArgument("send_comm: the content of a comm_open needs a str target_name")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidArgument(f"send_comm: metadata must be a dict, not "
                              f"{type(metadata).__name__}")
    if buffers is not None and (not isinstance(buffers, list) or not all(
            isinstance(b, bytes | bytearray | memoryview) for b in buffers)):
        raise InvalidArgument("send_comm: buffers must be a list of bytes")
    return p.CommRequest("", str(msg_type), content, metadata or {},
                         [bytes(b) for b in buffers or ()])


def _introspected(op: str, code: str) -> None:
    """A question about code is bounded: IPython's transformers and jedi hold hundreds of
    bytes per character (is_complete on 1 MiB of short lines peaked at 1 GiB, and the kernel
    was OOM-killed under its memory limit: a question must never end a kernel)."""
    if isinstance(code, str) and len(code) > MAX_INTROSPECTED_CODE:
        raise InvalidArgument(f"{op}: code of {len(code)} characters exceeds the limit of "
                              f"{MAX_INTROSPECTED_CODE} for completion and inspection")


def _cursor(code: str, cursor_pos: int | None) -> int:
    """A cursor position in `code` (characters): 0..len(code); None means the end."""
    if cursor_pos is None:
        return len(code)
    if (isinstance(cursor_pos, bool) or not isinstance(cursor_pos, int)
            or not 0 <= cursor_pos <= len(code)):
        raise InvalidArgument(f"cursor_pos must be an integer in 0..len(code) = 0..{len(code)}, "
                              f"got {shown(cursor_pos)}")
    return cursor_pos


def _mode(mode: KernelMode | str) -> KernelMode:
    try:
        return KernelMode(getattr(mode, "value", mode))
    except ValueError:
        raise InvalidArgument(f"unknown kernel mode {mode!r}: use 'worker' or 'in_process'")


def create_kernel_manager(config: ManagerConfig | None = None) -> KernelManager:
    return KernelManager(config)


async def create_kernel(config: ManagerConfig | None = None, **options: Any) -> Kernel:
    """A standalone kernel with its own manager (the seed's `createKernel`)."""
    manager = KernelManager(config)
    try:
        kernel_id = await manager.create_kernel(**options)
    except BaseException:
        await manager.close()
        raise
    return Kernel(manager, kernel_id, owns_manager=True)


__all__ = [
    "Kernel",
    "KernelManager",
    "KernelStartError",
    "create_kernel",
    "create_kernel_manager",
]
