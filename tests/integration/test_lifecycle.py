"""Execution lifecycle with real workers: interrupt, restart, inactivity, stalls, force
termination, death and the warm pool (issue 5)."""

from __future__ import annotations

import asyncio
import glob
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

from kerneld import KernelEvents, KernelManager, KernelNotFound
from kerneld.config import ManagerConfig
from tests._proc import gone_or_zombie

pytestmark = pytest.mark.asyncio(loop_scope="module")


def pid_of(manager: KernelManager, kid: str) -> int:
    return next(k["pid"] for k in manager.list_kernels() if k["id"] == kid)


async def run_until_started(manager: KernelManager, kid: str, code: str, marker: str):
    """Start `code` and return once it has printed `marker` (so it is really running)."""
    stream = manager.execute_stream(kid, code)
    events = []
    iterator = stream.__aiter__()
    while True:
        event = await asyncio.wait_for(iterator.__anext__(), 10)
        events.append(event)
        if event.type == "stream" and marker in event.data["text"]:
            break
    return stream, iterator, events


async def drain(iterator, events):
    async for event in iterator:
        events.append(event)
    return events


@pytest.mark.parametrize("code", [
    "print('go', flush=True)\nwhile True: pass",
    "import time\nprint('go', flush=True)\ntime.sleep(60)",
    "import os\nr, w = os.pipe()\nprint('go', flush=True)\nos.read(r, 1)",
    "import numpy as np\nprint('go', flush=True)\nwhile True: np.linalg.svd(np.ones((60, 60)))",
])
async def test_interrupt_within_100ms_and_kernel_survives(manager: KernelManager, code: str):
    kid = await manager.create_kernel()
    await manager.execute(kid, "kept = 'state'")
    for _ in range(3):
        stream, iterator, events = await run_until_started(manager, kid, code, "go")
        sent = time.monotonic()
        assert manager.interrupt_kernel(kid) is True
        await drain(iterator, events)
        latency = time.monotonic() - sent
        assert latency < 0.1, f"interrupt took {latency * 1000:.0f} ms"
        assert stream.result.status == "error"
        assert stream.result.error["ename"] == "KeyboardInterrupt"
        assert events[-1].type == "execute_error"
    r = await manager.execute(kid, "kept")
    assert r.result["data"]["text/plain"] == "'state'"
    await manager.destroy_kernel(kid)


async def test_restart_keeps_identity_and_clears_state(manager: KernelManager, tmp_path: Path):
    kid = await manager.create_kernel(
        id="r1", namespace="ns", env={"KEEP": "me"}, inactivity_timeout=300,
        max_execution_time=100, filesystem={"enabled": True, "root": str(tmp_path),
                                            "mount_point": "/home/kernel"})
    before = next(k for k in manager.list_kernels() if k["id"] == kid)
    await manager.execute(kid, "x = 1")
    restarted = []
    manager.on_kernel_event(kid, KernelEvents.KERNEL_RESTARTED, restarted.append)
    running = asyncio.ensure_future(manager.execute(kid, "import time\ntime.sleep(30)"))
    queued = asyncio.ensure_future(manager.execute(kid, "1"))
    await asyncio.sleep(0.2)
    assert await manager.restart_kernel(kid) is True
    assert (await running).error["ename"] == "KernelRestarted"
    assert (await queued).status == "aborted"
    after = next(k for k in manager.list_kernels() if k["id"] == kid)
    assert after["pid"] != before["pid"] and after["created"] != before["created"]
    assert (after["namespace"], after["profile"], after["mode"]) == ("ns", "default", "worker")
    r = await manager.execute(kid, "import os\n('x' in dir(), os.environ['KEEP'], os.getcwd())")
    assert r.result["data"]["text/plain"] == "(False, 'me', '/home/kernel')"
    assert r.execution_count == 1
    assert manager.get_inactivity_timeout(kid) == 300
    assert restarted and restarted[0].data == {"kernel_id": kid}
    await manager.destroy_kernel(kid)


async def test_inactivity_timeout_destroys_idle_kernel(manager: KernelManager):
    kid = await manager.create_kernel(inactivity_timeout=1.0)
    terminated = []
    manager.on_kernel_event(kid, KernelEvents.KERNEL_TERMINATED, terminated.append)
    left = manager.get_time_until_shutdown(kid)
    assert 0.5 < left <= 1.0
    await asyncio.sleep(0.6)
    assert manager.ping_kernel(kid)  # resets the clock
    assert manager.get_time_until_shutdown(kid) > 0.8
    # never while an execution runs, even past the timeout
    r = await manager.execute(kid, "import time\ntime.sleep(1.5)\n'done'")
    assert r.result["data"]["text/plain"] == "'done'"
    assert kid in manager.get_kernel_ids()
    await asyncio.sleep(1.4)
    assert kid not in manager.get_kernel_ids()
    assert terminated and terminated[0].data == {"kernel_id": kid, "reason": "inactivity timeout"}
    with pytest.raises(KernelNotFound):
        manager.get_time_until_shutdown(kid)


