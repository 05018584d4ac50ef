"""The kernel record (`kerneld.kernel`) against a fake Backend and a fake host: no process.

Every transition of the status table (each allowed one, each illegal one raising), the paths
that take a kernel along them (start, executions, restart, death, destroy, failures), and the
stall rules reaching each action, TERMINATE included (issue 12: `KernelClock.escalation` was
never set, so the escalation to terminate could not happen)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

import pytest

from kerneld import lifecycle
from kerneld import protocol as p
from kerneld.errors import KernelError, KernelNotFound, KernelStartError, ProfileError
from kerneld.execution import Execution
from kerneld.kernel import TRANSITIONS, IllegalTransition, KernelRecord, Status
from kerneld.permissions import parse_profile
from tests._fake_backend import FakeHost, record

STALL = 'max_execution_time = 1\non_stall = "interrupt"\n'


async def _held_start(host: FakeHost) -> tuple[KernelRecord, asyncio.Task[None], asyncio.Event]:
    """A new kernel whose backend's start waits, once begun, until the gate is set."""
    host.factory.gate = gate = asyncio.Event()
    kernel = record(host)
    start = asyncio.create_task(kernel.start())
    await asyncio.sleep(0)
    return kernel, start, gate


def _execution(kernel: KernelRecord, code: str = "1+1") -> Execution:
    return Execution(kernel.id, code, allow_stdin=False, silent=False, store_history=True,
                     streaming=False)


async def _started(host: FakeHost, profile: str = "", **kw: object) -> KernelRecord:
    kernel = record(host, profile, **kw)  # type: ignore[arg-type]
    await kernel.start()
    return kernel


# ---------------------------------------------------------------------- the table itself

def test_the_table_has_a_row_for_every_status_and_dead_is_left_only_by_restart() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert {s.value for s in Status} == {"starting", "idle", "busy", "paused", "restarting",
                                         "dead"}
    assert TRANSITIONS[Status.DEAD] == {Status.RESTARTING}
    assert all(s not in TRANSITIONS[s] for s in Status)  # no self-loops: a no-op is a bug
    assert not any(Status.STARTING in targets for targets in TRANSITIONS.values())


@pytest.mark.parametrize(("old", "new"), list(itertools.product(Status, Status)),
                         ids=lambda s: s.value)
async def test_every_transition_is_allowed_exactly_when_the_table_says(
        old: Status, new: Status) -> None:
    kernel = record(FakeHost())
    kernel._status = old  # put there directly: this test is about the setter alone
    if new in TRANSITIONS[old]:
        kernel.set_status(new)
        assert kernel.status is new and kernel.describe()["status"] == new.value
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} → {new.value}"):
            kernel.set_status(new)
        assert kernel.status is old


# ---------------------------------------------------------------------- paths through it

async def test_start_then_an_execution_goes_idle_busy_idle() -> None:
    host = FakeHost()
    kernel = record(host)
    assert kernel.status is Status.STARTING
    await kernel.start()
    assert kernel.status is Status.IDLE and host.factory.made[0].started
    execution = _execution(kernel)
    kernel.submit(execution)
    assert kernel.status is Status.BUSY and kernel.current is execution
    result = await execution.future
    assert result.status == "ok" and result.execution_count == 1
    assert kernel.status is Status.IDLE and kernel.current is None
    assert host.types() == ["execute_result"]
    assert kernel.describe()["pid"] == host.factory.made[0].pid


async def test_executions_run_one_at_a_time_in_order() -> None:
    host = FakeHost()
    kernel = await _started(host)
    backend = host.factory.made[0]
    backend.auto = False
    first, second = _execution(kernel, "a"), _execution(kernel, "b")
    kernel.submit(first)
    kernel.submit(second)
    assert [e.code for e in backend.executes] == ["a"]
    backend.done(first.id)
    assert kernel.status is Status.BUSY and kernel.current is second
    assert [e.code for e in backend.executes] == ["a", "b"]
    backend.done("someone else's")  # out of turn: dropped
    assert kernel.current is second
    backend.done(second.id)
    assert kernel.status is Status.IDLE


async def test_an_execution_submitted_while_starting_waits_for_idle() -> None:
    host = FakeHost()
    kernel, start, gate = await _held_start(host)
    execution = _execution(kernel)
    kernel.submit(execution)
    assert kernel.status is Status.STARTING and kernel.current is None
    assert kernel.clock().busy  # a starting kernel never expires
    gate.set()
    await start
    assert (await execution.future).status == "ok"


