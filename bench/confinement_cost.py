"""What confinement costs: create → first `1+1` result and the `1+1` round trip, confined vs
unconfined, embedded, alternating in one run (issue 3's closing-note figure).

    .venv/bin/python bench/confinement_cost.py [ROUNDS]

Needs root (confined kernels). The unconfined side is `ManagerConfig(confine=False)`: the same
zygote-forked workers without `sandbox.apply`; never use that for untrusted code.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from kerneld import KernelManager
from kerneld.config import ManagerConfig


async def main(rounds: int) -> None:
    managers = {confine: KernelManager(ManagerConfig(confine=confine)) for confine in (True, False)}
    for mgr in managers.values():
        await mgr.start()
    create: dict[bool, list[float]] = {c: [] for c in managers}
    rtt: dict[bool, list[float]] = {c: [] for c in managers}
    try:
        for _ in range(rounds):
            for confine, mgr in managers.items():
                t = time.perf_counter()
                kid = await mgr.create_kernel()
                await mgr.execute(kid, "1+1")
                create[confine].append(time.perf_counter() - t)
                for _ in range(100):
                    t = time.perf_counter()
                    await mgr.execute(kid, "1+1")
                    rtt[confine].append(time.perf_counter() - t)
                await mgr.destroy_kernel(kid)
    finally:
        for mgr in managers.values():
            await mgr.close()
    for confine in managers:
        print(f"confine={confine}: create -> first result p50 "
              f"{statistics.median(create[confine]) * 1e3:.1f} ms, "
              f"execute 1+1 p50 {statistics.median(rtt[confine]) * 1e3:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 15))