async def test_set_inactivity_timeout_zero_disables(manager: KernelManager):
    kid = await manager.create_kernel(inactivity_timeout=0.5)
    assert manager.set_inactivity_timeout(kid, 0)
    assert manager.get_inactivity_timeout(kid) is None
    assert manager.get_time_until_shutdown(kid) is None
    await asyncio.sleep(0.8)
    assert kid in manager.get_kernel_ids()
    assert manager.set_inactivity_timeout("missing", 3) is False
    await manager.destroy_kernel(kid)


async def test_stalled_execution_event_reaches_listener(manager: KernelManager):
    kid = await manager.create_kernel(max_execution_time=0.5)
    stalled = []
    manager.on_kernel_event(kid, KernelEvents.EXECUTION_STALLED, stalled.append)
    task = asyncio.ensure_future(manager.execute(kid, "import time\ntime.sleep(1.2)"))
    await asyncio.sleep(0.9)
    info = manager.get_execution_info(kid)
    assert info["count"] == 1 and info["is_stuck"] and info["longest_running_time"] >= 0.5
    assert manager.get_ongoing_execution_count(kid) == 1
    assert len(manager.get_stuck_executions(kid)) == 1
    r = await task
    assert r.status == "ok"  # policy "event" only reports
    (event,) = stalled
    assert set(event.data) == {"kernel_id", "execution_id", "max_execution_time",
                               "actual_runtime", "code", "start_time"}
    assert event.data["execution_id"] == r.execution_id and event.data["max_execution_time"] == 0.5
    assert event.data["actual_runtime"] >= 0.5 and "sleep(1.2)" in event.data["code"]
    assert "execution_stalled" in [e.type for e in r.outputs]
    await manager.destroy_kernel(kid)


async def test_stall_policy_interrupt_then_escalates(tmp_path: Path):
    (tmp_path / "stubborn.toml").write_text('on_stall = "interrupt"\nmax_execution_time = 0.4\n')
    os.chmod(tmp_path, 0o755)
    config = ManagerConfig(profile_dirs=(str(tmp_path),), stall_grace=0.5)
    async with KernelManager(config) as mgr:
        kid = await mgr.create_kernel(profile="stubborn")
        r = await mgr.execute(kid, "import time\ntime.sleep(5)")
        assert r.error["ename"] == "KeyboardInterrupt"
        restarted = []
        mgr.on_kernel_event(kid, KernelEvents.KERNEL_RESTARTED, restarted.append)
        swallow = ("import time\nwhile True:\n    try:\n        time.sleep(5)\n"
                   "    except KeyboardInterrupt:\n        pass")
        started = time.monotonic()
        r = await mgr.execute(kid, swallow)
        assert r.error["ename"] == "KernelRestarted"
        assert time.monotonic() - started < 3
        for _ in range(50):  # the new worker is being started
            if restarted:
                break
            await asyncio.sleep(0.05)
        assert restarted
        assert (await mgr.execute(kid, "1")).success


async def test_force_terminate(manager: KernelManager):
    kid = await manager.create_kernel()
    pid = pid_of(manager, kid)
    terminated = []
    manager.on_kernel_event(kid, KernelEvents.KERNEL_TERMINATED, terminated.append)
    running = asyncio.ensure_future(manager.execute(kid, "import time\ntime.sleep(30)"))
    queued = asyncio.ensure_future(manager.execute(kid, "2"))
    await asyncio.sleep(0.2)
    assert await manager.force_terminate_kernel(kid, "runaway agent")
    for task in (running, queued):
        r = await task
        assert r.error == {"ename": "KernelForcedTermination", "evalue": "runaway agent",
                           "traceback": ["KernelForcedTermination: runaway agent"]}
    assert kid not in manager.get_kernel_ids()
    assert terminated[0].data == {"kernel_id": kid, "reason": "runaway agent"}
    await asyncio.sleep(0.1)
    assert gone_or_zombie(pid)


async def test_death_by_cpu_limit_is_reported(manager: KernelManager):
    kid = await manager.create_kernel(limits={"cpu_seconds": 1})
    died = []
    manager.on_kernel_event(kid, KernelEvents.KERNEL_DIED, died.append)
    r = await manager.execute(kid, "while True: pass")
    assert r.error["ename"] == "KernelDied"
    assert "SIGXCPU" in r.error["evalue"] or "SIGKILL" in r.error["evalue"]
    assert died and died[0].data["reason"] == r.error["evalue"]
    assert next(k for k in manager.list_kernels() if k["id"] == kid)["status"] == "dead"
    assert await manager.restart_kernel(kid)
    assert (await manager.execute(kid, "3")).success
    await manager.destroy_kernel(kid)


