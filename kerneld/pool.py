"""The warm pool: idle workers, already forked and confined, waiting for a kernel to serve.

A pooled worker is confined with its profile's full policy (its own uid, cgroup, namespaces,
Landlock, seccomp) and connected; only the environment is left to give. `take()` hands one to
a new kernel by re-pointing its socket token and pipelining `Activate{env}` before the first
execution, so serving from the pool costs no round trip. Pooled workers serve exactly one
kernel and are never reused; the pool refills in the background.

Requests that change the policy in ways that need a fresh confinement (a filesystem mount,
narrowed permissions or limits, another profile) are created fresh, transparently.

Idle workers outlive a zygote that dies, as kernels do (the manager watches them); starts that
the death failed refill the pool through the next zygote.

`PoolState` is the pure part (counts → how many to start); `Pool` does the I/O.
`repr(pool)` is a one-line status for logs, `kerneld status` and systemd's STATUS=.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kerneld import protocol as p
from kerneld.execution import Execution

if TYPE_CHECKING:
    from kerneld.kernels import _Kernel
    from kerneld.manager import KernelManager

log = logging.getLogger(__name__)

REFILL_DELAY = 0.05  # seconds between serving from the pool and starting its replacement

# Throwaway cells run by each pooled worker before it waits, as (code, silent,
# store_history): a first cell's copy-on-write faults (the engine, history, display hook,
# formatters and result path: ~115 pages) are paid here, not by the kernel the
# worker will serve, whose first `1+1` then faults as few pages as a later one. The second
# cell resets the shell to a new session, exactly as the zygote does after its own warm-up
# (Engine.warm), so a pooled kernel starts as a fresh one: In[1], empty `_` and Out.
WARM_CELLS = (
    ("1+1", False, True),
    ("get_ipython().reset(new_session=True); get_ipython().execution_count = 1", True, False),
)


@dataclass
class PoolState:
    """Counters of one profile's pool."""

    target: int
    idle: int = 0
    starting: int = 0
    served: int = 0
    missed: int = 0
    failures: int = 0
    zygote_deaths: int = 0  # the last zygote death counted as a failure (once per death)

    def to_start(self) -> int:
        """How many workers to start now. Stops after repeated failures (no respawn storm)."""
        if self.failures >= 3:
            return 0
        return max(0, self.target - self.idle - self.starting)


