"""Inactivity and stall rules with an injected clock (no processes, no sleeping)."""

from __future__ import annotations

from dataclasses import replace

from kerneld.lifecycle import Action, KernelClock, decide, time_until_shutdown
from kerneld.pool import PoolState

IDLE = KernelClock(busy=False, last_activity=100.0, inactivity_timeout=10.0,
                   running_since=None, stalled=False, interrupted_at=None,
                   max_execution_time=None)


def test_inactivity_counts_from_last_activity():
    assert time_until_shutdown(IDLE, 104.0) == 6.0
    assert decide(IDLE, 109.9) == []
    assert decide(IDLE, 110.0) == [Action.EXPIRE]


def test_never_expires_while_busy():
    busy = replace(IDLE, busy=True)
    assert decide(busy, 1000.0) == []
    assert time_until_shutdown(busy, 1000.0) == 10.0


def test_disabled_inactivity():
    off = replace(IDLE, inactivity_timeout=None)
    assert time_until_shutdown(off, 1e9) is None and decide(off, 1e9) == []


def running(**kw):
    return replace(IDLE, busy=True, running_since=200.0, max_execution_time=5.0, **kw)


def test_stall_reported_once_then_policy():
    assert decide(running(), 204.9) == []
    assert decide(running(), 205.0) == [Action.STALLED]
    assert decide(running(stalled=True), 300.0) == []
    assert decide(running(on_stall="interrupt"), 205.0) == [Action.STALLED, Action.INTERRUPT]
    assert decide(running(on_stall="restart"), 206.0) == [Action.STALLED, Action.RESTART]
    assert decide(running(on_stall="terminate"), 206.0) == [Action.STALLED, Action.TERMINATE]


def test_ignored_interrupt_escalates_after_grace():
    clock = running(on_stall="interrupt", stalled=True, interrupted_at=205.0, stall_grace=2.0)
    assert decide(clock, 206.9) == []
    assert decide(clock, 207.0) == [Action.RESTART]
    assert decide(replace(clock, escalation="terminate"), 207.0) == [Action.TERMINATE]


def test_pool_state_fills_to_target_and_stops_after_failures():
    state = PoolState(target=4)
    assert state.to_start() == 4
    state.idle, state.starting = 2, 1
    assert state.to_start() == 1
    state.failures = 3
    assert state.to_start() == 0


def test_pool_status_line_has_one_format_before_and_after_a_reload():
    """Issue 16 item 14: `pool off` at start, `pool default=0/0(+0)` after a reload that
    changed nothing; `repr(pool)` is systemd's STATUS= and `kerneld status`'s pool line."""
    from types import SimpleNamespace

    from kerneld.config import ManagerConfig
    from kerneld.pool import Pool

    manager = SimpleNamespace(config=ManagerConfig(pool_size=0), workers_started=False)
    pool = Pool(manager)  # type: ignore[arg-type]
    assert repr(pool) == "pool off"
    pool.configure()  # what a reload (KernelManager.reconfigure) does
    assert repr(pool) == "pool off"

    manager.config = ManagerConfig(pool_size=2, pool_profiles=("default", "data-science"))
    pool.configure()
    assert repr(pool) == "pool default=0/2(+0) data-science=0/2(+0)"
    manager.config = ManagerConfig(pool_size=2)  # data-science no longer pooled
    pool.configure()
    assert repr(pool) == "pool default=0/2(+0)"
    pool.states["default"].target, pool.states["default"].starting = 0, 1  # draining
    assert repr(pool) == "pool default=0/0(+1)"
    pool.states["default"].starting = 0
    assert repr(pool) == "pool off"
