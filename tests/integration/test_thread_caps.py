"""Thread pools follow the kernel's CPU allowance (issue 15, kerneld/runtime/threads.py).

Under `default` (`limits.cpus = 1.0`) on this 2-CPU host a kernel must see one CPU everywhere
a library sizes its threads: OpenBLAS (preloaded by the zygote, so already sized when the
worker forks), `os.cpu_count()`, `os.sched_getaffinity(0)`, the OpenMP/BLAS variables. The
positive controls: an in-process kernel (no confinement, no cap) and a `data-science` kernel
(`cpus = 2.0`) see the host's CPUs.
"""

from __future__ import annotations

import ast
import os

import pytest

from kerneld import KernelManager, KernelMode

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.sandbox,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (confined kernels)")]

PROBE = """\
import ctypes as _c, os as _o
try:
    import numpy
except ImportError:  # in process: the daemon's environment has no numpy
    pass
_blas = [l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l.rsplit('/', 1)[-1]]
(_o.cpu_count(), len(_o.sched_getaffinity(0)),
 _c.CDLL(_blas[0]).scipy_openblas_get_num_threads64_() if _blas else None,
 _o.environ.get('OMP_NUM_THREADS'), _o.environ.get('OPENBLAS_NUM_THREADS'))
"""
HOST = len(os.sched_getaffinity(0))


async def probe(manager: KernelManager, **options: object) -> tuple:
    kid = await manager.create_kernel(**options)
    try:
        r = await manager.execute(kid, PROBE)
        assert r.success, r.error
        return ast.literal_eval(r.result["data"]["text/plain"])
    finally:
        await manager.destroy_kernel(kid)


@pytest.mark.skipif(HOST < 2, reason="the cap is only visible on a host with 2+ CPUs")
async def test_default_profile_kernel_sees_one_cpu_everywhere(manager: KernelManager) -> None:
    assert await probe(manager) == (1, 1, 1, "1", "1")


async def test_the_kernels_own_env_wins_over_the_cap(manager: KernelManager) -> None:
    got = await probe(manager, env={"OMP_NUM_THREADS": "3"})
    assert got[3] == "3" and got[4] == "1"


async def test_a_two_cpu_profile_keeps_the_hosts_cpus(manager: KernelManager) -> None:
    assert await probe(manager, profile="data-science") == (
        HOST, HOST, min(HOST, 2), str(min(HOST, 2)), str(min(HOST, 2)))


async def test_positive_control_an_in_process_kernel_is_not_capped(
        manager: KernelManager) -> None:
    got = await probe(manager, mode=KernelMode.IN_PROCESS)
    assert got[:2] == (os.cpu_count(), HOST) and got[3] is None
