"""What the fault tests look at: a confined daemon, its zygote, each kernel's processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

import psutil
import pytest
from _daemon import Daemon

from tests._host import sandbox_missing
from tests._proc import process_state

CONFINED = """
[daemon]
shutdown_grace = 1

[runtime]
preload = []
"""
POOLED = CONFINED + """
[pool]
size = 2
profiles = ["default"]
"""


confined = [pytest.mark.sandbox,
            pytest.mark.skipif(sandbox_missing() is not None, reason=str(sandbox_missing()))]


def zygote_of(daemon: Daemon) -> psutil.Process:
    """The daemon's zygote. Not merely a child with the zygote's command line: once a zygote
    has died, the workers it forked (same command line) are the daemon's children too; only
    the zygote reads a pipe from the daemon (a worker's stdin is /dev/null)."""
    for child in psutil.Process(daemon.pid).children():
        try:
            if ("kerneld.runtime.zygote" in " ".join(child.cmdline())
                    and os.readlink(f"/proc/{child.pid}/fd/0").startswith("pipe:")):
                return child
        except (psutil.Error, OSError):
            continue
    raise AssertionError("the daemon has no zygote")


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def init_of(worker: int) -> int:
    """Host pid of PID 1 of the worker's PID namespace (its kerneld-init)."""
    ns = os.readlink(f"/proc/{worker}/ns/pid")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/pid") != ns:
                continue
            with open(f"/proc/{name}/status") as fh:
                nspid = next(line.split()[1:] for line in fh if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if nspid[-1] == "1":
            return int(name)
    raise AssertionError(f"no PID 1 in the namespace of worker {worker}")


def running(pids: Iterable[int]) -> list[int]:
    """Those that are still processes: neither reaped nor zombies. Strict: a kernel init that
    has exited but still waits in the kernel for its namespace to empty counts as running."""
    return [pid for pid in pids if process_state(pid) not in (None, "Z")]


def zombies(pids: Iterable[int]) -> list[int]:
    return [pid for pid in pids if process_state(pid) == "Z"]


def wait_until(check: Callable[[], object], timeout: float, step: float = 0.005) -> float:
    """Seconds until `check()` is true; AssertionError after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {check}")
        time.sleep(step)
    return time.monotonic() - start


def trials(default: int) -> int:
    """Trials of a repeated fault: KERNELD_FAULT_TRIALS (e.g. 20 for a measurement)."""
    return int(os.environ.get("KERNELD_FAULT_TRIALS", default))