class Pool:
    def __init__(self, manager: KernelManager) -> None:
        self.manager = manager
        self.states: dict[str, PoolState] = {}
        self.idle: dict[str, collections.deque[_Kernel]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        """`pool off` while no profile has a target or workers; else `pool NAME=IDLE/TARGET
        (+STARTING)` for each profile that has (before and after a reload alike: a profile
        whose target became 0 shows until its last worker is gone)."""
        parts = [f"{name}={s.idle}/{s.target}(+{s.starting})" for name, s in self.states.items()
                 if s.target or s.idle or s.starting]
        return "pool " + (" ".join(parts) if parts else "off")

    def stats(self) -> dict[str, Any]:
        return {name: {"target": s.target, "idle": s.idle, "starting": s.starting,
                       "served": s.served, "missed": s.missed, "failures": s.failures}
                for name, s in self.states.items()}

    def configure(self) -> None:
        """(Re)read the targets from the manager's config, drop idle workers beyond them
        (profiles no longer pooled get target 0) and start filling."""
        cfg = self.manager.config
        for name, state in self.states.items():
            state.target = 0 if name not in cfg.pool_profiles else cfg.pool_size
        for name in cfg.pool_profiles:
            state = self.states.setdefault(name, PoolState(target=cfg.pool_size))
            state.target = cfg.pool_size
            state.failures = 0
        for name, state in self.states.items():
            idle = self.idle.get(name)
            while idle and state.idle > state.target:
                state.idle -= 1
                asyncio.ensure_future(idle.pop().kill())
        if self.manager._hub is not None:
            self.refill()

    def refill(self) -> None:
        if self._closed or not self.manager.config.confine:
            return
        for name, state in self.states.items():
            for _ in range(state.to_start()):
                state.starting += 1
                task = asyncio.create_task(self._start_one(name, state))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _start_one(self, profile: str, state: PoolState) -> None:
        from kerneld.kernels import KernelMode, _Kernel
        # `+` is outside the kernel id alphabet: no caller's kernel (nor its listeners)
        # can share the id of a pooled worker running its warm-up cells
        options: dict[str, Any] = {
            "profile": profile, "env": {}, "filesystem": None, "permissions": None,
            "limits": None, "inactivity_timeout": None, "max_execution_time": None}
        worker = _Kernel(self.manager, f"pool+{profile}", None, KernelMode.WORKER, options)
        deaths = self.manager.zygote.deaths
        try:
            await worker._spawn()
            worker.status = "idle"
            for code, silent, history in WARM_CELLS:
                worker.submit(Execution(worker.id, code, allow_stdin=False, silent=silent,
                                        store_history=history, streaming=False))
                assert worker.current is not None
                await worker.current.future
        except asyncio.CancelledError:
            await worker.kill()
            raise
        except Exception as exc:  # noqa: BLE001 (any failure: count it, kill the worker, go on)
            self._failed(state, deaths)
            log.error("pool worker failed to start profile=%s error=%s", profile, exc)
            await worker.kill()
            return
        finally:
            state.starting -= 1
        if self._closed:
            await worker.kill()
            return
        state.failures = 0
        state.idle += 1
        self.idle.setdefault(profile, collections.deque()).append(worker)

    def _failed(self, state: PoolState, deaths: int) -> None:
        """Count a failed start. One that a zygote death failed counts once per death (the
        next zygote then gets its chance: refill), so a zygote that dies at every start still
        stops the pool after three, but one kill does not spend the profile's failures."""
        now = self.manager.zygote.deaths
        if now == deaths:
            state.failures += 1
            return
        if state.zygote_deaths != now:
            state.zygote_deaths = now
            state.failures += 1
        asyncio.get_running_loop().call_soon(self.refill)  # after `starting` is decremented

    async def take(self, kernel: _Kernel) -> bool:
        """Serve `kernel` from the pool if it qualifies and a worker is idle."""
        opts = kernel.options
        state = self.states.get(opts["profile"])
        if state is None or opts["filesystem"] or opts["permissions"] or opts["limits"]:
            return False
        idle = self.idle.get(opts["profile"])
        if not idle:
            state.missed += 1
            self.refill()
            return False
        worker = idle.popleft()
        state.idle -= 1
        state.served += 1
        self._transfer(worker, kernel)
        # refill a moment later: a fork and a confinement compete for the CPUs with the
        # served kernel's first execution, which is what the caller is waiting for
        asyncio.get_running_loop().call_later(REFILL_DELAY, self.refill)
        return True

    def _transfer(self, worker: _Kernel, kernel: _Kernel) -> None:
        """Move the worker's process, identity and confinement onto the kernel."""
        for attr in ("pid", "init_pid", "uid", "token", "cgroup_dirs", "proxy", "_exited",
                     "_init_exited", "_init_killed"):
            setattr(kernel, attr, getattr(worker, attr))
        mgr = self.manager
        mgr.hub.register(kernel.token, kernel.on_message)
        assert kernel.pid is not None
        mgr.track_pid(kernel.pid, kernel)
        if kernel.init_pid is not None:
            mgr.track_pid(kernel.init_pid, kernel)
        # the worker was confined for this profile with no caller env; the caller's env
        # (validated by permissions.lower) goes on top, as Lowered.policy would put it
        kernel.send(p.Activate({**worker.activated_env, **kernel.env}))

    def on_zygote_message(self, msg: Any) -> None:
        """An idle pooled worker exited or failed (its own record already heard it, through
        the manager): drop it, release what it held, start another."""
        pid = getattr(msg, "pid", None)
        for name, idle in self.idle.items():
            for worker in list(idle):
                if worker.pid == pid:
                    idle.remove(worker)
                    self.states[name].idle -= 1
                    asyncio.ensure_future(worker.kill())
                    self.refill()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        workers = [w for idle in self.idle.values() for w in idle]
        self.idle.clear()
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
