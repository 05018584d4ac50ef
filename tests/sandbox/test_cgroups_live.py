"""cgroups on this host: limits contain bombs, the OOM kill is reported, the whole tree dies."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from _support import Driver, confined, needs_cgroups, result

from sandbox import Limits, cgroups
from tests._proc import gone_or_zombie

pytestmark = [pytest.mark.sandbox, needs_cgroups]


def pol(uid: int, **kw: Any) -> dict[str, Any]:
    return {"uid": uid, "gid": uid, "limits": {"cpu_shares": None}, **kw}


class TestConfinedBombs:
    """Bombs run inside confined workers (driver-created cgroups, like the supervisor's)."""

    pytestmark = confined

    def test_fork_bomb_is_contained_by_pids(self, driver: Driver, uid: int) -> None:
        code = textwrap.dedent("""
            n, err = 0, 0
            while n < 10000:
                try:
                    pid = os.fork()
                except OSError as e:
                    err = e.errno
                    break
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                n += 1
            result = [n, err]
        """)
        resp = driver.run(pol(uid, limits={"cpu_shares": None, "processes": 16}), code,
                          cgroup={"limits": {"processes": 16, "cpu_shares": None}})
        n, err = result(resp)
        assert err == errno.EAGAIN and 10 <= n < 16
        assert resp["cgroup_killed_all"] and not resp["oom_killed"]

    def test_memory_bomb_is_oom_killed_and_reported(self, driver: Driver, uid: int) -> None:
        code = textwrap.dedent("""
            hog = []
            for _ in range(SIZE):
                hog.append(bytearray(1 << 20))
            result = len(hog)
        """)
        limits = {"memory_bytes": 64 << 20, "cpu_shares": None}
        bomb = driver.run(pol(uid, limits=limits), "SIZE = 1024\n" + code,
                          cgroup={"limits": limits})
        assert bomb["status"] == -signal.SIGKILL and bomb["child"] is None
        assert bomb["oom_killed"] is True
        fine = driver.run(pol(uid, limits=limits), "SIZE = 16\n" + code,
                          cgroup={"limits": limits})
        assert result(fine) == 16 and fine["oom_killed"] is False   # positive control

    def test_wall_clock_kill_takes_the_whole_tree(self, driver: Driver, uid: int) -> None:
        code = textwrap.dedent("""
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                os._exit(0)
            time.sleep(60)
        """)
        t0 = time.monotonic()
        resp = driver.run(pol(uid), code, timeout=0.5, cgroup={"limits": {"cpu_shares": None}})
        assert resp["timed_out"] and resp["cgroup_killed_all"]
        assert time.monotonic() - t0 < 10
        assert not [p for p in _pids_of_uid(uid)]


def _pids_of_uid(uid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/status") as f:
                    uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            except (OSError, StopIteration):
                continue
            if str(uid) in uids:
                out.append(int(p))
    return out


TREE = textwrap.dedent("""
    trap '' TERM
    ( trap '' TERM; setsid sh -c "trap '' TERM; sleep 300" & sleep 300 ) &
    sleep 300
""")


def test_kill_leaves_no_process_even_when_detached_and_ignoring_sigterm() -> None:
    dirs = cgroups.create(f"test-tree-{os.getpid()}", Limits(cpu_shares=None))
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", TREE], preexec_fn=lambda: cgroups.join(dirs),  # noqa: PLW1509
                                start_new_session=True)
        deadline = time.monotonic() + 5
        while len(_members(dirs)) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        members = _members(dirs)
        assert len(members) >= 5, members  # shells and sleeps, one of them in its own session
        assert len({os.getsid(p) for p in members}) == 2
        assert cgroups.memory_current(dirs) and cgroups.memory_current(dirs) > 0  # type: ignore
        os.killpg(proc.pid, signal.SIGTERM)   # ignored by every member
        time.sleep(0.05)
        assert members <= _members(dirs)
        assert cgroups.kill(dirs) is True
        proc.wait(timeout=5)
        assert _members(dirs) == set()
        for pid in members - {proc.pid}:
            assert gone_or_zombie(pid)
    finally:
        cgroups.kill(dirs)
        cgroups.remove(dirs)
    assert not any(os.path.exists(d) for d in dirs)
    assert not cgroups.oom_killed(dirs)


def _members(dirs: tuple[str, ...]) -> set[int]:
    out: set[int] = set()
    for d in dirs:
        with open(os.path.join(d, "cgroup.procs")) as f:
            out |= {int(p) for p in f.read().split()}
    return out


def test_create_is_fast_and_writes_the_limits() -> None:
    lim = Limits(memory_bytes=256 << 20, processes=32, cpu_shares=0.5)
    t0 = time.perf_counter()
    dirs = cgroups.create(f"test-values-{os.getpid()}", lim)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    try:
        values = {}
        for d in dirs:
            for name in ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us",
                         "cpu.max"):
                path = os.path.join(d, name)
                if os.path.exists(path):
                    values[name] = Path(path).read_text().split()[0]
        if cgroups.layout().version == 1:
            assert values == {"memory.limit_in_bytes": str(256 << 20), "pids.max": "32",
                              "cpu.cfs_quota_us": "50000"}
        else:
            assert values == {"memory.max": str(256 << 20), "pids.max": "32", "cpu.max": "50000"}
        assert all("/kerneld/" in d for d in dirs)
        assert elapsed_ms < 50, elapsed_ms
    finally:
        cgroups.remove(dirs)
    with pytest.raises(FileExistsError):
        dirs = cgroups.create(f"test-dup-{os.getpid()}", lim)
        try:
            cgroups.create(f"test-dup-{os.getpid()}", lim)
        finally:
            cgroups.remove(dirs)
