"""Sandbox overhead on realistic work: the `workload_overhead` phase's workloads and table.

`sandbox_overhead_pct` times a syscall loop, the worst case for seccomp and Landlock; a user
asks what confinement costs on what notebooks actually do. Each workload is timed INSIDE the
kernel (perf_counter around the work, the cell's value is the milliseconds) so the figures
compare the sandbox, not the transports: the same zygote confined under two profiles, the same
zygote unconfined (a second daemon with `confine = false`), and ipykernel 7 as the reference
people know. Systems alternate inside every round so load drifts hit them all alike.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Callable
from typing import Any

from kerneld_bench.metrics import percentile
from kerneld_bench.sides import IpyKernel, KerneldSide, kd_execute, result_text

SYSTEMS = ("default", "data-science", "unconfined", "ipykernel")
CONFINED = ("default", "data-science")
BASE = "unconfined"

# run once per kernel; each _kb_w_* returns the ms of its work
WORKLOAD_CODE = """\
import time as _kb_t, sys as _kb_sys
_kb_preloaded = [m for m in ("pandas", "matplotlib.pyplot") if m in _kb_sys.modules]
def _kb_w_pandas():
    import numpy as np, pandas as pd
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"k": rng.integers(0, 100, 10**5), "v": rng.random(10**5)})
    t = _kb_t.perf_counter()
    df.groupby("k")["v"].agg(["sum", "mean", "count"])
    return (_kb_t.perf_counter() - t) * 1000
def _kb_w_matmul():
    import numpy as np
    a = np.random.default_rng(0).random((1000, 1000))
    t = _kb_t.perf_counter()
    a @ a
    return (_kb_t.perf_counter() - t) * 1000
def _kb_w_files(n=2000):
    import os, shutil, tempfile
    # tmpfs on every system (the sandbox's /tmp is a private tmpfs, the host's may be a
    # disk): the sandbox's cost, not the medium's, is what the row compares
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = tempfile.mkdtemp(dir=shm)
    data = b"x" * 512
    t = _kb_t.perf_counter()
    for i in range(n):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(data)
    for i in range(n):
        with open(os.path.join(d, f"f{i}"), "rb") as f:
            f.read()
    ms = (_kb_t.perf_counter() - t) * 1000
    shutil.rmtree(d)
    return ms
def _kb_w_plot():
    import io
    t = _kb_t.perf_counter()
    import matplotlib.pyplot as plt
    fig = plt.figure()
    plt.plot(range(1000), [i * i for i in range(1000)])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return (_kb_t.perf_counter() - t) * 1000
def _kb_w_loop(n=2_000_000):
    t = _kb_t.perf_counter()
    s = 0
    for i in range(n):
        s += i * i
    return (_kb_t.perf_counter() - t) * 1000