async def test_restart_on_death(tmp_path: Path):
    (tmp_path / "phoenix.toml").write_text("restart_on_death = true\n")
    os.chmod(tmp_path, 0o755)
    async with KernelManager(ManagerConfig(profile_dirs=(str(tmp_path),))) as mgr:
        kid = await mgr.create_kernel(profile="phoenix")
        events = []
        mgr.on_kernel_event(kid, KernelEvents.ALL, events.append)
        os.kill(pid_of(mgr, kid), signal.SIGKILL)
        for _ in range(50):
            await asyncio.sleep(0.1)
            if "kernel_restarted" in [e.type for e in events]:
                break
        assert [e.type for e in events] == ["kernel_died", "kernel_restarted"]
        assert (await mgr.execute(kid, "4")).success


async def _pool_filled(mgr: KernelManager, idle: int) -> None:
    """Until the default profile's pool holds `idle` workers (at most 10 s)."""
    for _ in range(100):
        if mgr.get_pool_stats()["default"]["idle"] == idle:
            return
        await asyncio.sleep(0.1)


STATE_PROBE = ("(execution_count_probe := get_ipython().execution_count, _, __, ___, "
               "dict(_oh), len(In), sorted(k for k in globals() if k.startswith('_')))")


async def test_pooled_kernel_starts_as_a_fresh_one():
    """The pool's warm-up cells (a `1+1` with history, then a reset to a new session) leave
    nothing behind: a pooled kernel's outputs, history and namespace equal a fresh kernel's."""
    config = ManagerConfig(pool_size=1, pool_profiles=("default",))
    async with KernelManager(config) as mgr:
        await mgr.start()
        await _pool_filled(mgr, 1)
        pooled = await mgr.create_kernel()
        assert mgr.get_pool_stats()["default"]["served"] == 1
        fresh = await mgr.create_kernel(limits={"memory": "512MiB"})  # not from the pool
        assert mgr.get_pool_stats()["default"]["served"] == 1
        states = []
        for kid in (pooled, fresh):
            first = await mgr.execute(kid, "1+1")
            assert first.execution_count == 1 and first.result["data"]["text/plain"] == "2"
            probe = await mgr.execute(kid, STATE_PROBE)
            states.append(probe.result["data"]["text/plain"])
        assert states[0] == states[1]
        assert "'_2'" not in states[0] and "{1: 2}" in states[0]  # the probe saw cell 1's Out


async def test_zygote_leaves_no_ipython_directory_behind():
    """The zygote's IPYTHONDIR (a temporary directory IPython needs while it starts) is gone
    once the zygote serves: a daemon or manager started many times leaves no litter in /tmp."""
    async with KernelManager(ManagerConfig()) as mgr:
        kid = await mgr.create_kernel()
        assert (await mgr.execute(kid, "1+1")).success
        # named after its zygote (other zygotes on this machine may be warming up meanwhile)
        pattern = os.path.join(tempfile.gettempdir(), f"kerneld-ipython-{mgr.zygote.proc.pid}-*")
        assert glob.glob(pattern) == []
    assert glob.glob(pattern) == []


async def test_warm_pool_serves_and_refills():
    config = ManagerConfig(pool_size=4, pool_profiles=("default",))
    async with KernelManager(config) as mgr:
        await mgr.start()
        await _pool_filled(mgr, 4)
        assert mgr.get_pool_stats()["default"]["idle"] == 4
        started = time.monotonic()
        kids = [await mgr.create_kernel(env={"N": str(i)}) for i in range(4)]
        elapsed = time.monotonic() - started
        stats = mgr.get_pool_stats()["default"]
        assert stats["served"] == 4 and stats["missed"] == 0
        assert elapsed < 0.5
        seen_uids = set()
        for i, kid in enumerate(kids):
            r = await mgr.execute(kid, "import os\n(os.environ['N'], os.getuid(), 'x' in dir())")
            n, uid, leftover = eval(r.result["data"]["text/plain"])
            assert (n, leftover) == (str(i), False)
            seen_uids.add(uid)
        if os.geteuid() == 0:
            assert len(seen_uids) == 4 and 0 not in seen_uids
        await _pool_filled(mgr, 4)
        assert mgr.get_pool_stats()["default"]["idle"] == 4  # refilled
        assert "default=4/4" in repr(mgr.pool)
        # a request that changes the confinement is created fresh, transparently
        fresh = await mgr.create_kernel(limits={"memory": "256MiB"})
        assert mgr.get_pool_stats()["default"]["served"] == 4
        assert (await mgr.execute(fresh, "5")).success
