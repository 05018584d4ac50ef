"""Per-kernel cgroups: memory, process count and CPU limits, accounting, and whole-tree kill.

Why cgroups: rlimits are per process (or per uid) and a fork bomb or a tree of children escapes
them; a cgroup bounds and accounts the whole tree, and lets the supervisor kill every member at
once even if they `setsid`, double-fork or ignore SIGTERM.

Roles:
- supervisor (root): `create(name, limits)` before the fork, `kill(dirs)` and `remove(dirs)` after
  the kernel ends, `memory_current` / `oom_killed` for status and post-mortems;
- worker: `join(dirs)` as the very first confinement stage (before the PID/cgroup namespaces).

Layout: a kernel's cgroups live under the *supervisor's own* cgroup, in a `kerneld/` child, so
the daemon never touches cgroups it does not own (systemd delegation works the same way).
- cgroup v2 (preferred when a unified hierarchy has memory and pids): one directory with
  `memory.max`, `memory.swap.max`, `memory.oom.group`, `pids.max`, `cpu.max`; kill is
  `cgroup.kill` (freeze + SIGKILL loop on kernels without it).
- cgroup v1: one directory per controller (memory, pids, cpu, freezer), each
  `<mount>/<own path>/kerneld/<name>`; kill = freeze, SIGKILL every pid, thaw, until empty.

Value computation is pure (`v1_values`, `v2_values`) and unit-tested; the rest is file writes.
Creating one kernel's cgroups costs ~1 ms (a handful of mkdir + writes).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from .policy import Limits

CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
PARENT_NAME = "kerneld"


@dataclass(frozen=True)
class Layout:
    """Where this process may create kernel cgroups.

    version: 2, 1 or None (no usable hierarchy). bases: (controller, directory) pairs; for v2 a
    single ("unified", dir) pair. The kernel cgroups are created in `<dir>/kerneld/<name>`.
    """

    version: int | None
    bases: tuple[tuple[str, str], ...]

    @property
    def controllers(self) -> frozenset[str]:
        if self.version == 2:
            return frozenset(_read(os.path.join(self.bases[0][1], "cgroup.controllers")).split())
        return frozenset(c for c, _ in self.bases)


# --- pure value computation ------------------------------------------------------------------

def v2_values(limits: Limits) -> dict[str, str]:
    """File → value for a cgroup v2 kernel directory (order matters: written in this order)."""
    values: dict[str, str] = {}
    if limits.memory_bytes is not None:
        values["memory.max"] = str(limits.memory_bytes)
        values["memory.swap.max"] = "0"       # no swap escape from the memory limit
    values["memory.oom.group"] = "1"          # an OOM kill takes the whole kernel down together
    values["pids.max"] = "max" if limits.processes is None else str(limits.processes)
    quota = "max" if limits.cpu_shares is None else str(max(1000, int(limits.cpu_shares
                                                                       * CPU_PERIOD_US)))
    values["cpu.max"] = f"{quota} {CPU_PERIOD_US}"
    return values


def v1_values(controller: str, limits: Limits) -> dict[str, str]:
    """File → value for a cgroup v1 kernel directory of `controller` (written in order)."""
    if controller == "memory" and limits.memory_bytes is not None:
        mem = str(limits.memory_bytes)
        # memsw (memory+swap) must be >= limit_in_bytes, so it is written second.
        return {"memory.limit_in_bytes": mem, "memory.memsw.limit_in_bytes": mem,
                "memory.swappiness": "0"}
    if controller == "pids":
        return {"pids.max": "max" if limits.processes is None else str(limits.processes)}
    if controller == "cpu":
        quota = -1 if limits.cpu_shares is None else max(1000, int(limits.cpu_shares
                                                                   * CPU_PERIOD_US))
        return {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
    return {}


# --- layout discovery ------------------------------------------------------------------------

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _own_paths(proc: str) -> dict[str, str]:
    """Controller (or "" for v2) → this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in _read(os.path.join(proc, "self/cgroup")).splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def _mounts(proc: str) -> list[tuple[str, str, str, str]]:
    """(fstype, mount root, mountpoint, super options) of cgroup filesystems."""
    out = []
    for line in _read(os.path.join(proc, "self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if rf and rf[0] in ("cgroup", "cgroup2"):
            out.append((rf[0], lf[3], lf[4], rf[2] if len(rf) > 2 else ""))
    return out


def _join_own(mountpoint: str, mount_root: str, own: str) -> str | None:
    if mount_root != "/" and not (own == mount_root or own.startswith(mount_root + "/")):
        return None
    rel = own[len(mount_root):] if mount_root != "/" else own
    return os.path.normpath(mountpoint + "/" + rel.lstrip("/"))


def _v2_base(proc: str, own: dict[str, str]) -> str | None:
    for fstype, root, mnt, _ in _mounts(proc):
        if fstype != "cgroup2" or "" not in own:
            continue
        base = _join_own(mnt, root, own[""])
        if base is None:
            continue
        try:
            ctrls = set(_read(os.path.join(base, "cgroup.controllers")).split())
        except OSError:
            continue
        if {"memory", "pids"} <= ctrls and os.access(base, os.W_OK):
            return base
    return None


def _v1_bases(proc: str, own: dict[str, str]) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for fstype, root, mnt, opts in _mounts(proc):
        if fstype != "cgroup":
            continue
        for ctrl in set(opts.split(",")) & set(V1_CONTROLLERS):
            base = _join_own(mnt, root, own.get(ctrl, "/"))
            if base and os.path.isdir(base) and os.access(base, os.W_OK):
                found.setdefault(ctrl, base)
    return tuple((c, found[c]) for c in V1_CONTROLLERS if c in found)


@lru_cache(maxsize=4)
def layout(proc: str = "/proc") -> Layout:
    """Discover (once per process) where kernel cgroups can be created; v2 preferred."""
    try:
        own = _own_paths(proc)
        v2 = _v2_base(proc, own)
        if v2 is not None:
            return Layout(2, (("unified", v2),))
        v1 = _v1_bases(proc, own)
    except OSError:
        return Layout(None, ())
    return Layout(1, v1) if v1 else Layout(None, ())


# --- supervisor side -------------------------------------------------------------------------

def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_values(directory: str, values: dict[str, str], optional: frozenset[str]) -> None:
    for name, value in values.items():
        try:
            _write(os.path.join(directory, name), value)
        except FileNotFoundError:
            if name not in optional:
                raise


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid cgroup name {name!r}")


def _enable_v2_controllers(directory: str) -> None:
    wanted = {"memory", "pids", "cpu"} & set(_read(os.path.join(directory,
                                                                "cgroup.controllers")).split())
    enabled = set(_read(os.path.join(directory, "cgroup.subtree_control")).split())
    missing = wanted - enabled
    if missing:
        _write(os.path.join(directory, "cgroup.subtree_control"),
               " ".join("+" + c for c in sorted(missing)))


def create(name: str, limits: Limits, parent: str | None = None,
           lay: Layout | None = None) -> tuple[str, ...]:
    """Create the cgroup(s) of kernel `name` with `limits`; returns the directories to join.

    `parent` overrides the v2 parent directory (default: `<own cgroup>/kerneld`). Raises
    OSError if the host has no usable hierarchy or a directory already exists.
    """
    _check_name(name)
    lay = lay or layout()
    if lay.version == 2:
        top = parent or os.path.join(lay.bases[0][1], PARENT_NAME)
        if parent is None:
            _enable_v2_controllers(lay.bases[0][1])
        os.makedirs(top, exist_ok=True)
        _enable_v2_controllers(top)
        d = os.path.join(top, name)
        os.mkdir(d, 0o755)
        _write_values(d, v2_values(limits), frozenset({"memory.swap.max", "memory.oom.group"}))
        return (d,)
    if lay.version == 1:
        dirs = []
        for ctrl, base in lay.bases:
            d = os.path.join(base, PARENT_NAME, name)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.mkdir(d, 0o755)
            dirs.append(d)
            _write_values(d, v1_values(ctrl, limits),
                          frozenset({"memory.memsw.limit_in_bytes", "memory.swappiness"}))
        return tuple(dirs)
    raise OSError(errno.ENOTSUP, "no writable cgroup hierarchy on this host")


def sweep(is_stale: Callable[[str], bool], lay: Layout | None = None) -> int:
    """Remove the empty kernel cgroups whose name `is_stale` says belongs to a supervisor that
    is gone (one killed with SIGKILL cannot clean up after itself). Returns how many."""
    lay = lay or layout()
    removed = 0
    for _, base in lay.bases:
        top = os.path.join(base, PARENT_NAME)
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            if not os.path.isdir(path) or not is_stale(name):
                continue
            try:
                if not _pids(path):
                    os.rmdir(path)
                    removed += 1
            except OSError:
                pass
    return removed


def _pids(directory: str) -> list[int]:
    try:
        return [int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split()]
    except FileNotFoundError:
        return []


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _set_frozen(directory: str, frozen: bool) -> None:
    if os.path.exists(os.path.join(directory, "freezer.state")):
        _write(os.path.join(directory, "freezer.state"), "FROZEN" if frozen else "THAWED")
    elif os.path.exists(os.path.join(directory, "cgroup.freeze")):
        _write(os.path.join(directory, "cgroup.freeze"), "1" if frozen else "0")


def _wait_frozen(directory: str, deadline: float) -> None:
    state = os.path.join(directory, "freezer.state")
    while os.path.exists(state) and _read(state).strip() == "FREEZING":
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)


def kill(dirs: tuple[str, ...], timeout: float = 5.0) -> bool:
    """SIGKILL every process in the kernel's cgroup(s); True once they are all empty.

    v2 with `cgroup.kill`: one write. Otherwise freeze (so nobody can fork while we iterate),
    SIGKILL every member, thaw (frozen tasks only die once thawed), repeat until empty.
    """
    deadline = time.monotonic() + timeout
    killers = [d for d in dirs if os.path.exists(os.path.join(d, "cgroup.kill"))]
    for d in killers:
        _write(os.path.join(d, "cgroup.kill"), "1")
    freezers = [d for d in dirs if os.path.exists(os.path.join(d, "freezer.state"))
                or os.path.exists(os.path.join(d, "cgroup.freeze"))]
    while True:
        pids = sorted({p for d in dirs for p in _pids(d)})
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        for d in freezers:
            _set_frozen(d, True)
            _wait_frozen(d, deadline)
        _kill_pids(sorted({p for d in dirs for p in _pids(d)}))
        for d in freezers:
            _set_frozen(d, False)
        time.sleep(0.002)


def remove(dirs: tuple[str, ...], timeout: float = 2.0) -> None:
    """rmdir the kernel's cgroup(s) (after `kill`); retries while the kernel reports EBUSY."""
    deadline = time.monotonic() + timeout
    for d in dirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)