async def test_a_failed_start_is_dead_and_ends_what_was_queued() -> None:
    host = FakeHost()
    host.factory.fail = KernelStartError("no zygote")
    kernel, start, gate = await _held_start(host)
    queued = _execution(kernel)
    kernel.submit(queued)
    gate.set()
    with pytest.raises(KernelStartError, match="no zygote"):
        await start
    assert kernel.status is Status.DEAD and host.factory.made[0].killed
    result = await queued.future
    assert result.status == "aborted" and result.error["ename"] == "KernelDied"


async def test_destroy_while_starting_kills_what_is_starting() -> None:
    host = FakeHost()
    kernel, start, gate = await _held_start(host)
    await kernel.destroy("KernelDestroyed", "the kernel was destroyed")
    assert kernel.status is Status.DEAD and host.factory.made[0].killed
    gate.set()
    with pytest.raises(KernelStartError):
        await start
    assert kernel.status is Status.DEAD


async def test_a_death_ends_executions_with_kernel_died_and_tells_listeners() -> None:
    host = FakeHost()
    kernel = await _started(host)
    backend = host.factory.made[0]
    backend.auto = False
    running, queued = _execution(kernel), _execution(kernel)
    kernel.submit(running)
    kernel.submit(queued)
    ask = asyncio.create_task(kernel.ask(lambda r: p.Complete(r, "pri", 3)))
    await asyncio.sleep(0)
    backend.die("killed by the out-of-memory killer (memory limit reached)", None, 9)
    assert kernel.status is Status.DEAD
    assert await backend.exited is not None
    first, second = await running.future, await queued.future
    assert first.status == "error" and first.error["ename"] == "KernelDied"
    assert "out-of-memory" in first.error["evalue"]
    assert second.status == "aborted" and second.error["ename"] == "KernelDied"
    with pytest.raises(KernelError, match="stopped"):
        await ask
    died = [e for e in host.events if e.type == "kernel_died"]
    assert len(died) == 1 and died[0].data == {
        "kernel_id": "k1", "reason": "killed by the out-of-memory killer (memory limit reached)",
        "exit_code": None, "signal": 9}
    late = _execution(kernel)
    kernel.submit(late)  # a dead kernel refuses work at once
    assert (await late.future).error["ename"] == "KernelDied"
    assert not kernel.interrupt() and not host.tasks  # no restart_on_death


async def test_restart_on_death_starts_a_fresh_backend() -> None:
    host = FakeHost()
    kernel = await _started(host, "restart_on_death = true")
    host.factory.made[0].die()
    assert kernel.status is Status.DEAD and len(host.tasks) == 1
    await host.tasks[0]
    assert kernel.status is Status.IDLE and len(host.factory.made) == 2
    assert host.types() == ["kernel_died", "kernel_restarted"]


async def test_restart_replaces_the_backend_and_ends_executions() -> None:
    host = FakeHost()
    kernel = await _started(host)
    old = host.factory.made[0]
    old.auto = False
    running = _execution(kernel)
    kernel.submit(running)
    kernel.execution_count = 5
    await kernel.restart()
    new = host.factory.made[1]
    assert old.killed and new.started and kernel.backend is new
    assert kernel.status is Status.IDLE and kernel.execution_count == 0
    assert (await running.future).error["ename"] == "KernelRestarted"
    assert host.types()[-1] == "kernel_restarted"


async def test_an_execution_sent_during_a_restart_runs_in_the_new_backend() -> None:
    host = FakeHost()
    kernel = await _started(host)
    host.factory.gate = gate = asyncio.Event()
    restart = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    assert kernel.status is Status.RESTARTING and kernel.clock().busy
    execution = _execution(kernel)
    kernel.submit(execution)
    assert kernel.current is None  # not handed to the dying backend (issue 16)
    gate.set()
    await restart
    assert (await execution.future).status == "ok"
    assert host.factory.made[1].executes and not host.factory.made[0].executes


async def test_an_ask_during_a_restart_fails_at_once_and_works_after() -> None:
    """history/comm_info/complete sent while no backend can answer: a clear error at once, not
    ASK_TIMEOUT (60 s) of waiting for an answer nobody will send."""
    host = FakeHost()
    kernel = await _started(host)
    host.factory.gate = gate = asyncio.Event()
    restart = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    assert kernel.status is Status.RESTARTING
    with pytest.raises(KernelError, match="restarting; ask again"):
        await asyncio.wait_for(kernel.ask(lambda r: p.Complete(r, "pri", 3)), 1)
    assert not kernel._asks
    gate.set()
    await restart
    ask = asyncio.create_task(kernel.ask(lambda r: p.Complete(r, "pri", 3)))
    await asyncio.sleep(0)
    assert len(kernel._asks) == 1  # positive control: once idle, the ask is sent and waits
    ask.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ask
    assert not kernel._asks


