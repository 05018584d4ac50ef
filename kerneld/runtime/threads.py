"""Thread pools sized to the kernel's CPU allowance, before any user code runs (issue 15).

Why: the zygote imports numpy, and OpenBLAS sizes its thread pool by the host's CPU count at
that import. Under a profile's `limits.cpus` quota, threads beyond the allowance only burn it:
OpenBLAS's idle threads spin for a while after each call, so a 1000² matmul cell under
`cpus = 1.0` ran 51–94 % longer than unconfined and the *next* cell of any kind stalled for one
100 ms CFS period once the quota was spent. Libraries and programs also size pools by
`os.cpu_count()` (multiprocessing, concurrent.futures, joblib), and would start more workers
than the kernel may run at once.

The zygote imports numpy with OPENBLAS_NUM_THREADS=1 (`ZYGOTE_ENV`: it holds no BLAS threads,
so no fork waits for OpenBLAS's at-fork shutdown of them) and finds OpenBLAS's setter once
(`prepare`: reading /proc/self/maps and dlopen in every worker cost 5–8 ms of cold create).
Each worker, once confined (`cap`, called by the zygote's child), with
n = the allowance rounded up, at least 1, at most the CPUs it may run on:
- tells OpenBLAS to use n threads (nothing to do for n = 1, the zygote's size);
- answers `os.cpu_count()` and `os.sched_getaffinity(0)` with n CPUs (as Python 3.13's
  `-X cpu_count` does for the former), so pools size themselves by the allowance;
- adds OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, NUMEXPR_NUM_THREADS and
  VECLIB_MAXIMUM_THREADS to the kernel's environment (`env`, merged under the kernel's own env at
  Activate), for libraries loaded later and for child processes. A kernel's env wins.
"""

from __future__ import annotations

import ctypes
import math
import os
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
# OpenBLAS's setter under the names its builds export (numpy's wheels: scipy_openblas64_)
_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads")

ZYGOTE_ENV = {"OPENBLAS_NUM_THREADS": "1"}  # set by the zygote before its preload
_allowed: int | None = None   # n once `cap` ran in this process; None: no cap
_setters: list[Any] = []      # OpenBLAS's set_num_threads functions, found by `prepare`


def prepare() -> None:
    """In the zygote, after its preload: find the set_num_threads of every OpenBLAS loaded
    (in /proc/self/maps, as threadpoolctl does; CDLL of a loaded library returns that one)."""
    _setters.clear()
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps
                     if "openblas" in line.rsplit("/", 1)[-1].lower() and "/" in line}
    except OSError:
        return
    for path in sorted(paths):
        try:
            lib: Any = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                _setters.append(setter)
                break


def allowance(cpus: float | None, available: int) -> int:
    """Threads a kernel may usefully run: `cpus` rounded up, within [1, available]."""
    if cpus is None or cpus <= 0:
        return max(1, available)
    return max(1, min(available, math.ceil(cpus)))


def cap(cpus: float | None) -> int:
    """Size this process's thread pools to `cpus` (the profile's `limits.cpus`); returns n."""
    global _allowed
    real = os.sched_getaffinity(0)
    n = allowance(cpus, len(real))
    _allowed = n
    if n != 1:  # the zygote sized OpenBLAS for one thread
        for setter in _setters:
            setter(n)
    if n < len(real):
        cpu_set = frozenset(sorted(real)[:n])
        real_getaffinity = os.sched_getaffinity

        def sched_getaffinity(pid: int, /) -> set[int]:
            if pid in (0, os.getpid()):
                return set(cpu_set)
            return real_getaffinity(pid)

        os.cpu_count = lambda: n
        os.sched_getaffinity = sched_getaffinity
    return n


def env() -> dict[str, str]:
    """The thread variables for the kernel's environment; empty without a cap."""
    if _allowed is None:
        return {}
    return dict.fromkeys(THREAD_VARS, str(_allowed))
