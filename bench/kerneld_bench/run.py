"""The phases of a bench run (`Bench`), kerneld and ipykernel alternating in each."""

from __future__ import annotations

import ast
import asyncio
import functools
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from kerneld_bench import agent, overhead
from kerneld_bench.metrics import MB, MEMORY_BUDGET, METRICS, Counts, MiB
from kerneld_bench.procs import ProcTable, Reaper, RssSampler, maybe, tree_memory
from kerneld_bench.sides import (
    EmbeddedSide,
    IpyKernel,
    KerneldSide,
    kd_execute,
    kd_stream,
    result_text,
    start_ipykernel,
    start_ipykernels,
)
from kerneld_bench.workloads import (
    CHUNK_CODE,
    CONFINED_CODE,
    PRINT_CODE,
    SYSCALL_CODE,
    bounded,
    drive,
    timed,
)

# --------------------------------------------------------------------------- the run

CURVE_POINTS = (100, 500, 1000, 2000, 3000)


class ScaleCurve:
    """What holding more kernels costs the daemon, at 100, 500, 1,000, 2,000, 3,000 kernels
    (those up to the run's count, and the count itself): its RSS and open fds, the system
    memory used, and the create rate over the segment since the previous point. Per-kernel
    figures at each point show whether any cost grows faster than linearly."""

    def __init__(self, daemon_pid: int, n: int, avail0: int) -> None:
        self.proc = psutil.Process(daemon_pid)
        self.rss0 = self.proc.memory_info().rss
        self.fds0 = self.proc.num_fds()
        self.avail0 = avail0
        self.todo = sorted({p for p in CURVE_POINTS if p < n} | {n})
        self.points: list[dict[str, Any]] = []
        self.last = (0, time.perf_counter())
        self.destroy: dict[str, Any] = {}

    def reached(self, held: int) -> dict[str, Any] | None:
        if not self.todo or held < self.todo[0]:
            return None
        while self.todo and held >= self.todo[0]:
            self.todo.pop(0)
        now = time.perf_counter()
        rss = self.proc.memory_info().rss
        fds = self.proc.num_fds()
        used = self.avail0 - psutil.virtual_memory().available
        point = {"kernels": held, "daemon_rss_mib": round(rss / MiB, 1),
                 "daemon_rss_kib_per_kernel": round((rss - self.rss0) / 1024 / held, 1),
                 "daemon_fds": fds, "fds_per_kernel": round((fds - self.fds0) / held, 2),
                 "system_mib_per_kernel": round(used / MiB / held, 2),
                 "create_per_s": round((held - self.last[0]) / (now - self.last[1]), 1)}
        self.last = (held, now)
        self.points.append(point)
        return point

    def destroyed(self, held: int, seconds: float) -> None:
        self.destroy = {"kernels": held, "seconds": round(seconds, 2)}

    def report(self) -> dict[str, Any]:
        return {"daemon_pid_rss0_mib": round(self.rss0 / MiB, 1), "daemon_fds0": self.fds0,
                "points": self.points, "destroy_all": self.destroy}



