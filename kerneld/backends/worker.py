"""The worker backend: one kernel as a confined process forked by the zygote.

What one worker holds, and gives back in `kill()`: a kernel uid (host-wide unique: the
supervisor's uid locks), a cgroup with the profile's limits (named `m<manager pid>-...`, so a
later manager can sweep what a killed one left), the sandbox policy it was confined with, a
secret token (its routing id on the supervisor's worker hub), its process and the PID 1 of its
PID namespace (`init_pid`: killing that kills everything the kernel started), and, for
`net = proxy`, the kernel's own network proxy listening inside its network namespace.

Start (`start()`): uid, cgroup, policy (from `Launch.lowered`: the one lowering), the host's
enforcement check, fork through the zygote with the policy minus its environment, wait for the
worker's `Hello`, then `Activate{env}` (environments never pass through the zygote, whose
memory every later worker inherits), then the proxy. `kill()` at any moment makes a start in
progress fail and releases what it took.

Exits: the zygote reports `BootFailed` (the confinement could not be applied: the start fails
with `SandboxUnavailable`) and `Exited` (a start then fails; after it, an exit `kill()` did not
cause is a death: `ExitInfo` with the reason — the out-of-memory killer, a signal such as
SIGXCPU, the sandbox's exit code 70 — to the host's `on_exit`). Once the zygote has died the
supervisor feeds the exits it watches itself into the same path (`supervisor.ProcessWatch`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import signal
from collections.abc import Mapping
from typing import Any

import psutil

import sandbox
from kerneld import protocol as p
from kerneld.backends import BackendHost, ExitInfo, Launch
from kerneld.backends.supervisor import Supervisor
from kerneld.errors import KernelError, KernelStartError, SandboxUnavailable

log = logging.getLogger(__name__)

WORKER_SOCKET = "/run/kerneld-worker.sock"   # where the hub's socket appears inside a worker
PROXY_PORT = 3128
HELLO_TIMEOUT = 30.0  # seconds from the fork request to the worker's Hello


class WorkerBackend:
    """One confined worker process (see the module docstring); made by `make_worker`."""

    def __init__(self, supervisor: Supervisor, launch: Launch, host: BackendHost, *,
                 confine: bool) -> None:
        self.supervisor, self.launch, self.host, self.confine = supervisor, launch, host, confine
        self.pid: int | None = None
        self.init_pid: int | None = None
        self.uid: int | None = None
        self.token = b""
        self.cgroup_dirs: tuple[str, ...] = ()
        self.proxy: Any = None
        self.started_env: dict[str, str] = {}   # what the worker was activated with
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[ExitInfo | None] = loop.create_future()
        self._hello: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] = loop.create_future()       # its Exited was seen
        self._init_gone: asyncio.Future[None] = loop.create_future()  # the init's Exited
        self._forking: asyncio.Future[None] | None = None  # done once the fork has answered
        self._worker_pid: int | None = None
        self._init_killed = False
        self._boot_failed = False
        self._killed = False
        self._started = False

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        if self._started:
            return
        try:
            await self._start()
        except BaseException:
            await self.kill()
            raise
        self._started = True

    async def _start(self) -> None:
        sup, lowered = self.supervisor, self.launch.lowered
        self._check_killed()
        self.uid = sup.allocate_uid() if self.confine else None
        if self.confine and os.geteuid() == 0:
            # m<pid>-: the owning manager's pid, so a later manager can sweep what a killed one
            # left behind (sandbox.cgroups.sweep)
            kid = self.launch.kernel_id.replace(":", "_")
            name = f"m{os.getpid()}-{kid}-{secrets.token_hex(4)}"
            self.cgroup_dirs = sandbox.cgroups.create(name, lowered.limits())
        policy = lowered.policy(
            uid=self.uid, gid=self.uid, host_env=os.environ, host_dir=self.launch.host_dir,
            cgroup_dirs=self.cgroup_dirs, bind_files=((sup.hub.socket_path, WORKER_SOCKET),),
            proxy_port=PROXY_PORT)
        if self.confine:
            missing = sandbox.check(policy, sandbox.probe())
            if missing and policy.enforcement == "strict":
                raise SandboxUnavailable(
                    f"profile {lowered.profile.name!r} needs what this host cannot enforce: "
                    + "; ".join(missing) + " (set enforcement = \"best-effort\" to run anyway)")
        await self._fork(policy)
        self.started_env = dict(policy.env)
        self.send(p.Activate(self.started_env))  # ahead of any Execute on the same socket
        if self.confine and policy.net.mode == "proxy":
            try:
                await self._start_proxy()
            except ProcessLookupError:  # the worker died before its network could be set up
                raise KernelStartError("the worker exited while starting (before its "
                                       "network proxy could be attached)") from None
            self._check_killed()
        if self._gone.done():  # it died after its Hello, before it could serve
            raise KernelStartError("the worker exited while starting")

    async def _fork(self, policy: sandbox.Policy) -> None:
        sup, loop = self.supervisor, asyncio.get_running_loop()
        self.token = secrets.token_bytes(16)
        self._hello = loop.create_future()
        sup.hub.register(self.token, self._before_hello)
        self._forking = loop.create_future()
        try:
            await sup.zygote.fork(
                on_forked=self._on_forked,
                kernel_id=self.launch.kernel_id, token=self.token,
                endpoint=f"ipc://{WORKER_SOCKET}" if self.confine else sup.hub.endpoint,
                confine=self.confine, policy=dataclasses.replace(policy, env=()),
                cwd=policy.mounts[0].source if (policy.mounts and not self.confine) else None)
        finally:
            _resolve(self._forking)
        self._check_killed()
        await asyncio.wait_for(self._hello, timeout=HELLO_TIMEOUT)
        self._check_killed()
        # from now on the hub hands the worker's messages straight to the host (the hot path)
        sup.hub.register(self.token, self.host.on_message)
        sup.hub.register(self.token + p.SIDE_ROUTING_SUFFIX, self._from_side)

    def _on_forked(self, forked: p.Forked) -> None:
        """Route the zygote's reports on the new processes here, before it can send one."""
        self.pid, self.init_pid = forked.pid, forked.init_pid
        self._worker_pid = forked.pid
        self.supervisor.track_pid(forked.pid, self._on_zygote_message)
        if forked.init_pid is not None:
            self.supervisor.track_pid(forked.init_pid, self._on_zygote_message)

    def _check_killed(self) -> None:
        if self._killed:
            raise KernelStartError(f"kernel {self.launch.kernel_id} was stopped while it "
                                   "started")

    async def _start_proxy(self) -> None:
        from kerneld.net.proxy import KernelProxy
        assert self.pid is not None
        lowered = self.launch.lowered
        self.proxy = KernelProxy(kernel_id=self.launch.kernel_id, rules=lowered.net_allow,
                                 deny_rules=lowered.net_deny)
        await self.proxy.start_in_netns(self.pid, PROXY_PORT)

    def _from_side(self, msg: Any) -> None:
        """The worker's side socket carries only comm messages sent by its threads between
        executions (exec_id ""); anything else on it is dropped."""
        if isinstance(msg, p.Output) and msg.exec_id == "":
            self.host.on_message(msg)

    def _before_hello(self, msg: Any) -> None:
        if isinstance(msg, p.Hello) and self._hello is not None and not self._hello.done():
            self._hello.set_result(None)

    # ------------------------------------------------------------------ serving

    def attach(self, host: BackendHost) -> None:
        self.host = host
        if self.token and self._started:
            self.supervisor.hub.register(self.token, host.on_message)

    def activate(self, env: Mapping[str, str]) -> None:
        """The kernel's env over the one the worker was confined with (as the lowering puts
        the caller's env last); a pooled worker was started without one."""
        self.send(p.Activate({**self.started_env, **env}))

    def send(self, msg: Any) -> None:
        if self.token:
            self.supervisor.hub.send(self.token, msg)

    def interrupt(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, signal.SIGINT)
            return True
        except ProcessLookupError:
            return False

    async def pause(self) -> None:
        raise KernelError("pausing a worker kernel is not supported yet")

    async def resume(self) -> None:
        raise KernelError("resuming a worker kernel is not supported yet")

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

    # ------------------------------------------------------------------ exits

    def _on_zygote_message(self, msg: Any) -> None:
        if isinstance(msg, p.BootFailed):
            if self._hello is not None and not self._hello.done():
                self._boot_failed = True
                self._hello.set_exception(SandboxUnavailable(
                    f"the kernel could not be confined, so it was not started: {msg.message}"))
            return
        if not isinstance(msg, p.Exited):
            return
        if msg.pid != self._worker_pid:
            self.supervisor.track_pid(msg.pid, None)
            _resolve(self._init_gone)
            return  # the init's own exit; the worker's is reported separately
        self.supervisor.track_pid(msg.pid, None)
        _resolve(self._gone)
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(KernelStartError(
                f"the worker exited while starting ({describe_exit(msg, False)})"))
            return
        if self._boot_failed or self._killed or not self._started:
            return  # an exit we caused, or one the start has reported already
        self.pid = None
        info = ExitInfo(describe_exit(msg, self._oom_killed()), msg.exit_code, signal_of(msg))
        self._kill_init()  # whatever the worker left running dies with its namespace
        self._release()
        _resolve(self.exited, info)
        self.host.on_exit(info)

    def _oom_killed(self) -> bool:
        try:
            return bool(self.cgroup_dirs) and sandbox.cgroups.oom_killed(self.cgroup_dirs)
        except OSError:
            return False

    # ------------------------------------------------------------------ kill

    async def kill(self) -> None:
        """Kill the whole process tree and release what it held."""
        self._killed = True
        if self._forking is not None and not self._forking.done():
            # a fork on its way: wait for its pid, so the process dies before its uid is free
            await asyncio.shield(self._forking)
        if self.proxy is not None:
            proxy, self.proxy = self.proxy, None
            await proxy.close()
        self._kill_init()
        if self.pid is not None:
            pid, self.pid = self.pid, None
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.cgroup_dirs:
                await asyncio.to_thread(sandbox.cgroups.kill, self.cgroup_dirs)
            if not self._gone.done():
                try:
                    await asyncio.wait_for(asyncio.shield(self._gone), timeout=5)
                except TimeoutError:
                    log.error("worker did not exit after SIGKILL kernel=%s pid=%s",
                              self.launch.kernel_id, pid)
            self.supervisor.track_pid(pid, None)
        await self._wait_init()
        self._release()
        _resolve(self.exited, None)

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
        if not self._init_gone.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._init_gone), timeout=5)
            except TimeoutError:
                log.error("kernel init did not exit kernel=%s pid=%s", self.launch.kernel_id,
                          self.init_pid)
        self.supervisor.track_pid(self.init_pid, None)
        self.init_pid = None

    def _release(self) -> None:
        if self.token:
            self.supervisor.hub.unregister(self.token)
            self.supervisor.hub.unregister(self.token + p.SIDE_ROUTING_SUFFIX)
            self.token = b""
        if self.cgroup_dirs:
            dirs, self.cgroup_dirs = self.cgroup_dirs, ()
            try:
                sandbox.cgroups.kill(dirs)
                sandbox.cgroups.remove(dirs)
            except OSError as exc:
                log.warning("cgroup cleanup failed kernel=%s error=%s", self.launch.kernel_id,
                            exc)
        self.supervisor.release_uid(self.uid)
        self.uid = None


def make_worker(supervisor: Supervisor, launch: Launch, host: BackendHost, *,
                confine: bool) -> WorkerBackend:
    """The worker backend of `launch` (not started: `await backend.start()`)."""
    return WorkerBackend(supervisor, launch, host, confine=confine)


def _resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)


def signal_of(msg: p.Exited) -> int | None:
    """The signal that ended the worker; the kernel's init reports it as 128 + signo."""
    if msg.signal is None and msg.exit_code is not None and 128 < msg.exit_code < 128 + 65:
        return msg.exit_code - 128
    return msg.signal


def describe_exit(msg: p.Exited, oom: bool) -> str:
    if oom:
        return "killed by the out-of-memory killer (memory limit reached)"
    sig = signal_of(msg)
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
