"""Non-root mode (a developer running kerneld embedded as a normal user): the worker gets a user
namespace mapping only its own uid, is PID 1 of its own PID namespace (through an intermediate
that relays signals and exit status), and every other layer as usual. Strict policies needing
what only root has (cgroups) fail closed in the parent; best-effort ones run."""

from __future__ import annotations

import errno
import os
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _support import Driver, needs_landlock, needs_runtime, needs_seccomp, needs_userns, result

pytestmark = [pytest.mark.sandbox, needs_runtime, needs_userns, needs_seccomp, needs_landlock]

USER = 64999
NO_LIMITS = {"processes": None, "cpu_shares": None}


@pytest.fixture(scope="module")
def user_driver() -> Iterator[Driver]:
    d = Driver(user=USER)
    yield d
    d.close()


def pol(**kw: Any) -> dict[str, Any]:
    return {"limits": NO_LIMITS, **kw}


def test_worker_is_confined_without_root(user_driver: Driver) -> None:
    code = textwrap.dedent("""
        st = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
                  if ":\\t" in l)
        result = {"pid": os.getpid(), "uid": os.getuid(), "seccomp": st["Seccomp"].strip(),
                  "nnp": st["NoNewPrivs"].strip(), "capeff": st["CapEff"].strip(),
                  "capbnd": st["CapBnd"].strip(),
                  "root": errno_of(os.stat, "/root"), "etc": errno_of(os.listdir, "/etc"),
                  "inet": errno_of(socket.socket, socket.AF_INET, socket.SOCK_STREAM),
                  "unshare": raw_syscall(272, 0x10000000)[1],
                  "tmp": errno_of(lambda: open("/tmp/x", "w").write("x")),
                  "pids": sorted(p for p in os.listdir("/proc") if p.isdigit())}
    """)
    r = result(user_driver.run(pol(), code))
    assert r == {"pid": 1, "uid": USER, "seccomp": "2", "nnp": "1",
                 "capeff": "0" * 16, "capbnd": "0" * 16, "root": errno.ENOENT,
                 "etc": errno.EACCES, "inet": errno.EPERM, "unshare": errno.EPERM, "tmp": 0,
                 "pids": ["1"]}
    host = result(user_driver.run(pol(), code, unconfined=True))
    assert host["pid"] != 1 and host["root"] == 0 and host["inet"] == 0  # positive control


def test_strict_fails_closed_in_the_parent_and_best_effort_runs(user_driver: Driver) -> None:
    strict = user_driver.run({"limits": {"processes": 64}}, "result = 1")
    err = strict["parent_error"]
    assert err["stage"] == "probe" and "cgroup pids controller" in err["message"]
    relaxed = user_driver.run({"limits": {"processes": 64}, "enforcement": "best-effort"},
                              "result = os.getpid()")
    assert result(relaxed) == 1
    wrong_uid = user_driver.run(pol(uid=12345), "result = 1")
    assert "switch to uid 12345" in wrong_uid["parent_error"]["message"]


def test_exit_status_is_relayed_and_kill_takes_the_worker(user_driver: Driver) -> None:
    assert user_driver.run(pol(), "os._exit(7)")["status"] == 7
    t0 = time.monotonic()
    resp = user_driver.run(pol(), "time.sleep(60)", timeout=0.5)
    assert resp["timed_out"] and time.monotonic() - t0 < 10
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_pids_of(USER)) > 1:
        time.sleep(0.02)
    assert _pids_of(USER) == [user_driver.proc.pid]  # the worker died with its relay


def _pids_of(uid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    out.append(int(p))
            except OSError:
                pass
    return sorted(out)
