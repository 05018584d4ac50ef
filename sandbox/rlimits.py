"""Per-process resource limits (setrlimit) and the OOM-killer preference of the worker.

Why: rlimits are inherited by every child and need no privilege to lower, so they back up the
cgroup limits and cover what cgroups do not (file size, open files, core dumps, message queues).

Choices:
- RLIMIT_AS only as a *fallback* when no memory cgroup is joined: numpy/OpenBLAS and glibc arenas
  reserve large virtual ranges that are never touched, so an AS limit equal to the memory budget
  breaks them. The fallback is `current virtual size + memory_bytes`, i.e. a bound on growth.
- RLIMIT_NPROC counts processes per *real uid system-wide* and is not enforced for root: it is
  set only when the worker switches to a non-root uid (assumed unique per kernel); the pids
  cgroup is the real process limit.
- RLIMIT_CPU: soft = budget (SIGXCPU), hard = budget + 2 s (SIGKILL). The worker is PID 1 of
  its PID namespace, and PID 1 ignores signals it has no handler for: unless the worker installs
  a SIGXCPU handler (e.g. to raise in user code), the budget ends with the hard limit's SIGKILL.
- RLIMIT_FSIZE: Python ignores SIGXFSZ, so an oversized write fails with EFBIG.
- CORE = 0 (no core files with the kernel's memory), MSGQUEUE = 0 (no POSIX mqueues),
  MEMLOCK = 64 KiB, RTPRIO = 0.
- oom_score_adj = 1000: the kernel OOM killer picks a worker before anything else.

`plan` is pure (unit-tested); `install` only calls setrlimit, never raising a hard limit (this
host may lack CAP_SYS_RESOURCE): a request above the current hard limit is clamped to it.
"""

from __future__ import annotations

import os
import resource

from .policy import Limits

MEMLOCK_BYTES = 64 * 1024
CPU_HARD_GRACE_S = 2

Rlimit = tuple[int, int, int]  # (resource, soft, hard)


def plan(limits: Limits, *, memory_cgroup: bool, nproc: bool, vsize: int) -> list[Rlimit]:
    """The rlimits to set for `limits`.

    memory_cgroup: a memory cgroup bounds the worker (then no RLIMIT_AS);
    nproc: the worker runs as a unique non-root uid (then RLIMIT_NPROC is meaningful);
    vsize: the current virtual size in bytes (base of the RLIMIT_AS fallback).
    """
    out: list[Rlimit] = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MSGQUEUE, 0, 0),
        (resource.RLIMIT_MEMLOCK, MEMLOCK_BYTES, MEMLOCK_BYTES),
        (resource.RLIMIT_RTPRIO, 0, 0),
    ]
    if limits.cpu_seconds is not None:
        out.append((resource.RLIMIT_CPU, limits.cpu_seconds,
                    limits.cpu_seconds + CPU_HARD_GRACE_S))
    if limits.file_size_bytes is not None:
        out.append((resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes))
    if limits.open_files is not None:
        out.append((resource.RLIMIT_NOFILE, limits.open_files, limits.open_files))
    if limits.processes is not None and nproc:
        out.append((resource.RLIMIT_NPROC, limits.processes, limits.processes))
    if limits.memory_bytes is not None and not memory_cgroup:
        as_limit = vsize + limits.memory_bytes
        out.append((resource.RLIMIT_AS, as_limit, as_limit))
    return out


def _clamp(value: int, hard: int) -> int:
    if hard == resource.RLIM_INFINITY:
        return value
    return min(value, hard)


def install(rlimits: list[Rlimit]) -> None:
    """setrlimit each entry, clamped to the current hard limit (lowering needs no privilege)."""
    for res, soft, hard in rlimits:
        _, cur_hard = resource.getrlimit(res)
        new_hard = _clamp(hard, cur_hard)
        resource.setrlimit(res, (min(_clamp(soft, cur_hard), new_hard), new_hard))


def vsize() -> int:
    """Virtual size of the calling process in bytes (from /proc/self/statm)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def set_oom_score_adj(value: int = 1000) -> None:
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
