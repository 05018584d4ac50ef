"""Load on one real daemon: many clients streaming at once, many creates at once, many idle
kernels held. Each test reports its figures (terminal summary; `$KERNELD_FIGURES`), and a
bystander client (tests/_watch.py) pings the daemon from its own process throughout.

- 20 clients × 50 streamed executions, all submitted at once on 10 shared kernels (two clients
  per kernel, so their executions interleave in each kernel's FIFO): every execution prints a
  sequence of lines tagged with its own name; no line may be lost, none may reach another
  stream, and each stream's lines come in order.
- 100 creates at once from 10 clients: all succeed; their latencies are reported.
- `KERNELD_LOAD_KERNELS` idle kernels (default 300, the documented run 2,000) held at once:
  all idle and working, daemon RSS and open fds, the kernels' memory, creation and destruction
  times.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import psutil
import pytest

import kerneld
from tests import _figures
from tests._watch import Watch, daemon_fds
from tests.integration._daemon import Daemon
from tests.load.conftest import HELD_KERNELS

CLIENTS, STREAMS, LINES, SHARED_KERNELS = 20, 50, 20, 10
CREATES, CREATE_CLIENTS = 100, 10


def _cell(tag: str) -> str:
    return f"for i in range({LINES}):\n    print({tag!r}, i, flush=i % 5 == 4)"


def _expected(tag: str) -> list[str]:
    return [f"{tag} {i}" for i in range(LINES)]


def _ms(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    if not s:
        return {}
    return {"p50_ms": round(s[len(s) // 2] * 1000, 1),
            "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 1),
            "max_ms": round(s[-1] * 1000, 1)}


def _bystander(section: str, watch: Watch,
               phases: list[tuple[str, float, float]] | None = None) -> None:
    """The bystander's figures; with `phases` (name, wall start, wall end), its pings over
    100 ms counted by the phase they fell in."""
    w = watch.stop()
    _figures.record(section, "bystander pings", {k: w.get(k) for k in (
        "pings", "timeouts", "over_limit", "p50_ms", "p99_ms", "max_ms")})
    if phases:
        by_phase: dict[str, list[float]] = {}
        for wall, ms in w.get("slow", []):
            name = next((n for n, a, b in phases if a <= wall <= b), "between")
            by_phase.setdefault(name, []).append(ms)
        _figures.record(section, "bystander pings over 100 ms by phase",
                        {n: f"{len(v)} (max {max(v):.0f} ms)" for n, v in by_phase.items()}
                        or "none")


def _rss(daemon: Daemon) -> float:
    return round(psutil.Process(daemon.pid).memory_info().rss / 2**20, 1)


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------ streams


async def _stream_one(client: Any, kernel_id: str, tag: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    stream = client.execute_stream(kernel_id, _cell(tag))
    text, foreign = [], []
    async for event in stream:
        if event.kernel_id != kernel_id:
            foreign.append(f"{tag}: event of kernel {event.kernel_id}")
        if event.type == "stream":
            text.append(event.data.get("text", ""))
        else:
            foreign.append(f"{tag}: unexpected {event.type} {event.data}")
    result = stream.result
    assert result is not None
    ids = {e.execution_id for e in result.outputs}
    if ids - {result.execution_id}:
        foreign.append(f"{tag}: events of executions {ids - {result.execution_id}}")
    return {"tag": tag, "lines": "".join(text).splitlines(), "status": result.status,
            "foreign": foreign, "seconds": time.perf_counter() - t0}


async def _streams(address: str) -> tuple[list[dict[str, Any]], float]:
    async with kerneld.connect_async(address, timeout=300) as admin:
        kernels = await asyncio.gather(*(admin.create_kernel(id=f"load-s{i}")
                                         for i in range(SHARED_KERNELS)))
        clients = [kerneld.connect_async(address, timeout=300) for _ in range(CLIENTS)]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            t0 = time.perf_counter()
            runs = await asyncio.gather(*(
                _stream_one(c, kernels[ci % SHARED_KERNELS], f"c{ci:02d}e{n:02d}")
                for ci, c in enumerate(clients) for n in range(STREAMS)))
            took = time.perf_counter() - t0
        finally:
            await asyncio.gather(*(c.close() for c in clients))
            await admin.destroy_all()
    return runs, took


@pytest.mark.timeout(300)
def test_20_clients_x_50_streams(daemon: Daemon) -> None:
    section = "load: 20 clients x 50 streamed executions"
    watch = Watch(daemon.address, daemon.pid, limit_ms=100)
    try:
        runs, took = asyncio.run(_streams(daemon.address))
    finally:
        _bystander(section, watch)
    lost = misrouted = disordered = 0
    problems = []
    for run in runs:
        expected, got = _expected(run["tag"]), run["lines"]
        mine = [line for line in got if line.split(" ")[0] == run["tag"]]
        misrouted += len(got) - len(mine) + len(run["foreign"])
        lost += len(set(expected) - set(mine))
        if mine != expected and set(mine) == set(expected):
            disordered += 1
        if run["status"] != "ok" or run["foreign"] or got != expected:
            problems.append(f"{run['tag']}: {run['status']} {run['foreign'][:2]} "
                            f"{got[:3]}…")
    record = _figures.record
    record(section, "executions", len(runs))
    record(section, "lines expected", len(runs) * LINES)
    record(section, "lost / misrouted / out of order", [lost, misrouted, disordered])
    record(section, "wall s", round(took, 2))
    record(section, "executions per s", round(len(runs) / took, 1))
    record(section, "stream latency (submit to result)", _ms([r["seconds"] for r in runs]))
    assert len(runs) == CLIENTS * STREAMS
    assert (lost, misrouted, disordered) == (0, 0, 0), "\n".join(problems[:20])
    assert not problems, "\n".join(problems[:20])


# ------------------------------------------------------------------ creates


async def _creates(address: str) -> tuple[list[Any], list[float], float, float]:
    clients = [kerneld.connect_async(address, timeout=300) for _ in range(CREATE_CLIENTS)]
    await asyncio.gather(*(c.connect() for c in clients))

    async def one(client: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            return await client.create_kernel(), time.perf_counter() - t0
        except kerneld.KernelError as exc:
            return exc, time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(one(clients[i % CREATE_CLIENTS])
                                          for i in range(CREATES)))
        took = time.perf_counter() - t0
        t1 = time.perf_counter()
        await clients[0].destroy_all()
        destroy = time.perf_counter() - t1
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return [o for o, _ in outcomes], [s for _, s in outcomes], took, destroy


@pytest.mark.timeout(300)
def test_100_concurrent_creates(daemon: Daemon) -> None:
    section = "load: 100 concurrent creates"
    watch = Watch(daemon.address, daemon.pid, limit_ms=100)
    try:
        results, latencies, took, destroy = asyncio.run(_creates(daemon.address))
    finally:
        _bystander(section, watch)
    failed = [r for r in results if not isinstance(r, str)]
    record = _figures.record
    record(section, "created / failed", [len(results) - len(failed), len(failed)])
    record(section, "wall s (all 100)", round(took, 2))
    record(section, "creates per s", round(len(results) / took, 1))
    record(section, "create latency", _ms(latencies))
    record(section, "destroy_all s", round(destroy, 2))
    assert not failed, failed[:5]
    assert len(set(results)) == CREATES


# ------------------------------------------------------------------ idle kernels held


async def _hold(address: str, daemon: Daemon, n: int, section: str,
                phases: list[tuple[str, float, float]]) -> None:
    record = _figures.record
    clients = [kerneld.connect_async(address, timeout=300) for _ in range(5)]
    await asyncio.gather(*(c.connect() for c in clients))
    gate = asyncio.Semaphore(24)
    failures: list[BaseException] = []

    async def create(i: int) -> str | None:
        async with gate:
            try:
                return await clients[i % len(clients)].create_kernel(id=f"held-{i}")
            except kerneld.KernelError as exc:
                failures.append(exc)
                return None
    admin = clients[0]
    try:
        rss0, fds0, mem0 = _rss(daemon), daemon_fds(daemon.pid), _mem_available()
        t0, wall = time.perf_counter(), time.time()
        ids = await asyncio.gather(*(create(i) for i in range(n)))
        created = time.perf_counter() - t0
        phases.append(("create", wall, time.time()))
        record(section, "kernels held", sum(1 for i in ids if i))
        record(section, "create failures", len(failures))
        record(section, "create all s", round(created, 1))
        record(section, "creates per s", round(n / created, 1))
        await asyncio.sleep(1.0)  # let them settle into idle
        wall = time.time()
        proc = psutil.Process(daemon.pid)
        proc.cpu_percent()
        await asyncio.sleep(3.0)
        record(section, "daemon CPU % while idle", proc.cpu_percent())
        phases.append(("idle", wall, time.time()))
        wall = time.time()
        t1 = time.perf_counter()
        kernels = await admin.list_kernels()
        record(section, "list_kernels ms", round((time.perf_counter() - t1) * 1000, 1))
        statuses: dict[str, int] = {}
        for k in kernels:
            statuses[k["status"]] = statuses.get(k["status"], 0) + 1
        memory = [k["memory_bytes"] for k in kernels if k["memory_bytes"]]
        rss1, fds1 = _rss(daemon), daemon_fds(daemon.pid)
        record(section, "statuses", statuses)
        record(section, "daemon RSS MiB (before, held)", [rss0, rss1])
        record(section, "daemon RSS per kernel KiB", round((rss1 - rss0) * 1024 / max(1, n), 1))
        record(section, "daemon open fds (before, held)", [fds0, fds1])
        record(section, "kernel memory MiB (mean, total)",
               [round(sum(memory) / max(1, len(memory)) / 2**20, 2),
                round(sum(memory) / 2**20, 1)])
        record(section, "host MemAvailable drop MiB", round((mem0 - _mem_available()) / 2**20))
        status = await admin.status()
        record(section, "daemon status kernels", status["kernels"])
        sample = random.Random(11).sample([i for i in ids if i], min(20, len(kernels)))
        t2 = time.perf_counter()
        results = await asyncio.gather(*(admin.execute(k, "6 * 7") for k in sample))
        record(section, "20 executes on held kernels ms", round((time.perf_counter() - t2)
                                                                 * 1000, 1))
        pings = []
        for _ in range(50):
            t = time.perf_counter()
            await admin.ping()
            pings.append(time.perf_counter() - t)
        record(section, "client ping while held", _ms(pings))
        phases.append(("queries", wall, time.time()))
        assert not failures, failures[:5]
        assert statuses == {"idle": n}, statuses
        assert all(r.status == "ok" and r.result["data"]["text/plain"] == "42" for r in results)
    finally:
        t4, wall = time.perf_counter(), time.time()
        destroyed = await admin.destroy_all()
        record(section, "destroy_all s", round(time.perf_counter() - t4, 1))
        phases.append(("destroy_all", wall, time.time()))
        record(section, "destroyed", destroyed)
        await asyncio.gather(*(c.close() for c in clients))
    await asyncio.sleep(0.5)
    record(section, "daemon open fds after", daemon_fds(daemon.pid))
    record(section, "daemon RSS MiB after", _rss(daemon))


@pytest.mark.timeout(300 + HELD_KERNELS * 0.5)
def test_idle_kernels_held(daemon: Daemon) -> None:
    section = f"load: {HELD_KERNELS} idle kernels held"
    watch = Watch(daemon.address, daemon.pid, limit_ms=100)
    t0 = time.perf_counter()
    phases: list[tuple[str, float, float]] = []
    try:
        asyncio.run(_hold(daemon.address, daemon, HELD_KERNELS, section, phases))
    finally:
        _bystander(section, watch, phases)
        _figures.record(section, "test s", round(time.perf_counter() - t0, 1))
    with kerneld.connect(daemon.address) as client:
        assert client.get_kernel_ids() == []
        assert client.ping()["pong"] is True
