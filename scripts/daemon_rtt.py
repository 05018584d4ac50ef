#!/usr/bin/env python3
"""execute("1+1") round trip, side by side: embedded KernelManager vs. client → daemon →
kernel → client (AsyncClient and the sync Client), plus the daemon front alone (ping_kernel).

Starts its own daemons on temporary sockets (confined, then unconfined), alternates the
measurements in rounds (machines here are shared: compare within one run), prints p50/p99.

    .venv/bin/python scripts/daemon_rtt.py [--rounds 3] [--n 1500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kerneld
from kerneld import KernelManager
from kerneld.config import ManagerConfig

ROOT = Path(__file__).resolve().parent.parent


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def embedded(confine: bool, n: int) -> list[float]:
    async with KernelManager(ManagerConfig(confine=confine, preload=())) as mgr:
        kid = await mgr.create_kernel()
        for _ in range(300):
            await mgr.execute(kid, "1+1")
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await mgr.execute(kid, "1+1")
            out.append(time.perf_counter() - t)
        return out


async def through_daemon(address: str, n: int) -> tuple[list[float], list[float]]:
    async with kerneld.connect_async(address) as client:
        kid = await client.create_kernel()
        for _ in range(300):
            await client.execute(kid, "1+1")
        rtt, front = [], []
        for _ in range(n):
            t = time.perf_counter()
            await client.execute(kid, "1+1")
            rtt.append(time.perf_counter() - t)
        for _ in range(n):
            t = time.perf_counter()
            await client.ping_kernel(kid)
            front.append(time.perf_counter() - t)
        await client.destroy_kernel(kid)
        return rtt, front


def through_daemon_sync(address: str, n: int) -> list[float]:
    with kerneld.connect(address) as client:
        kid = client.create_kernel()
        for _ in range(300):
            client.execute(kid, "1+1")
        out = []
        for _ in range(n):
            t = time.perf_counter()
            client.execute(kid, "1+1")
            out.append(time.perf_counter() - t)
        client.destroy_kernel(kid)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=1500)
    args = parser.parse_args()
    for confine in (True, False):
        tmp = tempfile.mkdtemp(prefix="kd-rtt-")
        config = Path(tmp) / "kerneld.toml"
        config.write_text(f"[runtime]\npreload = []\n[kernels]\nconfine = {str(confine).lower()}\n")
        address = f"ipc://{tmp}/kerneld.sock"
        daemon = subprocess.Popen([sys.executable, "-m", "kerneld", "serve", "--config",
                                   str(config), "--address", address],
                                  cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(f"{tmp}/kerneld.sock") and time.monotonic() < deadline:
                time.sleep(0.05)
            kerneld.connect(address, connect_timeout=30).close()
            rows: dict[str, list[float]] = {"embedded": [], "daemon, AsyncClient": [],
                                            "daemon, Client (sync)": [],
                                            "daemon front only (ping_kernel)": []}
            for _ in range(args.rounds):
                rows["embedded"] += asyncio.run(embedded(confine, args.n))
                rtt, front = asyncio.run(through_daemon(address, args.n))
                rows["daemon, AsyncClient"] += rtt
                rows["daemon front only (ping_kernel)"] += front
                rows["daemon, Client (sync)"] += through_daemon_sync(address, args.n)
            print(f"confine={confine}: execute('1+1'), {args.rounds} alternating rounds "
                  f"x {args.n}; load average {os.getloadavg()[0]:.2f}")
            for name, samples in rows.items():
                print(f"  {name:34s} p50 {pct(samples, .5):.3f} ms   p99 {pct(samples, .99):.3f} ms")
        finally:
            daemon.terminate()
            daemon.wait(15)
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
