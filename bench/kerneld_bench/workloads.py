"""The code both systems run, and the timing helpers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kerneld_bench.metrics import CLEANUP_TIMEOUT

# --------------------------------------------------------------------------- workloads

CHUNK_CODE = ("import sys\n_kb_chunk = 'x' * (1 << 20)\nfor _ in range({n}):\n"
              "    sys.stdout.write(_kb_chunk)\nsys.stdout.flush()\n")
PRINT_CODE = "for _ in range({n}):\n    print('x' * 99)\n"     # 100 bytes a line
# Syscall-heavy loop, timed inside the kernel (transport excluded): 7 syscalls an iteration on
# objects that look the same confined or not (a pipe, a stdlib file under /usr). Returns (wall,
# CPU) seconds for n iterations, scaled from the fastest of `parts` equal slices (by CPU time):
# on a shared VM a slice disturbed by the host is slower, never faster, so the best slice is
# the sandbox's cost and not the neighbours'. The overhead is computed on the thread's CPU time,
# so that waiting for a CPU does not count as sandbox cost either.
SYSCALL_CODE = """\
import os as _kb_os, time as _kb_time
def _kb_syscalls(n, path=_kb_os.__file__, parts=5):
    r, w = _kb_os.pipe()
    buf = b"x" * 64
    best = None
    for _ in range(parts):
        t, cpu = _kb_time.perf_counter(), _kb_time.thread_time()
        for _ in range(n // parts):
            _kb_os.getpid()
            _kb_os.stat(path)
            _kb_os.write(w, buf)
            _kb_os.read(r, 64)
            fd = _kb_os.open(path, _kb_os.O_RDONLY)
            _kb_os.read(fd, 128)
            _kb_os.close(fd)
        run = (_kb_time.perf_counter() - t, _kb_time.thread_time() - cpu)
        best = run if best is None or run[1] < best[1] else best
    _kb_os.close(r)
    _kb_os.close(w)
    return best[0] * parts, best[1] * parts
def _kb_per_op(n, path=_kb_os.__file__):
    r, w = _kb_os.pipe()
    buf = b"x" * 64
    def orc():
        fd = _kb_os.open(path, _kb_os.O_RDONLY)
        _kb_os.read(fd, 128)
        _kb_os.close(fd)
    ops = {"getpid": _kb_os.getpid, "stat": lambda: _kb_os.stat(path),
           "pipe_write_read": lambda: (_kb_os.write(w, buf), _kb_os.read(r, 64)),
           "open_read_close": orc}
    out = {}
    for name, op in ops.items():
        best = None
        for _ in range(5):  # the fastest slice, as in _kb_syscalls
            t = _kb_time.thread_time()
            for _ in range(n // 5):
                op()
            took = (_kb_time.thread_time() - t) / (n // 5)
            best = took if best is None else min(best, took)
        out[name] = round(best * 1e9)
    _kb_os.close(r)
    _kb_os.close(w)
    return out
"""


CONFINED_CODE = """\
import json as _kb_json, os as _kb_os
def _kb_confinement(probe):
    fields = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    try:
        open(probe).close()
        readable = True
    except OSError:
        readable = False
    return _kb_json.dumps({{"uid": _kb_os.getuid(), "pid_in_namespace": _kb_os.getpid(),
                           "Seccomp": fields.get("Seccomp"),
                           "NoNewPrivs": fields.get("NoNewPrivs"),
                           "checkout_readable": readable}})
_kb_confinement({probe!r})
"""


async def bounded(aw: Awaitable[Any], timeout: float = CLEANUP_TIMEOUT) -> None:
    """Await a cleanup step, even while being cancelled, but never for longer than `timeout`;
    a step still running then is cancelled and awaited here, never left running in the
    background (what it leaves behind, the Reaper ends)."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout)  # on timeout it cancels and awaits the step
        raise
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort
        print(f"kerneld bench: cleanup step failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        if not task.done():  # timed out (the shield kept it running)
            task.cancel()
            await asyncio.wait([task])  # its outcome is retrieved by the shield's callback


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


async def drive(fns: Sequence[Callable[[], Awaitable[Any]]], seconds: float) -> float:
    """Run each fn in a loop on its own for `seconds`; total completions per second."""
    async def loop(fn: Callable[[], Awaitable[Any]]) -> int:
        end, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            await fn()
            n += 1
        return n
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(loop(fn) for fn in fns))
    return sum(counts) / (time.perf_counter() - t0)
