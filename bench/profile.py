"""Where the time goes: py-spy on the daemon and one worker (and the client) under one workload.

    .venv/bin/pip install py-spy            # once; the bench itself never needs it
    .venv/bin/python bench/profile.py rtt [--seconds 10] [--code '1+1'] [--unconfined]
    .venv/bin/python bench/profile.py stream | print | create [--pool 4] | assign

Starts a private daemon exactly as `kerneld bench` does (default profile, confined unless
--unconfined, which is for diagnosis only), runs the workload from this process for
`--seconds` while `py-spy record --idle --threads` samples the daemon, the worker and this
client, then prints per process and thread: the share of wall time spent idle (blocked in
select/poll/epoll/recv/wait) and the top functions by inclusive and self time, as % of that
thread's samples (`--gil`: only samples holding the GIL, i.e. Python CPU time). Raw stacks are kept in the output directory (`--out`, default a temp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kerneld_bench import (
    CHUNK_CODE,
    PRINT_CODE,
    KerneldSide,
    Reaper,
    kd_execute,
    kd_stream,
    summarize,
)

IDLE = re.compile(r"\b(select|poll|epoll_wait|_poll|recv_multipart|wait|_wait_for_tstate_lock|"
                  r"sleep|get|_do_waitpid|read)\b \(")


def pyspy() -> str:
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.access(exe, os.X_OK):
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    return exe


def report(path: str, label: str, top: int) -> None:
    threads: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    selfs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    idle: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, n = line.rstrip().rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            thread, frames = frames[0], frames[1:]
            count = int(n)
            totals[thread] += count
            clean = [re.sub(r":\d+\)$", ")", fr) for fr in frames]
            if clean and IDLE.search(clean[-1]):
                idle[thread] += count
            for fr in set(clean):
                threads[thread][fr] += count
            if clean:
                selfs[thread][clean[-1]] += count
    print(f"\n===== {label} ({path})")
    for thread, total in totals.most_common():
        if total < 20:
            continue
        print(f"--- {thread}: {total} samples, idle {100 * idle[thread] / total:.1f} %")
        busy = [(fr, c) for fr, c in threads[thread].most_common(top * 3)
                if not IDLE.search(fr)][:top]
        for fr, c in busy:
            print(f"  incl {100 * c / total:5.1f} %  {fr}")
        for fr, c in selfs[thread].most_common(top // 2):
            print(f"  self {100 * c / total:5.1f} %  {fr}")


async def workload(kind: str, side: KerneldSide, seconds: float, code: str) -> dict[str, Any]:
    client = side.client
    kid = await client.create_kernel()
    pids = await side.pids()
    run: Any
    if kind in ("rtt", "assign"):
        code = code if kind == "rtt" else "x = 1"

        async def run() -> None:
            await kd_execute(client, kid, code)
    elif kind == "stream":
        async def run() -> None:
            await kd_stream(client, kid, CHUNK_CODE.format(n=7))
    elif kind == "print":
        async def run() -> None:
            await kd_stream(client, kid, PRINT_CODE.format(n=7 * 1024 * 1024 // 100))
    else:
        async def run() -> None:
            k = await client.create_kernel()
            await kd_execute(client, k, "1+1", "2")
            await client.destroy_kernel(k)
    for _ in range(20):
        await run()
    return {"kid": kid, "worker": pids[kid], "run": run}


def start_spy(name: str, pid: int, args: argparse.Namespace, out: str) -> subprocess.Popen[bytes]:
    mode = ["--gil"] if args.gil else ["--idle"]
    return subprocess.Popen(
        [pyspy(), "record", *mode, "--threads", "--nonblocking", "-r", str(args.rate),
         "-f", "raw", "-o", os.path.join(out, f"{name}.txt"), "-p", str(pid),
         "-d", str(int(args.seconds) + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main_async(args: argparse.Namespace, out: str) -> None:
    reaper = Reaper()
    side = KerneldSide(reaper, out, "profiled", pool_size=args.pool, confine=not args.unconfined)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        await side.start()
        w = await workload(args.workload, side, args.seconds, args.code)
        targets = {"daemon": side.pid, "client": os.getpid()}
        if args.workload != "create":
            targets["worker"] = w["worker"]
        spies.extend(start_spy(name, pid, args, out) for name, pid in targets.items())
        await asyncio.sleep(1.0)
        times: list[float] = []
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await w["run"]()
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{args.workload}: {len(times)} runs, ms {summarize(times, False)} "
              "(slowed by sampling)")
        for spy in spies:
            await asyncio.to_thread(spy.wait)
        for name in targets:
            report(os.path.join(out, f"{name}.txt"), name, args.top)
    finally:
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
        await side.close()
        reaper.kill_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=("rtt", "assign", "stream", "print", "create"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--code", default="1+1")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--gil", action="store_true",
                        help="sample only threads holding the GIL (Python CPU) instead of wall")
    parser.add_argument("--pool", type=int, default=0, help="the daemon's [pool] size")
    parser.add_argument("--unconfined", action="store_true", help="diagnosis only")
    parser.add_argument("--out", help="keep the raw stacks here")
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="kb-profile-", dir="/tmp")
    os.makedirs(out, exist_ok=True)
    os.chmod(out, 0o755)
    asyncio.run(main_async(args, out))
    print(f"\nraw stacks: {out}")


if __name__ == "__main__":
    main()
