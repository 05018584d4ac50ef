"""What the manager does with processes its dead zygote left
(kerneld.backends.supervisor.ProcessWatch), and the sweep of dead zygotes' IPYTHONDIRs. Real
child processes; the test process plays a daemon (a child subreaper) for the duration of a test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import prctl
import pytest

from kerneld import protocol as p
from kerneld.backends import supervisor
from kerneld.backends.supervisor import ProcessWatch, sweep_ipython_dirs
from tests._proc import process_state


@pytest.fixture
def subreaper() -> Iterator[None]:
    prctl.set_child_subreaper(1)
    try:
        yield
    finally:
        prctl.set_child_subreaper(0)


def _spawn(code: str) -> int:
    """A child of this process running `code` in this interpreter (the watch's "runtime")."""
    return os.posix_spawn(sys.executable, [sys.executable, "-c", code], dict(os.environ))


async def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_watched_exits_are_reaped_with_their_status(subreaper: None) -> None:
    exits: list[p.Exited] = []
    watch = ProcessWatch(exits.append, sys.executable)
    code, killed = _spawn("raise SystemExit(3)"), _spawn("import time; time.sleep(30)")
    try:
        for pid in (code, killed):
            watch.watch(pid)
        await _until(lambda: exits)
        os.kill(killed, signal.SIGKILL)
        await _until(lambda: len(exits) == 2)
        assert exits == [p.Exited(code, 3, None), p.Exited(killed, None, signal.SIGKILL)]
        assert process_state(code) is None and process_state(killed) is None  # no zombies
        assert watch.fds == {}  # their pidfds are closed
    finally:
        watch.close()


async def test_a_process_we_cannot_reap_is_reported_with_unknown_status() -> None:
    exits: list[p.Exited] = []
    watch = ProcessWatch(exits.append, sys.executable)
    # a grandchild: its parent (sh) reaps it, not us, as an embedding program's kernels
    sh = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & echo $!; wait"],  # noqa: ASYNC220
                          stdout=subprocess.PIPE)  # (the loop has nothing else to run)
    try:
        assert sh.stdout is not None
        grandchild = int(sh.stdout.readline())
        watch.watch(grandchild)
        os.kill(grandchild, signal.SIGKILL)
        await _until(lambda: exits)
        assert exits == [p.Exited(grandchild, None, None)]
        watch.watch(grandchild)  # gone already: reported at once, status unknown
        await _until(lambda: len(exits) == 2)
        assert exits[1] == p.Exited(grandchild, None, None)
    finally:
        sh.kill()
        sh.wait()
        watch.close()


async def test_adopt_kills_strays_no_kernel_claims(subreaper: None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "STRAY_GRACE", 0.05)
    exits: list[p.Exited] = []
    watch = ProcessWatch(exits.append, sys.executable)
    stray, claimed = (_spawn("import time; time.sleep(30)") for _ in range(2))
    try:
        # as a dead zygote's children: not watched yet; only `claimed` belongs to a kernel
        watch.adopt([], claimed=lambda pid: pid != stray)
        await _until(lambda: exits)
        assert exits == [p.Exited(stray, None, signal.SIGKILL)]
        assert process_state(stray) is None
        await asyncio.sleep(0.1)
        assert process_state(claimed) in ("S", "R")  # positive control: spared, and watched
        os.kill(claimed, signal.SIGKILL)
        await _until(lambda: len(exits) == 2)
        assert exits[1] == p.Exited(claimed, None, signal.SIGKILL)
    finally:
        for pid in (stray, claimed):
            if process_state(pid) is not None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)  # noqa: ASYNC222 (killed: returns at once)
        watch.close()


async def test_zombie_children_nobody_waits_for_are_reaped(subreaper: None) -> None:
    watch = ProcessWatch(lambda msg: None, sys.executable)
    orphan = _spawn("pass")  # exits at once; nobody watches or waits for it
    try:
        await _until(lambda: process_state(orphan) is None)  # SIGCHLD → reap_zombies
    finally:
        watch.close()
    kept = _spawn("pass")  # positive control: without the watch it stays a zombie
    try:
        deadline = time.monotonic() + 5
        while process_state(kept) != "Z":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert process_state(kept) == "Z"
    finally:
        os.waitpid(kept, 0)  # noqa: ASYNC222 (a zombie: returns at once)


def test_sweep_removes_only_dead_zygotes_ipython_dirs(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {
        "dead": f"kerneld-ipython-{dead.pid}-abc",
        "live": f"kerneld-ipython-{os.getpid()}-abc",   # a running pid: kept
        "old_young": "kerneld-ipython-k2j4_x9q",         # old naming, recent: kept
        "old_aged": "kerneld-ipython-zz8y_77a",          # old naming, an hour old: removed
        "other": "kerneld-12345678-abc",                  # not ours: kept
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "profile_default").mkdir()
    aged = time.time() - 3600
    os.utime(tmp_path / names["old_aged"], (aged, aged))
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / f"kerneld-ipython-{dead.pid}-link").symlink_to(target)  # never followed
    assert sweep_ipython_dirs([str(tmp_path)]) == 2
    left = {path.name for path in tmp_path.iterdir()}
    assert names["dead"] not in left and names["old_aged"] not in left
    assert {names["live"], names["old_young"], names["other"]} <= left
    assert target.is_dir()
