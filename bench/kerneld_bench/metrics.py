"""The metrics, their targets (BASELINES.md) and the statistics of the report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024

MB = 1_000_000
MEMORY_BUDGET = 20 * 1024 * MiB   # "held at once within 20 GiB"
CALL_TIMEOUT = 120.0              # no daemon call of the bench may hang for ever
CLEANUP_TIMEOUT = 60.0            # then the synchronous Reaper takes over

# --------------------------------------------------------------------------- metrics and targets


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_better: bool
    targets: tuple[tuple[str, str, float], ...] = ()   # (what, op, value); what: p50|p99|ratio
    peer: bool = True                                  # does ipykernel have this figure?


METRICS = (
    Metric("create_cold_ms", "ms", False, (("p50", "<=", 20), ("ratio", ">=", 25))),
    # ipykernel has no pool: its figure is null, the ratio is against its cold start
    Metric("create_pool_ms", "ms", False, (("p50", "<=", 3), ("ratio", ">=", 150)), peer=False),
    # the pool as a server sees it: served after the daemon and pool idled 0.3 s, and the
    # private memory of a kernel served from the pool (no more than a fresh one's)
    Metric("create_pool_idle_ms", "ms", False, (("p50", "<=", 1.5),), peer=False),
    Metric("pool_idle_uss_mib", "MiB", False, (("p50", "<=", 6),), peer=False),
    Metric("rtt_ms", "ms", False, (("p50", "<=", 0.6), ("ratio", ">=", 6))),
    Metric("rtt_assign_ms", "ms", False),
    Metric("throughput_1x1_per_s", "exec/s", True),
    Metric("throughput_8x8_per_s", "exec/s", True),
    Metric("stream_mb_per_s", "MB/s", True, (("p50", ">=", 100),)),
    Metric("stream_print_mb_per_s", "MB/s", True, (("p50", ">=", 100),)),
    Metric("stream_rss_growth_mib", "MiB", False, (("p99", "<=", 64),), peer=False),
    Metric("idle_uss_mib", "MiB", False, (("p50", "<=", 6), ("ratio", ">=", 6))),
    Metric("idle_pss_mib", "MiB", False),
    Metric("max_idle_kernels", "kernels", True, (("p50", ">=", 3000),), peer=False),
    Metric("sandbox_overhead_pct", "%", False, (("p50", "<=", 5),), peer=False),
    # realistic work (kerneld_bench.overhead): the worst workload's p50 % over the same
    # zygote unconfined, of the default and data-science profiles
    Metric("workload_overhead_max_pct", "%", False, (("p50", "<=", 3),), peer=False),
    # the agent session (kerneld_bench.agent): kerneld without / with a pool against ipykernel
    # driven bench-style, and kerneld with a pool against ipykernel used stock
    Metric("agent_session_ms", "ms", False, (("ratio", ">=", 4),)),
    Metric("agent_session_pool_ms", "ms", False, (("ratio", ">=", 4),)),
    Metric("agent_session_stock_ms", "ms", False, (("ratio", ">=", 6),)),
)


@dataclass(frozen=True)
class Counts:
    cold_kerneld: int        # create_cold samples (kerneld)
    cold_ipykernel: int      # create_cold samples (ipykernel; each ~0.5 s)
    pool: int                # create_pool samples
    pool_size: int
    rtt: int                 # round trips per round (kerneld; ipykernel does a quarter)
    rounds: int              # alternation rounds for rtt / throughput / overhead
    seconds: float           # duration of one throughput round
    clients: int             # the "8" of 8×8
    stream_mib: int          # MiB per streaming execution (the default profile caps at 8 MiB)
    stream_reps: int
    idle_kernels: int        # kernels held at once
    syscall_iters: int       # iterations of the syscall loop (7 syscalls each) per round
    overhead_rounds: int     # alternating confined / in-process rounds (short, many: robust)
    extrapolate: bool        # max_idle_kernels from measured memory instead of a real count
    agent_sessions: int = 3  # agent sessions per side (kerneld_bench.agent)
    workload_rounds: int = 3  # alternating rounds of the workload_overhead phase


MODES = {
    "smoke": Counts(3, 1, 3, 1, 20, 1, 0.2, 2, 2, 1, 3, 2000, 1, True, agent_sessions=1,
                    workload_rounds=1),
    "quick": Counts(15, 5, 20, 4, 300, 3, 0.5, 8, 7, 3, 100, 8000, 12, True),
    "full": Counts(60, 20, 100, 8, 2000, 8, 2.0, 8, 7, 10, 3000, 10000, 40, False,
                   agent_sessions=10, workload_rounds=8),
}

# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    data = sorted(values)
    if not data:
        raise ValueError("no samples")
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(values: list[float], higher_better: bool) -> dict[str, float] | None:
    if not values:
        return None
    tail = percentile(values, 1 if higher_better else 99)
    return {"p50": round(percentile(values, 50), 4), "p99": round(tail, 4)}


def ratio(metric: Metric, kd: dict[str, float] | None, peer: dict[str, float] | None
          ) -> float | None:
    if not kd or not peer or not kd["p50"] or not peer["p50"]:
        return None
    value = kd["p50"] / peer["p50"] if metric.higher_better else peer["p50"] / kd["p50"]
    return round(value, 2)


def evaluate(metric: Metric, entry: dict[str, Any]) -> tuple[str, list[str]]:
    """('met' | 'MISSED' | 'n/a' | 'ERROR', [target texts])."""
    texts = [f"{what}{'≤' if op == '<=' else '≥'}{value:g}{'×' if what == 'ratio' else ''}"
             for what, op, value in metric.targets]
    if not metric.targets:
        return "n/a", texts
    kd = entry["kerneld"]
    if kd is None:
        return "ERROR", texts
    ok = True
    for what, op, value in metric.targets:
        got = entry["ratio"] if what == "ratio" else kd[what]
        if got is None or (op == "<=" and not got <= value) or (op == ">=" and not got >= value):
            ok = False
    return ("met" if ok else "MISSED"), texts
