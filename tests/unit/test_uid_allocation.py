"""Kernel uids: unique across managers, handed out round-robin in `uid_range`.

Issue 15 item 7 (3,000 kernels held): scanning the range from its first uid on every create
made each create linear in the kernels already held; the scan now starts after the uid handed
out last. A uid released is not handed out again until the range comes round.
"""

from __future__ import annotations

import os

import pytest

from kerneld.backends.supervisor import Supervisor
from kerneld.config import ManagerConfig
from kerneld.errors import LimitExceeded

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="kernel uids are handed out as root")

FIRST = 298_000  # a range of its own, away from the default range other tests' kernels use


def test_uids_go_round_the_range_and_a_released_uid_waits_its_turn() -> None:
    sup = Supervisor(ManagerConfig(uid_range=(FIRST, FIRST + 3)))
    a, b = sup.allocate_uid(), sup.allocate_uid()
    assert (a, b) == (FIRST, FIRST + 1)
    sup.release_uid(a)
    assert sup.allocate_uid() == FIRST + 2   # not `a` again at once
    assert sup.allocate_uid() == FIRST + 3
    assert sup.allocate_uid() == FIRST       # round the range: `a` is free again
    with pytest.raises(LimitExceeded, match="no free kernel uid"):
        sup.allocate_uid()
    for uid in (FIRST, FIRST + 1, FIRST + 2, FIRST + 3):
        sup.release_uid(uid)


def test_a_uid_another_manager_holds_is_skipped() -> None:
    cfg = ManagerConfig(uid_range=(FIRST + 10, FIRST + 12))
    one, two = Supervisor(cfg), Supervisor(cfg)
    held = one.allocate_uid()
    assert two.allocate_uid() == held + 1    # the lock file of `one` is held
    one.release_uid(held)
    two.release_uid(held + 1)
