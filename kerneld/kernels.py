"""One kernel as the manager sees it: its process (or thread), its execution FIFO, its timers.

State machine: starting → idle ⇄ busy → dead (worker gone; executions ended with KernelDied)
or removed (destroyed / terminated / expired). `restart()` goes back through starting with the
same id, namespace, mode, profile, env, filesystem and timeouts.

Every message from the worker (or the in-process thread) arrives in `on_message`; the zygote's
reports (`BootFailed`, `Exited`) in `on_zygote_message`, and so do the exits the manager sees
itself once the zygote has died (the kernel lives on: `spawner.ProcessWatch`). Messages for
an execution other than the running one are dropped: a worker cannot speak out of turn.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

import psutil

import sandbox
from kerneld import lifecycle
from kerneld import protocol as p
from kerneld.backends.inprocess import InProcessBackend, start_inprocess
from kerneld.errors import KernelError, KernelNotFound, KernelStartError, SandboxUnavailable
from kerneld.execution import Execution
from kerneld.permissions import Lowered, lower
from kerneld.permissions.hostdir import HostDir

if TYPE_CHECKING:
    from kerneld.manager import KernelManager

log = logging.getLogger(__name__)

WORKER_SOCKET = "/run/kerneld-worker.sock"   # where the hub's socket appears inside a worker
PROXY_PORT = 3128
_WORKER_EVENTS = p.EVENT_TYPES - {"execution_stalled"}


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
    EXECUTION_STALLED = "execution_stalled"
    KERNEL_DIED = "kernel_died"
    KERNEL_RESTARTED = "kernel_restarted"
    KERNEL_TERMINATED = "kernel_terminated"
    ALL = "*"


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


class _Kernel:
    """Manager-internal record of one kernel."""

    def __init__(self, manager: KernelManager, kernel_id: str, namespace: str | None,
                 mode: KernelMode, options: dict[str, Any]) -> None:
        self.manager, self.id, self.namespace, self.mode = manager, kernel_id, namespace, mode
        self.options = options
        self.status = "starting"
        self.created = time.time()
        self.pid: int | None = None
        self.init_pid: int | None = None
        self.uid: int | None = None
        self.token = b""
        self.cgroup_dirs: tuple[str, ...] = ()
        self.execution_count = 0
        self.queue: collections.deque[Execution] = collections.deque()
        self.current: Execution | None = None
        self.last_activity = time.monotonic()
        self.backend: InProcessBackend | None = None
        self.proxy: Any = None
        self.activated_env: dict[str, str] = {}
        self._hello: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[None] | None = None
        self._init_exited: asyncio.Future[None] | None = None
        self._init_killed = False
        self._boot_failed = False
        self._asks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._restarting = False
        self._restart_lock = asyncio.Lock()
        # the request validated and lowered once (permissions.lower); restart reuses it
        self.lowered: Lowered = lower(
            manager.load_profile(options["profile"]), env=options["env"],
            filesystem=options["filesystem"], permissions=options["permissions"],
            limits=options["limits"], runtime_prefix=self._runtime_prefix())
        self.profile = self.lowered.profile
        self.env: dict[str, str] = dict(self.lowered.env)
        cfg = manager.config
        caller = options.get("caller")
        self.owner = caller.principal if caller is not None else None  # None: this program
        # resolved once into a checked, pinned directory (the worker mounts that very inode)
        self.host_dir: HostDir | None = self.lowered.open_host_dir(
            mount_roots=cfg.mount_roots, caller=caller)
        self.inactivity_timeout: float | None = _first(
            options["inactivity_timeout"], self.profile.inactivity_timeout,
            cfg.inactivity_timeout) or None
        self.max_execution_time: float | None = _first(
            options["max_execution_time"], self.profile.max_execution_time,
            self.profile.limits.wall_seconds,
            cfg.max_execution_time) or None
        self.on_stall: str = self.profile.on_stall or "event"
        self.output_limit = int(self.profile.limits.output or 0)

    # ------------------------------------------------------------------ start / stop

    async def start(self) -> None:
        self.status = "starting"
        if self.mode is KernelMode.IN_PROCESS:
            self.backend = await start_inprocess(self.env, self)
        elif not await self.manager.pool.take(self):
            await self._spawn()
        self.status = "idle"
        self.touch()
        self._start_next()

    def _runtime_prefix(self) -> str:
        return os.path.dirname(os.path.dirname(self.manager.config.runtime_python))

    def build_policy(self, uid: int | None, cgroup_dirs: tuple[str, ...]) -> sandbox.Policy:
        return self.lowered.policy(
            uid=uid, gid=uid, host_env=os.environ, host_dir=self.host_dir,
            cgroup_dirs=cgroup_dirs, bind_files=((self.manager.hub.socket_path, WORKER_SOCKET),),
            proxy_port=PROXY_PORT)

    async def _spawn(self) -> None:
        mgr = self.manager
        confine = mgr.config.confine
        self.uid = mgr.allocate_uid() if confine else None
        if confine and os.geteuid() == 0:
            # m<pid>-: the owning manager's pid, so a later manager can sweep what a killed one
            # left behind (sandbox.cgroups.sweep)
            name = f"m{os.getpid()}-{self.id.replace(':', '_')}-{secrets.token_hex(4)}"
            self.cgroup_dirs = sandbox.cgroups.create(name, self.lowered.limits())
        policy = self.build_policy(self.uid, self.cgroup_dirs)
        if confine:
            missing = sandbox.check(policy, sandbox.probe())
            if missing and policy.enforcement == "strict":
                raise SandboxUnavailable(
                    f"profile {self.profile.name!r} needs what this host cannot enforce: "
                    + "; ".join(missing) + " (set enforcement = \"best-effort\" to run anyway)")
        await self.launch(policy, confine)

    async def launch(self, policy: sandbox.Policy, confine: bool) -> None:
        """Fork a worker with `policy` and wait for its Hello (used by the pool too)."""
        mgr = self.manager
        loop = asyncio.get_running_loop()
        self.token = secrets.token_bytes(16)
        self._hello, self._exited = loop.create_future(), loop.create_future()
        self._boot_failed = False
        mgr.hub.register(self.token, self.on_message)
        forked = await mgr.zygote.fork(
            kernel_id=self.id, token=self.token,
            endpoint=f"ipc://{WORKER_SOCKET}" if confine else mgr.hub.endpoint,
            confine=confine, policy=dataclasses.replace(policy, env=()),
            cwd=policy.mounts[0].source if (policy.mounts and not confine) else None)
        self.pid, self.init_pid = forked.pid, forked.init_pid
        mgr.track_pid(self.pid, self)
        self._init_killed = False
        self._init_exited = loop.create_future() if self.init_pid is not None else None
        if self.init_pid is not None:
            mgr.track_pid(self.init_pid, self)
        await asyncio.wait_for(self._hello, timeout=30)
        self.activated_env = dict(policy.env)
        self.send(p.Activate(self.activated_env))  # ahead of any Execute on the same socket
        if confine and policy.net.mode == "proxy":
            try:
                await self._start_proxy()
            except ProcessLookupError:  # the worker died before its network could be set up
                raise KernelStartError("the worker exited while starting (before its "
                                       "network proxy could be attached)") from None

    async def _start_proxy(self) -> None:
        from kerneld.net.proxy import KernelProxy
        assert self.pid is not None
        self.proxy = KernelProxy(kernel_id=self.id, rules=self.lowered.net_allow,
                                 deny_rules=self.lowered.net_deny)
        await self.proxy.start_in_netns(self.pid, PROXY_PORT)

    async def kill(self) -> None:
        """Kill the whole process tree (or stop the thread) and release what it held."""
        if self.backend is not None:
            await self.backend.kill()
            self.backend = None
        if self.proxy is not None:
            await self.proxy.close()
            self.proxy = None
        self._kill_init()
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.cgroup_dirs:
                await asyncio.to_thread(sandbox.cgroups.kill, self.cgroup_dirs)
            if self._exited is not None and not self._exited.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self._exited), timeout=5)
                except TimeoutError:
                    log.error("worker did not exit after SIGKILL kernel=%s pid=%s", self.id, pid)
            self.manager.track_pid(pid, None)
        await self._wait_init()
        self._release()

    def _kill_init(self) -> None:
        """SIGKILL the kernel's PID 1: the kernel then kills everything in its namespace."""
        if self.init_pid is not None and not self._init_killed:
            self._init_killed = True
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _wait_init(self) -> None:
        """Wait until the zygote has reaped the init: only then is the namespace empty."""
        if self.init_pid is None:
            return
        if self._init_exited is not None and not self._init_exited.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._init_exited), timeout=5)
            except TimeoutError:
                log.error("kernel init did not exit kernel=%s pid=%s", self.id, self.init_pid)
        self.manager.track_pid(self.init_pid, None)
        self.init_pid = None

    def _release(self) -> None:
        if self.token:
            self.manager.hub.unregister(self.token)
            self.token = b""
        if self.cgroup_dirs:
            dirs, self.cgroup_dirs = self.cgroup_dirs, ()
            try:
                sandbox.cgroups.kill(dirs)
                sandbox.cgroups.remove(dirs)
            except OSError as exc:
                log.warning("cgroup cleanup failed kernel=%s error=%s", self.id, exc)
        self.manager.release_uid(self.uid)
        self.uid = None
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
        self.status = "dead"
        self.end_executions(ename, evalue)
        await self.kill()

    async def restart(self) -> None:
        """A fresh worker for this kernel. Restarts queue behind one another (two at once would
        kill each other's new worker); one asked for after a destroy is KernelNotFound."""
        async with self._restart_lock:
            if self.manager.kernel_record(self.id) is not self:
                raise KernelNotFound(f"kernel {self.id} not found")
            await self._restart()

    async def _restart(self) -> None:
        self._restarting = True
        # from here on an execution waits for the new worker: were the status left "idle" or
        # "busy" while the old one is killed, `submit` would hand it to the dying worker and
        # it would never be answered (issue 16: an execute sent during a restart hung)
        self.status = "starting"
        try:
            self.end_executions("KernelRestarted", "the kernel was restarted")
            await self.kill()
            self.created = time.time()
            self.execution_count = 0
            await self.start()
            if self.manager.kernel_record(self.id) is not self:
                # destroyed while the new worker started: it must not outlive its kernel
                raise KernelNotFound(f"kernel {self.id} was destroyed while it restarted")
        except BaseException as exc:
            # the new worker never came up (e.g. its mount was refused): the kernel is dead,
            # not "starting" forever with executions queued behind nothing
            self._restarting = False
            await self.kill()
            if self.manager.kernel_record(self.id) is not self:
                self.status = "dead"  # destroyed while restarting: a normal end, not a failure
                raise KernelNotFound(f"kernel {self.id} was destroyed while it restarted") from None
            reason = f"the restart failed: {exc or type(exc).__name__}"
            log.warning("kernel died kernel=%s reason=%r", self.id, reason)
            self.status = "dead"
            self.end_executions("KernelDied", reason)
            self.manager.dispatch(p.KernelEvent("kernel_died", {
                "kernel_id": self.id, "reason": reason, "exit_code": None, "signal": None},
                self.id))
            raise
        finally:
            self._restarting = False
        self.manager.dispatch(p.KernelEvent("kernel_restarted", {"kernel_id": self.id}, self.id))

    # ------------------------------------------------------------------ messages

    def on_message(self, msg: Any) -> None:
        if isinstance(msg, p.Output):
            current = self.current
            if current is None or msg.exec_id != current.id or msg.type not in _WORKER_EVENTS:
                return
            event = p.KernelEvent(msg.type, msg.data, self.id, current.id)
            current.add(event)
            self.manager.dispatch(event)
        elif isinstance(msg, p.Done):
            self._finish(msg)
        elif isinstance(msg, p.Answer):
            future = self._asks.pop(msg.req_id, None)
            if future is not None and not future.done():
                future.set_result(msg.content)
        elif isinstance(msg, p.Hello) and self._hello is not None and not self._hello.done():
            self._hello.set_result(None)

    def _finish(self, msg: p.Done) -> None:
        current = self.current
        if current is None or msg.exec_id != current.id:
            return
        if msg.result is not None and not current.has_result:
            event = p.KernelEvent("execute_result", msg.result, self.id, current.id)
            current.add(event)
            self.manager.dispatch(event)
        status = msg.status if msg.status in ("ok", "error") else "error"
        if msg.execution_count is not None:
            self.execution_count = msg.execution_count
        current.finish(status, msg.execution_count, msg.result, msg.error)
        self.current = None
        if self.status == "busy":
            self.status = "idle"
        self.touch()
        self._start_next()

    def on_zygote_message(self, msg: Any) -> None:
        if isinstance(msg, p.BootFailed):
            if self._hello is not None and not self._hello.done():
                self._boot_failed = True
                self._hello.set_exception(SandboxUnavailable(
                    f"the kernel could not be confined, so it was not started: {msg.message}"))
            return
        if not isinstance(msg, p.Exited):
            return
        if self.init_pid is not None and msg.pid == self.init_pid:
            if self._init_exited is not None and not self._init_exited.done():
                self._init_exited.set_result(None)
            return  # the init's own exit; the worker's is reported separately
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(None)
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(KernelStartError(
                f"the worker exited while starting ({_describe_exit(msg, False)})"))
            return
        if self._boot_failed:
            return  # the exit that followed BootFailed: the creator has been told why
        if self.pid is None or self._restarting:
            return  # an exit we caused (destroy / restart)
        self.manager.track_pid(self.pid, None)
        self.pid = None
        self._died(_describe_exit(msg, self._oom_killed()), msg.exit_code, _signal_of(msg))

    def _oom_killed(self) -> bool:
        try:
            return bool(self.cgroup_dirs) and sandbox.cgroups.oom_killed(self.cgroup_dirs)
        except OSError:
            return False

    def _died(self, reason: str, exit_code: int | None, sig: int | None) -> None:
        log.warning("kernel died kernel=%s reason=%r", self.id, reason)
        self.status = "dead"
        self._kill_init()  # whatever the worker left running dies with its namespace
        self.end_executions("KernelDied", reason)
        self._release()
        self.manager.dispatch(p.KernelEvent("kernel_died", {
            "kernel_id": self.id, "reason": reason, "exit_code": exit_code, "signal": sig},
            self.id))
        if self.profile.restart_on_death:
            asyncio.ensure_future(self.manager.restart_kernel(self.id))

    # ------------------------------------------------------------------ executions

    def send(self, msg: Any) -> None:
        if self.backend is not None:
            self.backend.send(msg)
        elif self.token:
            self.manager.hub.send(self.token, msg)

    def submit(self, execution: Execution) -> None:
        if self.status == "dead" and not self._restarting:
            execution.fail("KernelDied", f"kernel {self.id} is dead; restart it first")
            return
        self.queue.append(execution)
        self._start_next()

    def _start_next(self) -> None:
        if self.current is not None or not self.queue or self.status not in ("idle", "busy"):
            return
        execution = self.queue.popleft()
        self.current = execution
        self.status = "busy"
        execution.started = time.time()
        execution.started_mono = time.monotonic()
        self.send(p.Execute(execution.id, execution.code, execution.silent,
                            execution.store_history, execution.allow_stdin, self.output_limit))

    def input_reply(self, value: str) -> bool:
        if self.current is None:
            return False
        self.send(p.InputReply(self.current.id, value))
        return True

    async def ask(self, make: Callable[[str], Any]) -> dict[str, Any]:
        """Send a Complete/Inspect/IsComplete built by `make(req_id)`; await its Answer."""
        if self.status == "dead":
            raise KernelError(f"kernel {self.id} is dead; restart it first")
        req_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[req_id] = future
        self.send(make(req_id))
        try:
            return await asyncio.wait_for(future, timeout=60)
        finally:
            self._asks.pop(req_id, None)

    def interrupt(self) -> bool:
        if self.status == "dead":
            return False
        if self.current is None:
            return True
        if self.backend is not None:
            return self.backend.interrupt()
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)
                return True
            except ProcessLookupError:
                return False
        return False

    # ------------------------------------------------------------------ timers

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def clock(self) -> lifecycle.KernelClock:
        current = self.current
        return lifecycle.KernelClock(
            busy=current is not None or bool(self.queue) or self.status == "starting",
            last_activity=self.last_activity, inactivity_timeout=self.inactivity_timeout,
            running_since=current.started_mono if current else None,
            stalled=current.stalled if current else False,
            interrupted_at=current.interrupted_at if current else None,
            max_execution_time=self.max_execution_time, on_stall=self.on_stall,
            stall_grace=self.manager.config.stall_grace)

    def time_until_shutdown(self) -> float | None:
        return lifecycle.time_until_shutdown(self.clock(), time.monotonic())

    async def apply_rules(self, now: float) -> None:
        if self.status == "dead" and not self.inactivity_timeout:
            return
        for action in lifecycle.decide(self.clock(), now):
            await self._perform(action, now)

    async def _perform(self, action: lifecycle.Action, now: float) -> None:
        current = self.current
        if action is lifecycle.Action.EXPIRE:
            await self.manager.expire(self)
        elif action is lifecycle.Action.STALLED and current is not None:
            current.stalled = True
            event = p.KernelEvent("execution_stalled", {
                "kernel_id": self.id, "execution_id": current.id,
                "max_execution_time": self.max_execution_time,
                "actual_runtime": now - (current.started_mono or now),
                "code": current.code, "start_time": current.started}, self.id, current.id)
            current.add(event)
            self.manager.dispatch(event)
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
            await self.manager.force_terminate_kernel(self.id, "execution stalled")

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
                "profile_description": self.profile.description.strip(), "status": self.status,
                "created": dt.datetime.fromtimestamp(self.created, dt.UTC).isoformat(),
                "pid": self.pid, "execution_count": self.execution_count,
                "memory_bytes": self.memory_bytes()}

    def memory_bytes(self) -> int | None:
        if self.cgroup_dirs:
            try:
                value = sandbox.cgroups.memory_current(self.cgroup_dirs)
                if value is not None:
                    return int(value)
            except OSError:
                pass
        if self.pid is None:
            return None
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None


def _signal_of(msg: p.Exited) -> int | None:
    """The signal that ended the worker; the kernel's init reports it as 128 + signo."""
    if msg.signal is None and msg.exit_code is not None and 128 < msg.exit_code < 128 + 65:
        return msg.exit_code - 128
    return msg.signal


def _describe_exit(msg: p.Exited, oom: bool) -> str:
    if oom:
        return "killed by the out-of-memory killer (memory limit reached)"
    sig = _signal_of(msg)
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        extra = " (CPU time limit reached)" if sig == signal.SIGXCPU else ""
        return f"killed by {name}{extra}"
    if msg.exit_code == 70:
        return "could not apply its sandbox (exit code 70)"
    if msg.exit_code is None:  # it outlived its zygote, and we are not its parent
        return "exited (status unknown)"
    return f"exited with code {msg.exit_code}"
