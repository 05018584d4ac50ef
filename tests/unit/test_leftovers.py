"""Managers killed without cleanup leave directories behind; the next manager sweeps them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kerneld.backends.supervisor import _dead_owner, _sweep_leftovers


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_dead_owner_reads_the_pid_after_the_prefix():
    gone = dead_pid()
    assert _dead_owner(f"kerneld-{gone}-abc", "kerneld-")
    assert not _dead_owner(f"kerneld-{os.getpid()}-abc", "kerneld-")  # alive
    assert not _dead_owner("kerneld-abc123", "kerneld-")   # not ours: no pid
    assert not _dead_owner(f"other-{gone}-x", "kerneld-")
    assert _dead_owner(f"m{gone}-kernel-1a2b", "m")


def test_sweep_removes_only_dead_managers_directories(tmp_path: Path):
    gone = dead_pid()
    stale = tmp_path / f"kerneld-{gone}-x1"
    live = tmp_path / f"kerneld-{os.getpid()}-x2"
    foreign = tmp_path / "kerneld-notapid"
    for d in (stale, live, foreign):
        d.mkdir()
        (d / "workers.sock").write_text("")
    _sweep_leftovers(str(tmp_path))
    assert not stale.exists() and live.exists() and foreign.exists()