# --- worker side and accounting ----------------------------------------------------------------

def join(dirs: tuple[str, ...]) -> None:
    """Move the calling process into every directory of `dirs` ("0" = the writer itself).

    The caller is single-threaded (the worker before it starts any thread), so on v1 it
    moves its one thread through `tasks`: the kernel then skips the global threadgroup
    rwsem whose write side waits for an RCU grace period (10-20 ms here when cgroups have
    been quiet; `cgroup.procs` pays it on every first move). v2 has no such file for
    non-threaded cgroups and uses `cgroup.procs`."""
    for d in dirs:
        tasks = os.path.join(d, "tasks")
        _write(tasks if os.path.exists(tasks) else os.path.join(d, "cgroup.procs"), "0")


def memory_current(dirs: tuple[str, ...]) -> int | None:
    """Current memory usage in bytes of the kernel's cgroup, or None without a memory cgroup."""
    for d in dirs:
        for name in ("memory.current", "memory.usage_in_bytes"):
            try:
                return int(_read(os.path.join(d, name)))
            except FileNotFoundError:
                continue
    return None


def _counter(text: str, key: str) -> int:
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def oom_killed(dirs: tuple[str, ...]) -> bool:
    """True if the kernel OOM killer killed a process of this cgroup (v2 events / v1 control)."""
    for d in dirs:
        for name in ("memory.events", "memory.oom_control"):
            try:
                if _counter(_read(os.path.join(d, name)), "oom_kill") > 0:
                    return True
            except FileNotFoundError:
                continue
    return False