"""

# the first plot of a fresh kernel: imports pyplot (unless preloaded), fonts, Agg's first draw
FIRST_PLOT_CODE = WORKLOAD_CODE + "_kb_w_plot()"

WORKLOADS = {                       # table row -> cell run on a prepared kernel
    "pandas_groupby": "_kb_w_pandas()",
    "numpy_matmul_1000": "_kb_w_matmul()",
    "files_2000_write_read": "_kb_w_files()",
    "plot_later_png": "_kb_w_plot()",
    "python_loop": "_kb_w_loop()",
}
NEEDS = {"pandas_groupby": "pandas", "plot_later_png": "matplotlib",
         "plot_first_png": "matplotlib"}
ROWS = ("pandas_groupby", "numpy_matmul_1000", "files_2000_write_read", "plot_first_png",
        "plot_later_png", "python_loop")


async def ipy_value(k: IpyKernel, code: str, timeout: float = 120.0) -> str:
    """Run `code` on the ipykernel peer and return its execute_result's text/plain
    (`IpyKernel.execute` only checks a result, it does not return it)."""
    msg_id = k.kc.execute(code, store_history=True)
    reply, text = False, None
    while not (reply and text is not None):
        sock, msg = await k._next(timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if sock is k.shell and msg["msg_type"] == "execute_reply":
            if msg["content"]["status"] != "ok":
                raise RuntimeError(f"ipykernel execution failed: {msg['content'].get('ename')}: "
                                   f"{msg['content'].get('evalue')}")
            reply = True
        elif msg["msg_type"] == "execute_result":
            text = msg["content"]["data"].get("text/plain", "")
    return str(text)


async def measure(kd: KerneldSide, unconfined: KerneldSide, ipy: IpyKernel, rounds: int,
                  say: Callable[[str], None]) -> dict[str, Any]:
    """Per workload per system: the samples (ms), p50 and pct over unconfined."""
    async def kd_value(client: Any, kid: str, code: str) -> str:
        return result_text(await kd_execute(client, kid, code)) or ""

    kernels: dict[str, tuple[Any, str]] = {
        "default": (kd.client, await kd.client.create_kernel()),
        "data-science": (kd.client, await kd.client.create_kernel(profile="data-science")),
        "unconfined": (unconfined.client, await unconfined.client.create_kernel()),
    }
    samples: dict[str, dict[str, list[float]]] = {r: {s: [] for s in SYSTEMS} for r in ROWS}
    preloaded: dict[str, Any] = {}
    pandas_import_ms: dict[str, float] = {}
    try:
        for name, (client, kid) in kernels.items():
            await kd_value(client, kid, WORKLOAD_CODE)
            preloaded[name] = ast.literal_eval(await kd_value(client, kid, "_kb_preloaded"))
        await ipy_value(ipy, WORKLOAD_CODE + "0")
        has = ast.literal_eval(await ipy_value(ipy, "import importlib.util as _u; "
                                               "[m for m in ('pandas', 'matplotlib') "
                                               "if _u.find_spec(m)]"))
        preloaded["ipykernel"] = []

        async def on(system: str, code: str) -> float:
            if system == "ipykernel":
                return float(await ipy_value(ipy, code))
            client, kid = kernels[system]
            return float(await kd_value(client, kid, code))

        # warm-up: the first call of each imports what it needs (pandas: timed apart here)
        for system in SYSTEMS:
            if system != "ipykernel" or "pandas" in has:
                t = time.perf_counter()
                await on(system, "_kb_w_pandas()")
                pandas_import_ms[system] = round((time.perf_counter() - t) * 1000, 1)
            for row, code in WORKLOADS.items():
                if system == "ipykernel" and NEEDS.get(row, "numpy") not in has + ["numpy"]:
                    continue
                await on(system, code)
        for i in range(rounds):
            order = SYSTEMS[i % 4:] + SYSTEMS[:i % 4]
            for row, code in WORKLOADS.items():
                for system in order:
                    if system == "ipykernel" and NEEDS.get(row, "numpy") not in has + ["numpy"]:
                        continue
                    samples[row][system].append(await on(system, code))
            for system in order:                               # a fresh kernel per round
                if system == "ipykernel":
                    continue        # the peer lacks matplotlib in .venv: never a fresh one
                side = unconfined if system == BASE else kd
                profile = {} if system == BASE else {"profile": system}
                kid = await side.client.create_kernel(**profile)
                try:
                    samples["plot_first_png"][system].append(
                        float(await kd_value(side.client, kid, FIRST_PLOT_CODE)))
                finally:
                    await side.client.destroy_kernel(kid)
            say(f"workload_overhead round {i + 1}/{rounds} done")
    finally:
        for name, (client, kid) in kernels.items():
            await client.destroy_kernel(kid)
    table: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        p50 = {s: round(percentile(v, 50), 3) for s, v in samples[row].items() if v}
        base = p50.get(BASE)
        table[row] = {s: {"p50_ms": v, "pct_over_unconfined":
                          round((v / base - 1) * 100, 1) if base else None}
                      for s, v in p50.items()}
        table[row]["samples_ms"] = {s: [round(x, 3) for x in v]
                                    for s, v in samples[row].items() if v}
    return {"table": table, "preloaded": preloaded, "ipykernel_has": has,
            "warmup_pandas_ms_incl_import": pandas_import_ms, "rounds": rounds}


def worst_pct(result: dict[str, Any]) -> float:
    """The worst workload's p50 % over unconfined, of both confined profiles."""
    pcts = [float(cell["pct_over_unconfined"]) for row in result["table"].values()
            for s, cell in row.items()
            if s in CONFINED and cell["pct_over_unconfined"] is not None]
    if not pcts:
        raise RuntimeError("no workload has both a confined and an unconfined figure")
    return max(pcts)


def render(result: dict[str, Any]) -> list[str]:
    """The table as text lines: p50 ms (and % over unconfined) per workload per system."""
    lines = [f"{'workload':<24}" + "".join(f"{s:>22}" for s in SYSTEMS)]
    for row, cells in result["table"].items():
        text = f"{row:<24}"
        for s in SYSTEMS:
            cell = cells.get(s)
            if cell is None:
                text += f"{'n/a':>22}"
            elif s == BASE:
                text += f"{cell['p50_ms']:>12.2f} ms (base)"
            else:
                pct = cell["pct_over_unconfined"]
                text += f"{cell['p50_ms']:>10.2f} ms {pct:>+7.1f}%" if pct is not None else \
                    f"{cell['p50_ms']:>13.2f} ms     "
        lines.append(text)
    return lines
