"""The zygote's memory preparation before it forks (kerneld/runtime/heap.py): each step
measurably does what it claims in this very process."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import pytest

from kerneld.runtime import heap


def test_free_blocks_are_read_from_cpython_and_filled() -> None:
    junk = [bytes(100) for _ in range(20000)]
    del junk[::2]  # leave holes in partly used pools of one size class
    size_class = (sys.getsizeof(junk[0]) + 15) // 16 * 16
    before = heap.free_blocks()
    assert before[size_class] >= 10000, before
    keep = heap.fill_free_blocks()
    after = heap.free_blocks()
    assert len(keep) >= 10000
    # other classes get a few free blocks back at once (reading the statistics allocates
    # and frees small strings, as do other threads of the test process): look at ours
    assert after[size_class] < 100, after


def test_malloc_holes_of_the_main_arena_are_filled() -> None:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "malloc_info"):
        pytest.skip("not glibc")
    malloc, free = libc.malloc, libc.free
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.argtypes = [ctypes.c_void_p]
    blocks = [malloc(2000) for _ in range(2000)]
    for b in blocks[::2]:
        free(b)  # ~2 MB of holes below the top of the heap
    _, free_before = heap.malloc_free_chunks(libc)
    assert free_before > 1_000_000
    keep = heap.fill_malloc_holes()
    _, free_after = heap.malloc_free_chunks(libc)
    assert len(keep) >= 1000
    assert free_before - free_after > 1_500_000, (free_before, free_after)  # our holes, at least


def _thp_possible() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            mode = fh.read()
    except OSError:
        return False
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return "[never]" not in mode and (major, minor) >= (6, 1)


def test_heaps_are_collapsed_to_huge_pages_where_the_kernel_allows() -> None:
    ballast = bytearray(os.urandom(1 << 16)) * 256  # 16 MiB of touched anonymous memory
    done = heap.collapse_to_huge_pages()
    if _thp_possible():
        assert done > 0
        with open("/proc/self/smaps_rollup") as fh:
            huge_kb = int(fh.read().split("AnonHugePages:")[1].split()[0])
        assert huge_kb >= done * 2048
    else:
        assert done == 0
    assert len(ballast) == 1 << 24
