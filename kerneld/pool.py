"""The warm pool: idle worker backends, already forked and confined, waiting for a kernel.

A pooled backend is started from its profile lowered for an empty request (`lower(profile)`:
its own uid, cgroup, namespaces, Landlock, seccomp, mount, proxy) and warmed up; only the
environment is left to give. `take()` hands one to a new kernel by `attach` (the backend
reports to the kernel's record from then on) and `activate(env)` (pipelined before the first
execution), so serving from the pool costs no round trip. Pooled backends serve exactly one
kernel and are never reused; the pool refills in the background.

Which requests qualify: those whose lowering, the caller's environment aside, equals the
pooled one (the "template"): the same profile file, no mount of the request's own, nothing
narrowed. Anything else is started fresh, transparently. Templates are computed once per
profile and again after a reload, when idle backends confined by an outdated one are dropped
(a new kernel gets the profile as it is now, never a stale pooled policy).

Idle backends outlive a zygote that dies, as kernels do (the supervisor watches them); starts
that the death failed refill the pool through the next zygote.

`PoolState` is the pure part (counts → how many to start); `Pool` does the I/O through a
`PoolHost` (the manager). `repr(pool)` is a one-line status for logs, `kerneld status` and
systemd's STATUS=.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kerneld import protocol as p
from kerneld.errors import KernelStartError

if TYPE_CHECKING:
    from kerneld.backends import Backend, BackendHost, ExitInfo, Launch
    from kerneld.config import ManagerConfig
    from kerneld.permissions import Lowered

log = logging.getLogger(__name__)

REFILL_DELAY = 0.05  # seconds between serving from the pool and starting its replacement

# Throwaway cells run by each pooled worker before it waits, as (code, silent,
# store_history): a first cell's copy-on-write faults (the engine, history, display hook,
# formatters and result path: ~115 pages) are paid here, not by the kernel the
# worker will serve, whose first `1+1` then faults as few pages as a later one. The second
# cell undoes what the first left (Out, `_`, `_1`, `_i1`, the history session, the count), so
# a pooled kernel starts as a fresh one: In[1], empty `_` and Out. Not `shell.reset()`, as the
# zygote's warm-up (Engine.warm) does: in a forked worker a full reset rebuilds the namespaces
# and aliases and runs gc.collect(), writing (copying) pages shared with the zygote: 0.43 MiB
# more USS per pooled kernel (6.63 against 6.20 MiB, measured).
WARM_CELLS = (
    ("1+1", False, True),
    (("_ip = get_ipython(); _h = _ip.displayhook; _h._ = _h.__ = _h.___ = ''; _ip.user_ns['_oh']"
      ".clear(); _ip.history_manager.reset(new_session=True); _ip.execution_count = 1\n"
      "for _k in ('_', '__', '___', '_1', '_i1', '_h', '_k'): _ip.user_ns.pop(_k, None)\n"
      "del _ip"), True, False),
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


class PoolHost(Protocol):
    """What the pool needs from its manager."""

    @property
    def config(self) -> ManagerConfig:
        """Pool targets (`pool_profiles`, `pool_size`) and `confine`, read live."""

    @property
    def workers_started(self) -> bool:
        """Whether worker backends can be started now (the supervisor is up)."""

    @property
    def zygote_deaths(self) -> int:
        """Zygotes that died on their own so far."""

    def pool_launch(self, profile: str) -> Launch:
        """A pooled backend's launch: `profile` lowered for an empty request."""

    def new_backend(self, launch: Launch, host: BackendHost) -> Backend:
        """A worker backend (not started), attached to `host`."""


def template(lowered: Lowered) -> Lowered:
    """What a pooled backend must have been started with to serve a kernel lowered so: the
    same lowering, the caller's env aside (that is given by `activate`)."""
    return dataclasses.replace(lowered, env={}) if lowered.env else lowered


class _Slot:
    """The pool's `BackendHost` for one pooled backend: its warm-up's replies while it warms
    up, its death while it waits."""

    def __init__(self, pool: Pool, name: str, launch: Launch) -> None:
        self.pool, self.name, self.launch = pool, name, launch
        self.backend: Backend | None = None
        self._waiting: tuple[str, asyncio.Future[None]] | None = None

    def on_message(self, msg: Any) -> None:
        waiting = self._waiting
        if (isinstance(msg, p.Done) and waiting is not None and msg.exec_id == waiting[0]
                and not waiting[1].done()):
            waiting[1].set_result(None)

    def on_exit(self, info: ExitInfo) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting[1].done():
            waiting[1].set_exception(KernelStartError(f"the worker died while warming up: "
                                                      f"{info.reason}"))
        else:
            self.pool._lost(self)

    async def warm(self, output_limit: int) -> None:
        assert self.backend is not None
        loop = asyncio.get_running_loop()
        for code, silent, history in WARM_CELLS:
            exec_id = uuid.uuid4().hex
            self._waiting = (exec_id, loop.create_future())
            self.backend.send(p.Execute(exec_id, code, silent, history, False, output_limit))
            await self._waiting[1]
        self._waiting = None


