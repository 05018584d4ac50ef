"""Shaping the zygote's heaps just before it starts forking, so that its workers share more.

Process model: called once, in the zygote (`kerneld.runtime.zygote`), after everything is
loaded and warmed and before the first fork (`shape`). Each step is best effort and measured
(tests/unit/test_zygote_memory.py checks each does what it claims in the test's own process):

- `fill_free_blocks`: occupy the free blocks of pymalloc's partly used pools;
- `fill_malloc_holes`: the same for glibc malloc's main arena;
  both so that a worker's first objects land on pages of its own instead of being scattered
  over (and copying) pages it shares with the zygote;
- `gc.freeze()`: the collector never touches (and so never copies) the zygote's objects;
- `collapse_to_huge_pages`: 2 MiB pages under the heaps, which make `fork()` cheaper.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import os
import re
import sys
from typing import Any


def shape() -> object:
    """Fill the heaps' holes, freeze the collector, collapse to huge pages. Returns the
    ballast that fills the holes: keep it alive for good."""
    gc.collect()
    ballast = (fill_free_blocks(), fill_malloc_holes())
    gc.freeze()
    collapse_to_huge_pages()
    return ballast


def _report_pipe() -> tuple[int, int]:
    """A pipe for a C report written in one go (~3 KB) before anyone reads: 1 MiB of room."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass  # the default 64 KiB is still ~20 times the report
    return r, w


_POOL_ROW = re.compile(r"^\s*\d+\s+(\d+)\s+\d+\s+\d+\s+(\d+)\s*$", re.MULTILINE)


def free_blocks() -> dict[int, int]:
    """pymalloc's free blocks in partly used pools, by size class (CPython's own report)."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None:
        return {}
    r, w = _report_pipe()
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        debug()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    with os.fdopen(r, "rb") as fh:
        text = fh.read().decode("ascii", "replace")
    return {int(size): int(avail) for size, avail in _POOL_ROW.findall(text)}


def fill_free_blocks() -> list[object]:
    """Occupy the free blocks of pymalloc's partly used pools, and keep them for good.

    Why: a worker's first small objects would land in those blocks, scattered over pages it
    shares with the zygote, and each such allocation copies a whole 4 KiB page. With those
    pools full, a worker's new objects go to pools of its own, packed together (measured:
    -0.7 MiB of private memory per idle kernel). It costs the zygote a few MB, shared."""
    keep: list[object] = []
    header = sys.getsizeof(b"")  # a bytes object of length n asks pymalloc for header + n
    for _ in range(3):  # filling allocates too (the list grows): go again
        free = free_blocks()
        if sum(free.values()) < 1000:
            break
        for size, avail in free.items():
            if size == 16:
                keep.extend(object() for _ in range(avail))
            elif size == 32:
                keep.extend(float(i) + 0.5 for i in range(avail))  # 24 bytes
            elif size - header > 1:  # lengths 0 and 1 are cached singletons
                keep.extend(bytes(size - header) for _ in range(avail))
    return keep


_MALLOC_SIZE = re.compile(r'<size from="(\d+)" to="\d+" total="\d+" count="(\d+)"/>')
_MALLOC_FREE = re.compile(r'<total type="rest" count="\d+" size="(\d+)"/>')


def malloc_free_chunks(libc: Any) -> tuple[list[tuple[int, int]], int]:
    """(smallest size, count) per size bin of the main arena's free chunks, and their sum."""
    r, w = _report_pipe()
    stream = libc.fdopen(w, b"w")
    if not stream:
        os.close(w)
        os.close(r)
        return [], 0
    libc.malloc_info(0, stream)
    libc.fclose(stream)  # flushes, closes w
    with os.fdopen(r, "rb") as fh:
        main_arena = fh.read().decode("ascii", "replace").split('<heap nr="1">')[0]
    free = _MALLOC_FREE.search(main_arena)
    sizes = [(int(low), int(count)) for low, count in _MALLOC_SIZE.findall(main_arena)]
    return sizes, int(free.group(1)) if free else 0


def fill_malloc_holes() -> list[int]:
    """The same for glibc's malloc (objects over 512 bytes, C libraries): allocate the free
    chunks of the main arena's heap and never free them, so that a worker's allocations
    come from fresh memory (measured: -0.2 MiB of private memory per idle kernel)."""
    try:
        libc = ctypes.CDLL(None)
        malloc, fdopen = libc.malloc, libc.fdopen
        _ = libc.malloc_info, libc.fclose
    except (OSError, AttributeError):  # not glibc
        return []
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    fdopen.restype, fdopen.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    keep: list[int] = []
    for _ in range(3):
        sizes, free = malloc_free_chunks(libc)
        if free < 64 * 1024:
            break
        for low, count in sizes:
            # fits every chunk of the bin (a chunk carries a 16-byte header); what a bigger
            # chunk has left over is taken by the next round
            request = max(1, low - 16)
            keep.extend(malloc(request) for _ in range(count))
    return keep


MADV_COLLAPSE = 25  # Linux >= 6.1
HUGE_PAGE = 2 << 20


def collapse_to_huge_pages() -> int:
    """Back the zygote's anonymous memory (Python's heaps, ~100 MiB) with 2 MiB pages where it
    is aligned to allow it; returns how many were made. Best effort: older kernels refuse.

    Why: `fork()` copies one page-table entry per 4 KiB page, and that copy was most of a
    worker's fork (3.3 → 1.1 ms measured on a fresh zygote). A worker's first write to a
    shared huge page splits the mapping and copies 4 KiB only, so its private memory does not
    grow. The zygote's own writes after a fork split the huge pages they touch (80 MiB huge
    at start, ~25 MiB after some forks); what stays still made create → first result
    1.4-2.6 ms faster in alternating runs of bench/confinement_cost.py."""
    libc = ctypes.CDLL(None)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:
        name = fields[5] if len(fields) > 5 else ""
        if not fields[1].startswith("rw") or name not in ("", "[heap]"):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        first = (start + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
        for addr in range(first, end & ~(HUGE_PAGE - 1), HUGE_PAGE):
            if libc.madvise(addr, HUGE_PAGE, MADV_COLLAPSE) == 0:
                done += 1  # EINVAL/EAGAIN/ENOMEM otherwise: that range stays as it is
    return done