class Bench:
    def __init__(self, counts: Counts, mode: str, reaper: Reaper, workdir: str,
                 embedded: bool) -> None:
        self.c, self.mode, self.reaper, self.workdir = counts, mode, reaper, workdir
        self.side_cls = EmbeddedSide if embedded else KerneldSide
        self.samples: dict[str, dict[str, list[float]]] = {
            m.name: {"kerneld": [], "ipykernel": []} for m in METRICS}
        self.details: dict[str, Any] = {"mode": mode, "kerneld_side": self.side_cls.kind,
                                        "counts": counts.__dict__, "workdir": workdir,
                                        "notes": {}, "errors": {}}
        self.kd: KerneldSide | None = None
        self.checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
            __file__))))
        self.peer_ready = False  # the agent session's ipykernel peer is registered
        self.kids: list[str] = []
        self.ipy: list[IpyKernel] = []

    def add(self, name: str, system: str, value: float) -> None:
        self.samples[name][system].append(value)

    def note(self, name: str, text: str) -> None:
        self.details["notes"][name] = text

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def phase(self, name: str, fn: Callable[[], Awaitable[None]]) -> None:
        self.say(name)
        t0 = time.perf_counter()
        try:
            await fn()
        except Exception as exc:  # noqa: BLE001 - one failed phase must not hide the others
            self.details["errors"][name] = f"{type(exc).__name__}: {exc}"
            self.say(f"{name} FAILED: {type(exc).__name__}: {exc}")
        self.details.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - t0, 2)

    async def run(self) -> None:
        # room for the held kernels plus the phases' own (clients, in-process, agent sessions)
        self.kd = self.side_cls(self.reaper, self.workdir, "kerneld-a", pool_size=0,
                                max_kernels=max(2000, self.c.idle_kernels + 64))
        try:
            await self.phase("setup", self.setup)
            if "setup" in self.details["errors"]:
                return
            await self.phase("create_cold", self.create_cold)
            await self.phase("rtt", self.rtt)
            await self.phase("throughput", self.throughput)
            await self.phase("stream", self.stream)
            await self.phase("sandbox_overhead", self.sandbox_overhead)
            await self.phase("workload_overhead", self.workload_overhead)
            await self.phase("idle_kernels", self.idle_kernels)
            await self.phase("agent_session", self.agent_session)
        finally:
            await bounded(asyncio.gather(*(k.close() for k in self.ipy), return_exceptions=True))
            self.ipy = []
            await bounded(self.kd.close())
        await self.phase("create_pool", self.create_pool)

    # -- setup and idle memory of fresh kernels -------------------------------------------

    async def setup(self) -> None:
        assert self.kd is not None
        await self.kd.start()
        self.say(f"kerneld {self.kd.kind} up pid={self.kd.pid}; starting "
                 f"{self.c.clients} kernels of each system")
        for _ in range(self.c.clients):
            kid = await self.kd.client.create_kernel()
            self.kids.append(kid)
            await kd_execute(self.kd.client, kid, "1+1", "2")
        await self.check_confined(self.kids[0])
        self.ipy = await start_ipykernels(self.reaper, self.workdir, self.c.clients)
        pids = await self.kd.pids()
        await asyncio.sleep(1.0)
        table = ProcTable()
        for kid in self.kids:
            uss, pss, _ = tree_memory(pids[kid] or 0, table.kernel(pids[kid] or 0))
            self.add("idle_uss_mib", "kerneld", uss)
            self.add("idle_pss_mib", "kerneld", pss)
        for k in self.ipy:
            assert k.pid is not None
            uss, pss, _ = tree_memory(k.pid)
            self.add("idle_uss_mib", "ipykernel", uss)
            self.add("idle_pss_mib", "ipykernel", pss)
        self.note("idle_uss_mib", "private memory of one fresh kernel's processes after one "
                  "`1+1` and ≥ 1 s idle (kerneld: every process of the kernel's PID namespace — "
                  "its init and the confined worker — and their children; ipykernel: the kernel "
                  "process and its children); psutil memory_full_info")

    async def check_confined(self, kid: str) -> None:
        """Refuse to report figures of a kernel that is not confined."""
        assert self.kd is not None
        from kerneld.backends.supervisor import SOURCE_DIR
        res = await kd_execute(self.kd.client, kid, CONFINED_CODE.format(
            probe=os.path.join(SOURCE_DIR, "pyproject.toml")))
        seen = json.loads(ast.literal_eval(result_text(res) or "'{}'"))
        self.details["confinement"] = seen
        wrong = [k for k, ok in (("uid", seen["uid"] != 0), ("Seccomp", seen["Seccomp"] == "2"),
                                 ("NoNewPrivs", seen["NoNewPrivs"] == "1"),
                                 ("checkout hidden", not seen["checkout_readable"]))
                 if not ok]
        if wrong:
            raise RuntimeError(f"the kerneld worker is not confined ({', '.join(wrong)}: "
                               f"{seen}); refusing to report unconfined figures")

    # -- create → first result -------------------------------------------------------------

    async def _kd_cold(self) -> float:
        assert self.kd is not None
        client, kid = self.kd.client, ""

        async def create() -> None:
            nonlocal kid
            kid = await client.create_kernel()
            await kd_execute(client, kid, "1+1", "2")
        ms = await timed(create)
        await self.kd.pids()
        await client.destroy_kernel(kid)
        return ms

    async def _ipy_cold(self) -> float:
        k, ms = await start_ipykernel(self.reaper, self.workdir)
        await k.close()
        return ms

    async def create_cold(self) -> None:
        await self._kd_cold()                                    # warm-up
        per_round = math.ceil(self.c.cold_kerneld / self.c.cold_ipykernel)
        done = 0
        for _ in range(self.c.cold_ipykernel):
            for _ in range(min(per_round, self.c.cold_kerneld - done)):
                self.add("create_cold_ms", "kerneld", await self._kd_cold())
                done += 1
            self.add("create_cold_ms", "ipykernel", await self._ipy_cold())
        self.note("create_cold_ms", "create a kernel (kerneld: through the daemon, default "
                  "profile, no pool) and run `1+1` until its result is in hand; ipykernel: "
                  "AsyncKernelManager.start_kernel → iopub welcome → execute_reply + "
                  "execute_result, no wait_for_ready()")

    # -- round trips and throughput ---------------------------------------------------------

    async def rtt(self) -> None:
        assert self.kd is not None
        client, kid, ipy = self.kd.client, self.kids[0], self.ipy[0]
        n_kd, n_ipy = self.c.rtt, max(1, self.c.rtt // 4)
        for name, code, expect in (("rtt_ms", "1+1", "2"), ("rtt_assign_ms", "x = 1", None)):
            for _ in range(min(50, n_kd)):                         # warm-up
                await kd_execute(client, kid, code, expect)
                await ipy.execute(code, expect)
            for _ in range(self.c.rounds):
                run_kd = functools.partial(kd_execute, client, kid, code, expect)
                run_ipy = functools.partial(ipy.execute, code, expect)
                for _ in range(n_kd):
                    self.add(name, "kerneld", await timed(run_kd))
                for _ in range(n_ipy):
                    self.add(name, "ipykernel", await timed(run_ipy))
        self.note("rtt_ms", "execute `1+1` on an idle kernel until the result is in hand "
                  "(kerneld: client → daemon → worker → client; ipykernel: execute_reply and "
                  "execute_result both received, not waiting for idle)")

    async def throughput(self) -> None:
        assert self.kd is not None
        clients = [self.kd.client]
        while len(clients) < self.c.clients:
            clients.append(await self.kd.extra_client())
        kd_fns = [functools.partial(kd_execute, c, k, "1+1", "2")
                  for c, k in zip(clients, self.kids, strict=False)]
        ipy_fns = [functools.partial(k.execute, "1+1", "2") for k in self.ipy]
        await drive(kd_fns, 0.2)                                   # warm-up
        await drive(ipy_fns, 0.2)
        for _ in range(self.c.rounds):
            for name, fns_kd, fns_ipy in (("throughput_1x1_per_s", kd_fns[:1], ipy_fns[:1]),
                                          ("throughput_8x8_per_s", kd_fns, ipy_fns)):
                self.add(name, "kerneld", await drive(fns_kd, self.c.seconds))
                self.add(name, "ipykernel", await drive(fns_ipy, self.c.seconds))
        self.note("throughput_8x8_per_s", f"{self.c.clients} clients (kerneld: separate "
                  "connect_async() connections; ipykernel: separate AsyncKernelClients), each "
                  f"driving its own kernel with back-to-back `1+1`, {self.c.seconds} s rounds; "
                  "all clients share the bench's one event loop")

    # -- streaming ----------------------------------------------------------------------------

    async def stream(self) -> None:
        assert self.kd is not None
        client, kid, ipy = self.kd.client, self.kids[0], self.ipy[0]
        n = self.c.stream_mib
        chunk, lines = CHUNK_CODE.format(n=n), PRINT_CODE.format(n=n * MiB // 100)
        expected = {chunk: n * MiB, lines: (n * MiB // 100) * 100}
        baseline = psutil.Process(self.kd.pid).memory_info().rss
        await kd_stream(client, kid, CHUNK_CODE.format(n=1))        # warm-up
        await ipy.execute(CHUNK_CODE.format(n=1), count_stream=True)
        for _ in range(self.c.stream_reps):
            for name, code in (("stream_mb_per_s", chunk), ("stream_print_mb_per_s", lines)):
                with RssSampler(self.kd.pid) as rss:
                    t0 = time.perf_counter()
                    got = await kd_stream(client, kid, code)
                    elapsed = time.perf_counter() - t0
                if got != expected[code]:
                    raise RuntimeError(f"kerneld delivered {got} of {expected[code]} bytes")
                self.add(name, "kerneld", got / MB / elapsed)
                self.add("stream_rss_growth_mib", "kerneld", (rss.peak - baseline) / MiB)
                t0 = time.perf_counter()
                got = await ipy.execute(code, count_stream=True)
                elapsed = time.perf_counter() - t0
                if got != expected[code]:
                    raise RuntimeError(f"ipykernel delivered {got} of {expected[code]} bytes")
                self.add(name, "ipykernel", got / MB / elapsed)
        self.note("stream_mb_per_s", f"one execution writes {n} MiB to stdout in 1 MiB "
                  "sys.stdout.write calls (under the default profile's 8 MiB output cap); MB/s "
                  "= bytes of stream text received by the client (1 MB = 10^6 B) / time from "
                  "submit to the end of the execution")
        self.note("stream_print_mb_per_s", f"as stream_mb_per_s with print() of 100-byte lines "
                  f"({n * MiB // 100} calls)")
        self.note("stream_rss_growth_mib", "daemon process peak RSS (sampled every 3 ms) during "
                  "each streaming execution minus its RSS before the streaming phase")

    # -- sandbox overhead ---------------------------------------------------------------------

    async def sandbox_overhead(self) -> None:
        assert self.kd is not None
        client, confined = self.kd.client, self.kids[0]
        inproc = await client.create_kernel(mode="in_process")
        try:
            async def run(kid: str, n: int) -> tuple[float, float]:
                res = await kd_execute(client, kid, f"_kb_syscalls({n})")
                wall, cpu = ast.literal_eval(result_text(res) or "(nan, nan)")
                return float(wall), float(cpu)
            for kid in (confined, inproc):
                await kd_execute(client, kid, SYSCALL_CODE)
                await run(kid, 2000)                                       # warm-up
            raw: list[dict[str, float]] = []
            for i in range(self.c.overhead_rounds):
                order = (confined, inproc) if i % 2 == 0 else (inproc, confined)
                times = {kid: await run(kid, self.c.syscall_iters) for kid in order}
                (cw, cc), (iw, ic) = times[confined], times[inproc]
                raw.append({"confined_wall": cw, "confined_cpu": cc, "in_process_wall": iw,
                            "in_process_cpu": ic, "wall_overhead_pct": (cw / iw - 1) * 100})
                self.add("sandbox_overhead_pct", "kerneld", (cc / ic - 1) * 100)
            per_op = {}
            for name, kid in (("confined", confined), ("in_process", inproc)):
                res = await kd_execute(client, kid, f"_kb_per_op({self.c.syscall_iters})")
                per_op[name] = ast.literal_eval(result_text(res) or "{}")
            self.details["sandbox_overhead_by_op_ns"] = {
                op: {"confined": per_op["confined"][op], "in_process": ns,
                     "overhead_pct": round((per_op["confined"][op] / ns - 1) * 100, 1)}
                for op, ns in per_op["in_process"].items()}
        finally:
            await client.destroy_kernel(inproc)
        self.details["sandbox_overhead_seconds"] = [
            {k: round(v, 4) for k, v in r.items()} for r in raw]
        self.note("sandbox_overhead_pct", f"{self.c.syscall_iters} iterations × 7 syscalls "
                  "(getpid, stat, pipe write+read, open+read+close of a stdlib file), CPU time "
                  "of the loop's thread (time.thread_time; wall time in details), the "
                  "fastest of 5 equal slices scaled up, measured "
                  "inside the kernel: a confined worker (default profile: namespaces, cgroup, "
                  "Landlock, seccomp, rlimits) vs an IN_PROCESS kernel on a thread of the same "
                  "daemon (same Python 3.11 build); one value per alternating round")

    async def workload_overhead(self) -> None:
        """Realistic work timed inside the kernel (kerneld_bench.overhead), against the same
        zygote in a second daemon with confinement off."""
        assert self.kd is not None
        bare = KerneldSide(self.reaper, self.workdir, "kerneld-unconfined", pool_size=0,
                           confine=False)
        try:
            await bare.start()
            result = await overhead.measure(self.kd, bare, self.ipy[0],
                                            self.c.workload_rounds, self.say)
        finally:
            await bounded(bare.close())
        self.details["workload_overhead"] = result
        self.add("workload_overhead_max_pct", "kerneld", overhead.worst_pct(result))
        for line in overhead.render(result):
            self.say(line)
        self.note("workload_overhead_max_pct", "worst p50 % over the same zygote unconfined "
                  "(a second daemon, confine = false) of the default and data-science "
                  "profiles across realistic workloads each timed inside the kernel: pandas "
                  "groupby of 10^5 rows, 1000×1000 matmul, 2000 small files written+read, "
                  "first/later matplotlib PNG, a pure-Python loop; details.workload_overhead")

    # -- idle confined kernels held at once ---------------------------------------------------

    async def idle_kernels(self) -> None:
        assert self.kd is not None
        client, n = self.kd.client, self.c.idle_kernels
        await asyncio.sleep(0.5)
        avail0 = psutil.virtual_memory().available
        held: list[str] = []
        failure = None
        curve = ScaleCurve(self.kd.pid if self.kd.kind == "daemon" else os.getpid(), n,
                           avail0)

        async def make() -> None:
            kid = await client.create_kernel()
            held.append(kid)
            await kd_execute(client, kid, "1+1", "2")
        try:
            while len(held) < n and failure is None:
                batch = min(4, n - len(held))
                results = await asyncio.gather(*(make() for _ in range(batch)),
                                               return_exceptions=True)
                for r in results:
                    if isinstance(r, BaseException):
                        failure = f"{type(r).__name__}: {r}"
                point = curve.reached(len(held))
                if point is not None:
                    self.say(f"  {point['kernels']} kernels held: daemon RSS "
                             f"{point['daemon_rss_mib']} MiB, {point['daemon_fds']} fds, "
                             f"{point['create_per_s']} creates/s since the last point")
            await asyncio.sleep(1.0)
            avail1 = psutil.virtual_memory().available
            answered = await self._verify(held)
            await self._held_memory(held, answered, avail0 - avail1, failure)
        finally:
            async def destroy() -> None:
                for i in range(0, len(held), 8):
                    await asyncio.gather(*(client.destroy_kernel(k) for k in held[i:i + 8]),
                                         return_exceptions=True)
            t0 = time.perf_counter()
            await bounded(destroy())
            curve.destroyed(len(held), time.perf_counter() - t0)
            self.details["scale_curve"] = curve.report()

    async def _verify(self, held: list[str]) -> int:
        assert self.kd is not None
        client = self.kd.client

        async def check(kid: str) -> bool:
            try:
                if not await maybe(client.ping_kernel(kid)):
                    return False
                await kd_execute(client, kid, "1+1", "2")
                return True
            except Exception:  # noqa: BLE001 - any failure means "did not answer"
                return False
        ok = 0
        for i in range(0, len(held), 8):
            ok += sum(await asyncio.gather(*(check(k) for k in held[i:i + 8])))
        return ok

    async def _held_memory(self, held: list[str], answered: int, sys_drop: int,
                           failure: str | None) -> None:
        assert self.kd is not None
        pids = await self.kd.pids()
        table = ProcTable()
        uss_all = []
        for kid in held:
            try:
                uss, pss, _ = tree_memory(0, table.kernel(pids.get(kid) or 0))
            except psutil.Error:
                continue
            uss_all.append(uss)
            self.add("idle_uss_mib", "kerneld", uss)
            self.add("idle_pss_mib", "kerneld", pss)
        fixed = tree_memory(self.kd.pid)[0] - sum(uss_all) if self.kd.kind == "daemon" else 0.0
        per_uss = sum(uss_all) / max(1, len(uss_all))
        per_sys = sys_drop / MiB / max(1, len(held))
        per_kernel = max(per_uss, per_sys)
        ceiling = int((MEMORY_BUDGET / MiB - max(fixed, 0.0)) / per_kernel) if per_kernel else 0
        info: dict[str, Any] = {"created": len(held), "answered_ping_and_1+1": answered,
                "failure": failure, "per_kernel_uss_mib": round(per_uss, 3),
                "per_kernel_system_mib": round(per_sys, 3),
                "daemon_and_zygote_uss_mib": round(fixed, 1),
                "memory_used_gib": round(sys_drop / 1024 / MiB, 3),
                "extrapolated_ceiling": ceiling}
        if self.c.extrapolate:
            value = ceiling
            info["value_is"] = ("EXTRAPOLATED: (20 GiB - daemon/zygote USS) / max(mean worker "
                                f"USS, MemAvailable drop per kernel), from {len(held)} kernels "
                                "actually held")
        else:
            value = answered
            info["value_is"] = (f"MEASURED: kernels held at once that answered ping + `1+1` "
                                f"(asked for {self.c.idle_kernels}; a lower bound)")
        self.details["max_idle_kernels"] = info
        self.add("max_idle_kernels", "kerneld", float(value))
        self.say(f"  held {len(held)}, answered {answered}, {per_uss:.2f} MiB USS each, "
                 f"{per_sys:.2f} MiB system each → {info['value_is'].split(':')[0]} {value}")

    # -- the agent session (kerneld_bench.agent) -------------------------------------------------

    async def agent_session(self) -> None:
        """kerneld (no pool) against ipykernel bench-style and stock, alternating; the pooled
        kerneld side runs in `create_pool`, where the pool's daemon is up."""
        assert self.kd is not None
        python = agent.peer_python(self.checkout)
        if python is None:
            raise RuntimeError("the agent session's ipykernel peer needs .venv-clients with "
                               "pandas and matplotlib (`make test-envs` builds it)")
        agent.register_peer(self.workdir, python)
        self.peer_ready = True
        await agent.kerneld_session(self.kd.client)                          # warm-up
        await agent.ipykernel_bench_session(self.reaper, self.workdir)
        for _ in range(self.c.agent_sessions):
            self.add("agent_session_ms", "kerneld", await agent.kerneld_session(self.kd.client))
            ms = await agent.ipykernel_bench_session(self.reaper, self.workdir)
            self.add("agent_session_ms", "ipykernel", ms)
            self.add("agent_session_pool_ms", "ipykernel", ms)
            self.add("agent_session_stock_ms", "ipykernel",
                     await agent.ipykernel_stock_session(self.reaper))
        self.note("agent_session_ms", "create a kernel, run the five cells of "
                  "kerneld_bench.agent.AGENT_CELLS (imports; a 10^5-row frame; groupby "
                  "statistics; a plot saved as PNG; a printed summary), destroy it; kerneld "
                  "through the daemon, no pool; ipykernel (pandas and matplotlib from "
                  ".venv-clients) driven bench-style")
        self.note("agent_session_stock_ms", "kerneld: as agent_session_pool_ms; ipykernel: "
                  "jupyter_client stock (start_kernel, wait_for_ready, execute_interactive per "
                  "cell, shutdown_kernel)")

    async def _agent_pooled(self, side: KerneldSide) -> None:
        if not self.peer_ready:
            return  # no peer: agent_session has said why
        for _ in range(self.c.agent_sessions):
            await side.wait_pool()
            ms = await agent.kerneld_session(side.client)
            self.add("agent_session_pool_ms", "kerneld", ms)
            self.add("agent_session_stock_ms", "kerneld", ms)
        self.note("agent_session_pool_ms", "as agent_session_ms, kerneld from a daemon with a "
                  "warm pool (refilled before each session)")

    # -- create from the warm pool (a second daemon) -------------------------------------------

    async def create_pool(self) -> None:
        side = self.side_cls(self.reaper, self.workdir, "kerneld-pool", self.c.pool_size)
        try:
            await side.start()
            client = side.client

            async def sample(idle: bool = False, uss: bool = False) -> float:
                await side.wait_pool()
                if idle:  # as a server sees it: the daemon and the pool idle a moment
                    await asyncio.sleep(0.3)
                kid = ""

                async def create() -> None:
                    nonlocal kid
                    kid = await client.create_kernel()
                    await kd_execute(client, kid, "1+1", "2")
                ms = await timed(create)
                pids = await side.pids()
                if uss:  # measured as idle_uss_mib is in `setup`
                    await asyncio.sleep(1.0)
                    pid = pids.get(kid) or 0
                    self.add("pool_idle_uss_mib", "kerneld",
                             tree_memory(pid, ProcTable().kernel(pid))[0])
                await client.destroy_kernel(kid)
                return ms
            await sample()                                                   # warm-up
            for i in range(self.c.pool):                    # idle / non-idle alternating
                self.add("create_pool_ms", "kerneld", await sample())
                # USS of the first few idle samples only: each costs 1 s
                self.add("create_pool_idle_ms", "kerneld",
                         await sample(idle=True, uss=i < 5))
            self.details["pool_stats"] = await maybe(client.get_pool_stats())
            await self._agent_pooled(side)
        finally:
            await bounded(side.close())
        self.note("create_pool_ms", f"as create_cold_ms from a daemon with [pool] size = "
                  f"{self.c.pool_size} (default profile), the pool refilled before each "
                  "sample; ipykernel has no pool: its ratio is against ipykernel's cold start")
        self.note("create_pool_idle_ms", "as create_pool_ms, after the pool refilled and "
                  "the daemon and pool then idled 0.3 s (samples alternate with create_pool_ms)")
        self.note("pool_idle_uss_mib", "as idle_uss_mib, of a kernel served from the pool "
                  "(after its `1+1` and ≥ 1 s idle; the first five idle samples)")
