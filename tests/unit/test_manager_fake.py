"""The KernelManager over a fake backend factory (`backends=`): the create → execute →
restart → destroy paths, the stored KernelSpec, background tasks, and the requests refused
before any backend is made. No process, no zygote."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from kerneld import InvalidArgument, KernelManager, ProfileError
from kerneld.config import ManagerConfig
from kerneld.ops import KernelSpec
from kerneld.protocol import KernelEvent
from tests._fake_backend import FakeFactory


@pytest.fixture
async def fake() -> AsyncIterator[tuple[KernelManager, FakeFactory]]:
    factory = FakeFactory()
    manager = KernelManager(ManagerConfig(), backends=factory)
    yield manager, factory
    await manager.close()


async def test_a_kernel_runs_on_the_injected_backend(fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, factory = fake
    kid = await manager.create_kernel(id="a", namespace="ns", env={"X": "1"},
                                      inactivity_timeout=30)
    assert kid == "ns:a" and not manager.supervisor.started  # no zygote, no hub
    result = await manager.execute(kid, "1+1")
    assert result.status == "ok" and result.result["data"] == {"text/plain": "2"}
    (info,) = manager.list_kernels()
    assert info["status"] == "idle" and info["pid"] == factory.made[0].pid
    assert manager.counts() == {"idle": 1}
    record = manager._get(kid)
    assert record.spec == KernelSpec(id="a", namespace="ns", mode="worker", profile="default",
                                     env={"X": "1"}, inactivity_timeout=30)
    assert factory.made[0].launch.lowered is record.lowered
    assert dict(record.lowered.env) == {"X": "1"} and record.inactivity_timeout == 30


async def test_restart_reuses_the_spec_and_its_lowering(fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, factory = fake
    kid = await manager.create_kernel(limits={"memory": "64MiB"})
    lowered = manager._get(kid).lowered
    events: list[KernelEvent] = []
    manager.on_kernel_event(kid, "kernel_restarted", events.append)
    assert await manager.restart_kernel(kid)
    assert len(factory.made) == 2 and factory.made[0].killed
    assert factory.made[1].launch.lowered is lowered
    assert [e.type for e in events] == ["kernel_restarted"]
    await manager.destroy_kernel(kid)
    assert factory.made[1].killed and manager.get_kernel_ids() == []


async def test_listener_coroutines_are_kept_and_cancelled_on_close() -> None:
    factory = FakeFactory()
    manager = KernelManager(ManagerConfig(), backends=factory)
    kid = await manager.create_kernel()
    started, finished = asyncio.Event(), []

    async def slow_listener(event: KernelEvent) -> None:
        started.set()
        await asyncio.sleep(30)
        finished.append(event)

    manager.on_kernel_event(kid, "*", slow_listener)
    await manager.execute(kid, "1+1")
    await started.wait()
    assert manager._tasks  # referenced while it runs, not fire-and-forget
    await manager.close()
    assert not manager._tasks and finished == []


async def test_a_failed_start_leaves_no_kernel(fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, factory = fake
    factory.fail = InvalidArgument("mount refused")
    with pytest.raises(InvalidArgument, match="mount refused"):
        await manager.create_kernel(id="x")
    assert manager.get_kernel_ids() == [] and factory.made[0].killed


async def test_in_process_with_a_filesystem_is_refused_naming_the_option() -> None:
    """Issue 12: the option was silently ignored (the cwd stayed the caller's and the mount
    point did not exist); an in_process kernel shares this program's filesystem view."""
    factory = FakeFactory()
    manager = KernelManager(ManagerConfig(allow_in_process=True), backends=factory)
    try:
        with pytest.raises(InvalidArgument, match=r"^filesystem is not supported for "
                                                  r"in_process kernels: .*use mode \"worker\""):
            await manager.create_kernel(mode="in_process",
                                        filesystem={"root": "/tmp", "mount_point": "/work"})
        assert manager.get_kernel_ids() == [] and factory.made == []
        await manager.create_kernel(mode="in_process", filesystem={})  # nothing asked
        assert len(factory.made) == 1
    finally:
        await manager.close()


async def test_an_empty_request_reuses_its_profiles_lowering_until_a_reload(
        fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, _ = fake
    a, b = await manager.create_kernel(), await manager.create_kernel()
    assert manager._get(a).lowered is manager._get(b).lowered
    narrowed = await manager.create_kernel(limits={"memory": "64MiB"})
    assert manager._get(narrowed).lowered is not manager._get(a).lowered
    manager.reload_profiles()
    c = await manager.create_kernel()
    assert manager._get(c).lowered is not manager._get(a).lowered
    assert manager._get(c).lowered == manager._get(a).lowered


async def test_an_env_only_request_is_the_plain_lowering_with_its_env(
        fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, _ = fake
    plain = manager._get(await manager.create_kernel()).lowered
    with_env = manager._get(await manager.create_kernel(env={"A": "1"})).lowered
    assert dict(with_env.env) == {"A": "1"} and with_env.profile is plain.profile
    assert with_env == dataclasses.replace(plain, env={"A": "1"})
    with pytest.raises(ProfileError, match="request:env: bad variable name"):
        await manager.create_kernel(env={"A=B": "1"})
