"""The agent session (issue 15): what an LLM agent's code tool does per task, end to end.

One session = get a kernel, run five cells (imports; a 10^5-row frame; statistics; a plot
saved as PNG; a printed summary), destroy the kernel. The wall time from asking for a kernel
to the kernel being gone is the figure, because that is what the agent waits for.

Sides, alternating in one run:
- kerneld through the daemon, without a pool (`agent_session_ms`) and with one
  (`agent_session_pool_ms`);
- ipykernel "bench-style": our own jupyter_client loop, as the other ipykernel figures
  (`IpyKernel`: no `wait_for_ready`, 2 ms reconnect);
- ipykernel "stock": what a program using jupyter_client as documented does
  (`start_kernel`, `wait_for_ready`, `execute_interactive` per cell, `shutdown_kernel`).

The peer needs pandas and matplotlib next to ipykernel: it runs on the clients' side
environment (`.venv-clients`, built by `make test-envs`), registered for the run as the
kernelspec `kerneld-bench-peer` in the run's own JUPYTER_PATH. Both sides execute the same
cells with the `agg` backend and an explicit `savefig`, so each does the same plotting work.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from kerneld_bench.procs import Reaper
from kerneld_bench.sides import kd_execute, start_ipykernel

AGENT_CELLS = (
    ("import numpy as np\nimport pandas as pd\nimport matplotlib\nmatplotlib.use('agg')\n"
     "import matplotlib.pyplot as plt"),
    ("rng = np.random.default_rng(0)\n"
     "df = pd.DataFrame({'group': rng.integers(0, 20, 100_000), 'x': rng.random(100_000),\n"
     "                   'y': rng.normal(size=100_000)})"),
    ("stats = df.groupby('group').agg(x_mean=('x', 'mean'), y_std=('y', 'std'),\n"
     "                                n=('x', 'size'))\nlen(stats)"),
    ("import io\nfig, ax = plt.subplots()\nax.plot(stats.index, stats.x_mean)\n"
     "buf = io.BytesIO()\nfig.savefig(buf, format='png')\nplt.close(fig)\n"
     "len(buf.getvalue()) > 0"),
    "print(stats.describe().to_string())\nround(float(df.y.mean()), 6)",
)
PEER_KERNEL = "kerneld-bench-peer"


def peer_python(checkout: str) -> str | None:
    """The clients' side environment's python, if it has what the cells import."""
    python = os.path.join(checkout, ".venv-clients", "bin", "python")
    if not os.access(python, os.X_OK):
        return None
    probe = subprocess.run([python, "-c", "import ipykernel, pandas, matplotlib"],
                           capture_output=True, check=False, timeout=60)
    return python if probe.returncode == 0 else None


def register_peer(workdir: str, python: str) -> None:
    """A kernelspec for the peer in the run's own JUPYTER_PATH (first in the search path; the
    other ipykernel figures keep using `python3` from the daemon's environment)."""
    spec_dir = os.path.join(workdir, "jupyter", "kernels", PEER_KERNEL)
    os.makedirs(spec_dir, exist_ok=True)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump({"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "ipykernel (bench peer)", "language": "python"}, f)
    paths = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.path.join(workdir, "jupyter") + (
        os.pathsep + paths if paths else "")


async def kerneld_session(client: Any) -> float:
    """ms: create_kernel → five cells → destroy_kernel, through the daemon."""
    t0 = time.perf_counter()
    kid = await client.create_kernel()
    try:
        for cell in AGENT_CELLS:
            await kd_execute(client, kid, cell)
    finally:
        await client.destroy_kernel(kid)
    return (time.perf_counter() - t0) * 1000


async def ipykernel_bench_session(reaper: Reaper, workdir: str) -> float:
    """ms: the bench's own ipykernel driver (its start runs `1+1` first: ≈ 1 ms)."""
    t0 = time.perf_counter()
    kernel, _ = await start_ipykernel(reaper, workdir, kernel_name=PEER_KERNEL)
    try:
        for cell in AGENT_CELLS:
            await kernel.execute(cell)
    finally:
        await kernel.close()
    return (time.perf_counter() - t0) * 1000


async def ipykernel_stock_session(reaper: Reaper) -> float:
    """ms: jupyter_client used as its documentation shows, default settings."""
    from jupyter_client.manager import AsyncKernelManager
    t0 = time.perf_counter()
    km = AsyncKernelManager(kernel_name=PEER_KERNEL)
    await km.start_kernel()
    reaper.track(km.provisioner.process.pid)  # type: ignore[union-attr]
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        for cell in AGENT_CELLS:
            reply = await kc.execute_interactive(cell, timeout=120,
                                                 output_hook=lambda msg: None)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"ipykernel (stock) cell failed: {reply['content']}")
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    return (time.perf_counter() - t0) * 1000