async def test_a_dead_kernel_can_be_restarted() -> None:
    host = FakeHost()
    kernel = await _started(host)
    host.factory.made[0].die()
    await kernel.restart()
    assert kernel.status is Status.IDLE


async def test_a_failed_restart_is_dead_and_says_kernel_died() -> None:
    host = FakeHost()
    kernel = await _started(host)
    host.factory.fail = KernelStartError("mount refused")
    with pytest.raises(KernelStartError):
        await kernel.restart()
    assert kernel.status is Status.DEAD
    died = [e for e in host.events if e.type == "kernel_died"]
    assert died and died[0].data["reason"] == "the restart failed: mount refused"


async def test_destroy_during_a_restart_is_kernel_not_found() -> None:
    host = FakeHost()
    kernel = await _started(host)
    host.factory.gate = gate = asyncio.Event()
    restart = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    del host.records[kernel.id]
    await kernel.destroy("KernelDestroyed", "the kernel was destroyed")
    gate.set()
    with pytest.raises(KernelNotFound):
        await restart
    assert kernel.status is Status.DEAD
    assert all(b.killed for b in host.factory.made)
    assert "kernel_died" not in host.types()


async def test_restarts_queue_behind_one_another_and_not_after_a_destroy() -> None:
    host = FakeHost()
    kernel = await _started(host)
    await asyncio.gather(kernel.restart(), kernel.restart())
    assert len(host.factory.made) == 3 and kernel.status is Status.IDLE
    assert [b.killed for b in host.factory.made] == [True, True, False]
    del host.records[kernel.id]
    with pytest.raises(KernelNotFound):
        await kernel.restart()


async def test_a_restart_asked_for_while_starting_comes_after_the_start() -> None:
    host = FakeHost()
    kernel, start, gate = await _held_start(host)
    restart = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    assert kernel.status is Status.STARTING and len(host.factory.made) == 1
    gate.set()
    await asyncio.gather(start, restart)
    assert kernel.status is Status.IDLE and len(host.factory.made) == 2
    assert host.factory.made[0].killed and host.types() == ["kernel_restarted"]


async def test_a_restart_waiting_for_a_start_that_never_came_is_kernel_not_found() -> None:
    """The manager registers a kernel before the zygote is up; if that fails, the record is
    dropped and killed without ever starting: a restart waiting for it must not hang."""
    host = FakeHost()
    kernel = record(host)
    restart = asyncio.create_task(kernel.restart())
    await asyncio.sleep(0)
    assert not restart.done()
    del host.records[kernel.id]
    await kernel.kill()
    with pytest.raises(KernelNotFound):
        await restart
    assert host.factory.made == []


async def test_destroy_is_dead_once_and_kills_the_backend() -> None:
    host = FakeHost()
    kernel = await _started(host)
    await kernel.destroy("KernelDestroyed", "the kernel was destroyed")
    await kernel.destroy("KernelDestroyed", "again")  # dead → dead is no transition
    assert kernel.status is Status.DEAD and host.factory.made[0].killed
    assert kernel.pid is None and kernel.memory_bytes() is None


# ---------------------------------------------------------------------- stall rules

