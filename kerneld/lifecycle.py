"""Inactivity and stall rules as pure functions of (state, now): no I/O, no clock of their own.

The manager's ticker calls `decide()` for every kernel a few times a second with
`time.monotonic()`; tests call it with any clock they like. It returns the actions to take;
the manager performs them.

Stall policy (`on_stall`, one of `ON_STALL`): "event" only reports; "interrupt" reports and
interrupts; "restart" and "terminate" report and then restart / terminate the kernel. An
interrupt that the code ignores for `stall_grace` seconds escalates to `escalation` (one of
`ESCALATIONS`: the profile's `stall_escalation`). Profiles validate their keys against these
two tuples, so the values are listed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

ON_STALL = ("event", "interrupt", "restart", "terminate")
ESCALATIONS = ("restart", "terminate")


class Action(str, Enum):
    STALLED = "stalled"        # emit execution_stalled for the running execution
    INTERRUPT = "interrupt"
    RESTART = "restart"
    TERMINATE = "terminate"
    EXPIRE = "expire"          # inactivity: destroy and emit kernel_terminated


@dataclass(frozen=True)
class KernelClock:
    """What the rules need to know about one kernel at one instant."""

    busy: bool                          # an execution is running or queued
    last_activity: float                # monotonic time of the last execution end / ping
    inactivity_timeout: float | None
    running_since: float | None         # monotonic start of the running execution
    stalled: bool                       # execution_stalled already emitted for it
    interrupted_at: float | None        # when the stall policy interrupted it
    max_execution_time: float | None
    on_stall: str = "event"
    stall_grace: float = 2.0
    escalation: str = "restart"


def time_until_shutdown(clock: KernelClock, now: float) -> float | None:
    """Seconds left before the inactivity timeout fires; None when disabled."""
    if not clock.inactivity_timeout:
        return None
    if clock.busy:
        return clock.inactivity_timeout
    return max(0.0, clock.last_activity + clock.inactivity_timeout - now)


def decide(clock: KernelClock, now: float) -> list[Action]:
    """The actions due for this kernel now (usually none)."""
    left = time_until_shutdown(clock, now)
    if left is not None and not clock.busy and left <= 0:
        return [Action.EXPIRE]
    if clock.running_since is None or not clock.max_execution_time:
        return []
    if not clock.stalled:
        if now - clock.running_since < clock.max_execution_time:
            return []
        actions = [Action.STALLED]
        follow = {"interrupt": Action.INTERRUPT, "restart": Action.RESTART,
                  "terminate": Action.TERMINATE}.get(clock.on_stall)
        return actions + ([follow] if follow else [])
    if clock.interrupted_at is not None and now - clock.interrupted_at >= clock.stall_grace:
        return [Action.TERMINATE if clock.escalation == "terminate" else Action.RESTART]
    return []
