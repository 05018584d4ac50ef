"""`kerneld bench --hypha`: what Hypha costs, against a direct `kerneld.connect()` round trip in
the same run, and how fast kernels are placed across two hosts.

Why a side of its own: remote users reach kerneld through a Hypha server and `kerneld hypha`
(docs/hypha.md), so their round trip is caller → server → attach process → daemon → kernel and
back, twice for `executeCode` + `getExecutionResult`. Measuring it next to the direct
round trip on the same kernel, alternating, shows the fabric's share.

Process model: a Hypha server from the side environment `.venv-hypha` on 127.0.0.1 (the
tests' harness, `tests/hypha/_fleet.py`), two private confined daemons (`KerneldSide`, default
profile, no pool), a `kerneld hypha` process for each (clients kerneld-a, kerneld-b of the
workspace kerneld-fleet), and one user connection (a token of its own workspace, as a real
caller). Without `.venv-hypha` (scripts/setup-test-envs.sh builds it) the run is skipped with
a message and exit status 0. Every process is ended on exit.

Metrics (samples of the two ways alternate inside each round):
- `hypha_execute_ms`: `executeCode` + `getExecutionResult` of `1+1` through Hypha, vs
  `AsyncClient.execute` of `1+1` directly, on the same kernel;
- `hypha_stream_ms`: `streamExecution` of `1+1` read to its `complete`, vs
  `execute_stream` read to its end directly;
- `hypha_create_per_s`: kernels created per second across the two hosts, one after the other,
  each placed by `select:min:getEngineLoad` (then each kernel's first `1+1`); the spread over
  the hosts is reported (it must be even: placement follows the load).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kerneld_bench.metrics import Metric, summarize
from kerneld_bench.procs import Reaper
from kerneld_bench.sides import KerneldSide, kd_execute
from kerneld_bench.workloads import bounded

ROOT = Path(__file__).resolve().parents[2]
HYPHA_ENV = ROOT / ".venv-hypha" / "bin" / "python"
VIA, DIRECT = "hypha", "direct"

HYPHA_METRICS = (
    Metric("hypha_execute_ms", "ms", False, peer=True),
    Metric("hypha_stream_ms", "ms", False, peer=True),
    Metric("hypha_create_per_s", "kernels/s", True, peer=False),
)
# (round trips per way per round, rounds, kernels created)
COUNTS = {"smoke": (5, 1, 4), "quick": (50, 3, 16), "full": (200, 5, 40)}
SELECT = {"mode": "select:min:getEngineLoad"}


class HyphaBench:
    def __init__(self, mode: str, reaper: Reaper, workdir: str) -> None:
        self.mode, self.reaper, self.workdir = mode, reaper, workdir
        self.rtt, self.rounds, self.creates = COUNTS[mode]
        self.samples: dict[str, dict[str, list[float]]] = {
            m.name: {VIA: [], DIRECT: []} for m in HYPHA_METRICS}
        self.details: dict[str, Any] = {"mode": mode, "errors": {}, "notes": {}}

    def add(self, name: str, way: str, value: float) -> None:
        self.samples[name][way].append(value)

    async def run(self) -> None:
        sys.path.insert(0, str(ROOT / "tests" / "hypha"))
        from _fleet import FLEET, AttachProcess, HyphaServer, fleet_token
        from hypha_rpc import connect_to_server
        server = HyphaServer()
        self.reaper.track(server.proc.pid)
        sides = [KerneldSide(self.reaper, self.workdir, f"kerneld-{n}", pool_size=0)
                 for n in ("a", "b")]
        attached: list[Any] = []
        user: Any = None
        try:
            await asyncio.gather(asyncio.to_thread(server.wait_ready),
                                 *(side.start() for side in sides))
            token = await fleet_token(server)
            for side in sides:
                attached.append(AttachProcess(server, token, side.address, side.name))
                self.reaper.track(attached[-1].proc.pid)
            for proc in attached:
                await asyncio.to_thread(proc.wait_log, "registered service")
            user = await connect_to_server({"server_url": server.url,
                                            "token": server.token("bench"),
                                            "method_timeout": 30})
            await self.round_trips(user, sides[0], f"{FLEET}/kerneld-a:kerneld")
            await self.create_rate(user, FLEET)
        finally:
            if user is not None:
                await bounded(user.disconnect())
            for proc in attached:
                await asyncio.to_thread(proc.close)
            for side in sides:
                await bounded(side.close())
            await asyncio.to_thread(server.close)

    async def round_trips(self, user: Any, side: KerneldSide, instance: str) -> None:
        svc = await user.get_service(instance)
        kernel = await svc.createKernel({})
        kid = kernel["id"]
        local_kid = f"hypha.{kid}"   # the same kernel in its daemon (docs/hypha.md)
        client = side.client

        async def via_execute() -> None:
            run = await svc.executeCode({"kernelId": kid, "code": "1+1"})
            out = await svc.getExecutionResult({"kernelId": kid,
                                                "executionId": run["execution_id"]})
            if out[0]["data"]["data"]["text/plain"] != "2":
                raise RuntimeError(f"unexpected result {out!r:.200}")

        async def via_stream() -> None:
            events = [e async for e in await svc.streamExecution({"kernelId": kid,
                                                                  "code": "1+1"})]
            if events[-1].get("status") != "success":
                raise RuntimeError(f"unexpected stream {events!r:.200}")

        async def direct_stream() -> None:
            async for _ in client.execute_stream(local_kid, "1+1"):
                pass

        async def direct_execute() -> None:
            await kd_execute(client, local_kid, "1+1", "2")

        ways: dict[str, tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = {
            "hypha_execute_ms": (via_execute, direct_execute),
            "hypha_stream_ms": (via_stream, direct_stream)}
        for name, (via, direct) in ways.items():
            await via()
            await direct()                       # warm-up
            for r in range(self.rounds):
                order = ((VIA, via), (DIRECT, direct))
                for way, fn in order if r % 2 == 0 else order[::-1]:
                    for _ in range(self.rtt):
                        t0 = time.perf_counter()
                        await fn()
                        self.add(name, way, (time.perf_counter() - t0) * 1000)
        await svc.destroyKernel({"kernelId": kid})
        self.details["notes"]["round_trips"] = (
            f"`1+1` on one idle confined kernel of host kerneld-a: via Hypha (user → server → "
            f"`kerneld hypha` → daemon) vs `kerneld.connect_async()` to the same daemon; "
            f"{self.rtt} per way per round, {self.rounds} alternating rounds")

    async def create_rate(self, user: Any, fleet: str) -> None:
        placed: list[str] = []
        made: list[tuple[Any, str]] = []

        async def one() -> None:
            svc = await user.get_service(f"{fleet}/kerneld", SELECT)
            kernel = await svc.createKernel({})
            made.append((svc, kernel["id"]))
            placed.append(kernel["host"])
            run = await svc.executeCode({"kernelId": kernel["id"], "code": "1+1"})
            await svc.getExecutionResult({"kernelId": kernel["id"],
                                          "executionId": run["execution_id"]})

        t0 = time.perf_counter()
        for _ in range(self.creates):
            await one()
        elapsed = time.perf_counter() - t0
        self.add("hypha_create_per_s", VIA, len(placed) / elapsed)
        self.details["placement"] = dict(Counter(placed))
        for svc, kid in made:
            await svc.destroyKernel({"kernelId": kid})
        self.details["notes"]["hypha_create_per_s"] = (
            f"{self.creates} kernels one after the other, each placed by select:min:getEngineLoad "
            "(Hypha asks both hosts' getEngineLoad) and answering its first `1+1`; spread over "
            "the hosts in details.placement. Placements made at the same instant see the same "
            "loads and may all go to one host")


def build_report(bench: HyphaBench, machine: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for m in HYPHA_METRICS:
        via = summarize(bench.samples[m.name][VIA], m.higher_better)
        direct = summarize(bench.samples[m.name][DIRECT], m.higher_better) if m.peer else None
        overhead = (round(via["p50"] / direct["p50"], 2)
                    if via and direct and direct["p50"] else None)
        metrics[m.name] = {"unit": m.unit, VIA: via, DIRECT: direct,
                           "hypha_over_direct": overhead}
    return {"machine": machine, "metrics": metrics, "details": bench.details}


def render_table(report: dict[str, Any]) -> str:
    from kerneld_bench.report import _fmt
    head = ("metric", "unit", "via hypha p50", "p99", "direct p50", "p99", "hypha/direct")
    rows = [head]
    for name, e in report["metrics"].items():
        via, direct = e[VIA] or {}, e[DIRECT] or {}
        rows.append((name, e["unit"], _fmt(via.get("p50")), _fmt(via.get("p99")),
                     _fmt(direct.get("p50")), _fmt(direct.get("p99")),
                     "—" if e["hypha_over_direct"] is None else f"{e['hypha_over_direct']:g}×"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                       for j, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    d = report["details"]
    lines.append("")
    lines.append(f"mode: {d['mode']}; placement of new kernels: {d.get('placement')}")
    for phase, error in d["errors"].items():
        lines.append(f"ERROR in {phase}: {error}")
    return "\n".join(lines)


def main(args: argparse.Namespace, mode: str) -> int:
    """`kerneld bench --hypha [--smoke|--quick] [--json FILE]` (report.py parses the
    arguments and hands them here)."""
    from kerneld_bench.report import run_and_report
    if not HYPHA_ENV.exists():
        print(f"kerneld bench --hypha: skipped: no Hypha server environment at {HYPHA_ENV} "
              "(build it with scripts/setup-test-envs.sh)", file=sys.stderr)
        return 0
    try:
        import hypha_rpc  # noqa: F401
    except ImportError:
        print("kerneld bench --hypha: skipped: hypha-rpc is not installed (kerneld[hypha])",
              file=sys.stderr)
        return 0
    return run_and_report(lambda reaper, workdir: HyphaBench(mode, reaper, workdir), args,
                          build_report, render_table)