def _clock(**kw: object) -> lifecycle.KernelClock:
    """A kernel running one execution since t=0, stall limit 1 s, grace 0.5 s."""
    clock = lifecycle.KernelClock(
        busy=True, last_activity=0.0, inactivity_timeout=None, running_since=0.0,
        stalled=False, interrupted_at=None, max_execution_time=1.0, on_stall="interrupt",
        stall_grace=0.5)
    return dataclasses.replace(clock, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("escalation", lifecycle.ESCALATIONS)
def test_decide_escalates_an_ignored_interrupt_as_configured(escalation: str) -> None:
    A = lifecycle.Action
    assert lifecycle.decide(_clock(), 0.5) == []
    assert lifecycle.decide(_clock(escalation=escalation), 1.0) == [A.STALLED, A.INTERRUPT]
    clock = _clock(stalled=True, interrupted_at=1.0, escalation=escalation)
    assert lifecycle.decide(clock, 1.4) == []
    assert lifecycle.decide(clock, 1.5) == [A(escalation)]


def test_on_stall_terminate_and_restart_follow_the_stall_at_once() -> None:
    A = lifecycle.Action
    for policy, action in (("terminate", A.TERMINATE), ("restart", A.RESTART)):
        assert lifecycle.decide(_clock(on_stall=policy), 1.0) == [A.STALLED, action]
    assert lifecycle.decide(_clock(on_stall="event"), 1.0) == [A.STALLED]
    assert set(lifecycle.ON_STALL) == {"event", "interrupt", "restart", "terminate"}


def test_stall_escalation_is_a_profile_key() -> None:
    assert parse_profile("").stall_escalation == "restart"
    assert parse_profile('stall_escalation = "terminate"').stall_escalation == "terminate"
    with pytest.raises(ProfileError, match="stall_escalation: expected one of 'restart', "
                                           "'terminate'"):
        parse_profile('stall_escalation = "event"')


async def _stall(host: FakeHost, profile: str) -> tuple[KernelRecord, Execution, float]:
    kernel = await _started(host, profile)
    host.factory.made[0].auto = False  # the code never ends
    execution = _execution(kernel, "while True: pass")
    kernel.submit(execution)
    assert execution.started_mono is not None
    return kernel, execution, execution.started_mono


async def test_an_ignored_interrupt_escalates_to_terminate_through_the_record() -> None:
    host = FakeHost()
    kernel, execution, t0 = await _stall(host, STALL + 'stall_escalation = "terminate"\n')
    assert kernel.clock().escalation == "terminate"
    await kernel.apply_rules(t0 + 0.5)
    assert host.events == [] and not execution.stalled
    await kernel.apply_rules(t0 + 1.0)
    assert execution.stalled and execution.interrupted_at == t0 + 1.0
    assert host.factory.made[0].interrupts == 1 and "execution_stalled" in host.types()
    await kernel.apply_rules(t0 + 1.2)  # within stall_grace: nothing more
    assert host.terminated == []
    await kernel.apply_rules(t0 + 1.5)
    assert host.terminated == [("k1", "execution stalled")]
    result = await execution.future
    assert result.error["ename"] == "KernelForcedTermination"
    assert kernel.status is Status.DEAD


async def test_an_ignored_interrupt_escalates_to_restart_by_default() -> None:
    host = FakeHost()
    kernel, execution, t0 = await _stall(host, STALL)
    await kernel.apply_rules(t0 + 1.0)
    await kernel.apply_rules(t0 + 1.5)
    assert host.terminated == [] and len(host.factory.made) == 2
    assert (await execution.future).error["ename"] == "KernelRestarted"
    assert kernel.status is Status.IDLE


async def test_inactivity_expires_an_idle_kernel_through_the_host() -> None:
    host = FakeHost()
    kernel = await _started(host, "inactivity_timeout = 5")
    await kernel.apply_rules(kernel.last_activity + 4.9)
    assert host.expired == []
    await kernel.apply_rules(kernel.last_activity + 5.0)
    assert host.expired == [kernel]


# ---------------------------------------------------------------------- comm budgets

def _comm(exec_id: str, size: int) -> p.Output:
    return p.Output(exec_id, "comm_msg", {"comm_id": "c", "data": {}, "metadata": {},
                                          "buffers": [b"x" * size]})


async def test_comm_messages_of_an_execution_are_kept_up_to_a_budget(monkeypatch) -> None:
    """An untrusted worker's comm flood in one cell is kept (outputs, stream queue) only up to
    COMM_BYTES_PER_EXECUTION; past it the messages still reach listeners, and are counted."""
    import kerneld.kernel as kernel_module
    monkeypatch.setattr(kernel_module, "COMM_BYTES_PER_EXECUTION", 10_000)
    host = FakeHost()
    kernel = await _started(host)
    host.factory.made[0].auto = False
    execution = _execution(kernel)
    kernel.submit(execution)
    for _ in range(10):
        kernel.on_message(_comm(execution.id, 3_000))
    kept = [e for e in execution.outputs if e.type == "comm_msg"]
    assert len(kept) == 2 and kernel.comm_dropped == 8  # 2 × (3,000 + 1,024) ≤ 10,000 < 3 ×
    assert host.types().count("comm_msg") == 10          # listeners saw every one


async def test_comm_messages_between_cells_are_rate_limited(monkeypatch) -> None:
    import kerneld.kernel as kernel_module
    monkeypatch.setattr(kernel_module, "COMM_IDLE_BURST", 10_000)
    monkeypatch.setattr(kernel_module, "COMM_IDLE_BYTES_PER_S", 1)
    host = FakeHost()
    kernel = await _started(host)
    kernel._comm_tokens = 10_000
    for _ in range(5):
        kernel.on_message(_comm("", 3_000))
    assert host.types().count("comm_msg") == 2 and kernel.comm_dropped == 3
