"""The warm pool (`kerneld.pool`) against fake backends: no process.

It starts and warms backends up to its target, hands one over with `attach` + `activate`
(the backend is not copied onto the kernel: it reports to the kernel from then on), serves
only requests whose lowering equals the pooled one, and drops backends that died or whose
profile changed on a reload."""

from __future__ import annotations

import asyncio
from typing import Any

from kerneld import protocol as p
from kerneld.backends import ExitInfo, Launch
from kerneld.config import ManagerConfig
from kerneld.errors import KernelStartError
from kerneld.pool import REFILL_DELAY, WARM_CELLS, Pool, template
from tests._fake_backend import FakeFactory, lowered


class PoolHost:
    def __init__(self, profile: str = "") -> None:
        self.config = ManagerConfig(pool_size=2, pool_profiles=("test",))
        self.workers_started = True
        self.zygote_deaths = 0
        self.profile = profile
        self.factory = FakeFactory()

    def pool_launch(self, profile: str) -> Launch:
        assert profile == "test"
        return Launch(f"pool+{profile}", "worker", lowered(self.profile))

    def new_backend(self, launch: Launch, host: Any) -> Any:
        return self.factory(launch, host)


class Sink:
    """A kernel record's stand-in: what the handed-over backend reports."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.exits: list[ExitInfo] = []

    def on_message(self, msg: Any) -> None:
        self.messages.append(msg)

    def on_exit(self, info: ExitInfo) -> None:
        self.exits.append(info)


async def _until(check: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def _filled(host: PoolHost, idle: int = 2) -> Pool:
    pool = Pool(host)
    pool.configure()
    await _until(lambda: pool.states["test"].idle == idle)
    return pool


async def test_the_pool_fills_with_warmed_up_backends() -> None:
    host = PoolHost()
    pool = Pool(host)
    assert repr(pool) == "pool off"
    pool.configure()
    assert repr(pool) == "pool test=0/2(+2)"
    await _until(lambda: pool.states["test"].idle == 2)
    assert repr(pool) == "pool test=2/2(+0)"
    for backend in host.factory.made:
        assert backend.started and backend.launch.kernel_id == "pool+test"
        assert [(e.code, e.silent, e.store_history) for e in backend.executes] == list(WARM_CELLS)
    await pool.close()
    assert all(b.killed for b in host.factory.made)


async def test_take_hands_a_backend_over_with_attach_and_activate() -> None:
    host = PoolHost()
    pool = await _filled(host)
    kernel = Sink()
    launch = Launch("k1", "worker", lowered(env={"A": "1"}))
    backend = pool.take("test", launch, kernel)
    assert backend is host.factory.made[0] and backend.host is kernel
    assert backend.activated == [{"A": "1"}]
    assert pool.stats()["test"] == {"target": 2, "idle": 1, "starting": 0, "served": 1,
                                    "missed": 0, "failures": 0}
    backend.send(p.Execute("x", "1+1"))  # it answers the kernel now, not the pool
    await _until(lambda: kernel.messages)
    assert isinstance(kernel.messages[0], p.Done)
    backend.die()
    assert len(kernel.exits) == 1 and pool.states["test"].idle == 1  # not the pool's anymore
    await asyncio.sleep(REFILL_DELAY + 0.05)  # refilled a moment after serving
    await _until(lambda: pool.states["test"].idle == 2)
    assert len(host.factory.made) == 3
    await pool.close()


async def test_only_a_request_lowered_as_the_pooled_template_qualifies() -> None:
    host = PoolHost()
    pool = await _filled(host)
    sink = Sink()
    assert template(lowered(env={"A": "1"})) == lowered()  # env aside, the same
    narrowed = Launch("k1", "worker", lowered(limits={"memory": "64MiB"}))
    assert pool.take("test", narrowed, sink) is None
    assert pool.take("other", Launch("k2", "worker", lowered()), sink) is None
    assert pool.stats()["test"]["missed"] == 0 and pool.states["test"].idle == 2
    same = Launch("k3", "worker", lowered(permissions={}, limits={}, filesystem={}))
    assert pool.take("test", same, sink) is not None  # nothing narrowed: served
    await pool.close()


async def test_an_empty_pool_counts_a_miss_and_refills() -> None:
    host = PoolHost()
    host.config = ManagerConfig(pool_size=1, pool_profiles=("test",))
    pool = await _filled(host, idle=1)
    assert pool.take("test", Launch("a", "worker", lowered()), Sink()) is not None
    assert pool.take("test", Launch("b", "worker", lowered()), Sink()) is None
    assert pool.stats()["test"]["missed"] == 1
    assert pool.states["test"].starting == 1  # the miss started a refill at once
    await pool.close()


async def test_an_idle_backend_that_dies_is_dropped_and_replaced() -> None:
    host = PoolHost()
    pool = await _filled(host)
    first = host.factory.made[0]
    first.die()
    assert pool.states["test"].idle == 1 and first.killed is False  # kill is on its way
    await _until(lambda: first.killed and pool.states["test"].idle == 2)
    assert len(host.factory.made) == 3
    await pool.close()


async def test_a_reload_drops_backends_of_an_outdated_profile() -> None:
    host = PoolHost()
    pool = await _filled(host)
    old = list(host.factory.made)
    pool.configure()  # a reload that changed nothing keeps them
    assert pool.states["test"].idle == 2 and not any(b.killed for b in old)
    host.profile = "max_execution_time = 3"
    pool.configure()
    await _until(lambda: all(b.killed for b in old) and pool.states["test"].idle == 2)
    taken = pool.take("test", Launch("k", "worker", lowered("max_execution_time = 3")), Sink())
    assert taken is not None and taken not in old
    await pool.close()


async def test_failing_starts_stop_after_three() -> None:
    host = PoolHost()
    host.factory.fail = KernelStartError("no zygote")
    pool = Pool(host)
    pool.configure()
    await _until(lambda: pool.states["test"].starting == 0)
    pool.refill()
    await _until(lambda: pool.states["test"].starting == 0)
    assert pool.states["test"].failures >= 3 and pool.states["test"].to_start() == 0
    assert all(b.killed for b in host.factory.made)
    await pool.close()


async def test_an_unconfined_manager_pools_nothing() -> None:
    host = PoolHost()
    host.config = ManagerConfig(pool_size=2, pool_profiles=("test",), confine=False)
    pool = Pool(host)
    pool.configure()
    assert pool.states["test"].starting == 0 and host.factory.made == []
    await pool.close()