class Pool:
    def __init__(self, host: PoolHost) -> None:
        self.host = host
        self.states: dict[str, PoolState] = {}
        self.idle: dict[str, collections.deque[_Slot]] = {}
        self._launches: dict[str, Launch | None] = {}  # profile → its pooled launch (None: bad)
        self._tasks: set[asyncio.Task[None]] = set()   # starts: cancelled on close
        self._kills: set[asyncio.Task[None]] = set()   # kills of dropped backends: awaited
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
        """(Re)read the targets from the host's config and the profiles, drop idle backends
        beyond the targets (profiles no longer pooled get target 0) and those confined by an
        outdated lowering of their profile, and start filling."""
        cfg = self.host.config
        for name, state in self.states.items():
            state.target = 0 if name not in cfg.pool_profiles else cfg.pool_size
        for name in cfg.pool_profiles:
            state = self.states.setdefault(name, PoolState(target=cfg.pool_size))
            state.target = cfg.pool_size
            state.failures = 0
        self._launches.clear()
        for name, state in self.states.items():
            idle = self.idle.get(name)
            while idle and state.idle > state.target:
                self._drop(name, idle[-1])
            current = self._launch_of(name) if idle else None
            for slot in list(idle or ()):
                if current is None or slot.launch.lowered != current.lowered:
                    self._drop(name, slot)
        if self.host.workers_started:
            self.refill()

    def _launch_of(self, name: str) -> Launch | None:
        """The pooled launch of profile `name`, computed once (None if it cannot be lowered:
        a kernel asking for it is then started fresh and gets the error itself)."""
        if name not in self._launches:
            try:
                self._launches[name] = self.host.pool_launch(name)
            except Exception as exc:  # noqa: BLE001 (a bad profile: no pool for it)
                log.error("pool profile cannot be used profile=%s error=%s", name, exc)
                self._launches[name] = None
        return self._launches[name]

    def refill(self) -> None:
        if self._closed or not self.host.config.confine:
            return
        for name, state in self.states.items():
            for _ in range(state.to_start()):
                state.starting += 1
                self._keep(self._tasks, self._start_one(name, state))

    def _keep(self, tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _start_one(self, name: str, state: PoolState) -> None:
        deaths = self.host.zygote_deaths
        slot: _Slot | None = None
        try:
            launch = self._launch_of(name)
            if launch is None:
                raise KernelStartError(f"profile {name!r} cannot be lowered (see above)")
            # `+` is outside the kernel id alphabet: no caller's kernel (nor its listeners)
            # can share the id of a pooled worker running its warm-up cells
            slot = _Slot(self, name, launch)
            slot.backend = self.host.new_backend(launch, slot)
            await slot.backend.start()
            await slot.warm(int(launch.lowered.profile.limits.output or 0))
        except asyncio.CancelledError:
            if slot is not None and slot.backend is not None:
                await slot.backend.kill()
            raise
        except Exception as exc:  # noqa: BLE001 (any failure: count it, kill the worker, go on)
            self._failed(state, deaths)
            log.error("pool worker failed to start profile=%s error=%s", name, exc)
            if slot is not None and slot.backend is not None:
                await slot.backend.kill()
            return
        finally:
            state.starting -= 1
        current = None if self._closed else self._launch_of(name)
        if current is None or current.lowered != launch.lowered:  # closed, or outdated
            await slot.backend.kill()
            if not self._closed:
                self.refill()
            return
        state.failures = 0
        state.idle += 1
        self.idle.setdefault(name, collections.deque()).append(slot)

    def _failed(self, state: PoolState, deaths: int) -> None:
        """Count a failed start. One that a zygote death failed counts once per death (the
        next zygote then gets its chance: refill), so a zygote that dies at every start still
        stops the pool after three, but one kill does not spend the profile's failures."""
        now = self.host.zygote_deaths
        if now == deaths:
            state.failures += 1
            return
        if state.zygote_deaths != now:
            state.zygote_deaths = now
            state.failures += 1
        asyncio.get_running_loop().call_soon(self.refill)  # after `starting` is decremented

    def take(self, name: str, launch: Launch, host: BackendHost) -> Backend | None:
        """A started backend for the kernel `launch` describes (profile `name`), handed over
        to `host`; None if the request does not qualify or no backend is idle."""
        state = self.states.get(name)
        if state is None:
            return None
        pooled = self._launch_of(name)
        if pooled is None or template(launch.lowered) != pooled.lowered:
            return None
        idle = self.idle.get(name)
        if not idle:
            state.missed += 1
            self.refill()
            return None
        slot = idle.popleft()
        state.idle -= 1
        state.served += 1
        backend = slot.backend
        assert backend is not None
        backend.attach(host)
        # the worker was confined for this profile with no caller env; the caller's env
        # (validated by the lowering) goes on top, as the lowering would put it
        backend.activate(launch.lowered.env)
        # refill a moment later: a fork and a confinement compete for the CPUs with the
        # served kernel's first execution, which is what the caller is waiting for
        asyncio.get_running_loop().call_later(REFILL_DELAY, self.refill)
        return backend

    def _lost(self, slot: _Slot) -> None:
        """An idle pooled backend died: drop it (releasing what it held) and start another."""
        idle = self.idle.get(slot.name)
        if idle is not None and slot in idle:
            self._drop(slot.name, slot)
            self.refill()

    def _drop(self, name: str, slot: _Slot) -> None:
        self.idle[name].remove(slot)
        self.states[name].idle -= 1
        if slot.backend is not None:
            self._keep(self._kills, slot.backend.kill())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._kills, return_exceptions=True)
        backends = [s.backend for idle in self.idle.values() for s in idle if s.backend]
        self.idle.clear()
        await asyncio.gather(*(b.kill() for b in backends), return_exceptions=True)
