"""`kerneld bench --jupyter`: one jupyter_client driver against ipykernel 7 and against the
kerneld kernelspec, in one run, alternating.

Why a side of its own: the main bench measures kerneld through `kerneld.connect_async()`, what
kerneld applications use. Jupyter users reach a kerneld kernel through a kernelspec instead
(`kerneld jupyter install`): jupyter_client launches what its `kernel.json` says (the adapter,
`python -m kerneld.jupyter -f {connection_file} --profile default`, or a provisioner), which
speaks the Jupyter protocol on the connection file's five sockets and drives a kernel in the
daemon. That path has costs of its own (a process to launch, the Jupyter framing, JSON and HMAC
on both ends), and those are what a JupyterLab or nbclient user pays, so they are measured here
by exactly the same driver for both kernels: the kernelspec is the only difference.

Process model: a private confined daemon (`KerneldSide`, default profile, default config: no
warm pool), the kerneld kernelspec written by `python -m kerneld jupyter install --prefix
WORKDIR/jupyter --profile default --address DAEMON` into the bench's own directory, and
ipykernel's own `python3` kernelspec of this environment. Both are started by jupyter_client's
`AsyncKernelManager` and driven through `AsyncKernelClient` sockets by our own loop (no
`wait_for_ready()` quiet period; ZeroMQ reconnect interval 2 ms, as in the main bench). The
first kerneld kernel is checked from the inside (uid ≠ 0, `Seccomp: 2`, `NoNewPrivs: 1`, the
checkout unreadable) and must be listed by the daemon with the `default` profile: figures of an
unconfined kernel are refused. After the run the daemon must hold no kernel (each adapter
destroyed its kernel when jupyter_client shut it down).

Metrics (samples of the two systems alternate inside each):
- `jupyter_start_ms`: `start_kernel()` → IOPub proven subscribed (any IOPub message:
  ipykernel 7's `iopub_welcome`, or the status of a `kernel_info_request`, resent until one
  arrives) → `1+1`'s `execute_reply` and `execute_result` in hand. Target: ≥ 10× ipykernel.
- `jupyter_rtt_ms`: `1+1` on an idle kernel, until `execute_reply` and `execute_result`.
  Target: ≥ 3× ipykernel (jupyter_client's own JSON and HMAC cost is in both).
- `jupyter_print_mb_per_s`: a `print` loop of 100-byte lines; bytes of `stream` text received
  up to the `idle` status.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from kerneld_bench.metrics import MB, Metric, MiB, evaluate, percentile, ratio, summarize
from kerneld_bench.procs import Reaper, maybe
from kerneld_bench.sides import KerneldSide, kd_execute
from kerneld_bench.workloads import CONFINED_CODE, PRINT_CODE, bounded

KERNELD = "kerneld"
IPYKERNEL = "ipykernel"
PEER_KERNEL = "python3"          # ipykernel's own kernelspec in this environment
KD_KERNEL = "kerneld-default"    # what `kerneld jupyter install --profile default` writes

JUPYTER_METRICS = (
    Metric("jupyter_start_ms", "ms", False, (("ratio", ">=", 10),)),
    Metric("jupyter_rtt_ms", "ms", False, (("ratio", ">=", 3),)),
    Metric("jupyter_print_mb_per_s", "MB/s", True),
)

# (starts of each system, `1+1` round trips per round, rounds, print MiB, print repetitions)
COUNTS = {
    "smoke": (1, 20, 1, 1, 1),
    "quick": (5, 200, 3, 2, 3),
    "full": (15, 1000, 5, 4, 5),
}


class KernelDied(RuntimeError):
    """The kernel's process exited before it answered."""


class JupyterKernel:
    """One kernel of a kernelspec, started by jupyter_client 8 and driven by our own loop:
    the same code for ipykernel and for kerneld, so that only the kernelspec differs."""

    def __init__(self, name: str, ksm: Any, reaper: Reaper, workdir: str) -> None:
        self.name, self.ksm, self.reaper, self.workdir = name, ksm, reaper, workdir
        self.km: Any = None
        self.phases: dict[str, float] = {}   # ms since start: launched, iopub, result
        self.kc: Any = None
        self.ctx: Any = None
        self.pid: int | None = None
        self.tag = f"{name}-{uuid.uuid4().hex[:12]}"
        self.log = open(os.path.join(workdir, f"{self.tag}.log"), "ab")  # noqa: SIM115 (close())

    async def start(self, timeout: float = 60.0) -> float:
        """Start the kernel, prove IOPub subscribed, run `1+1`: ms from start to its result."""
        import zmq
        import zmq.asyncio
        from jupyter_client.manager import AsyncKernelManager
        ctx = zmq.asyncio.Context()
        ctx.setsockopt(zmq.RECONNECT_IVL, 2)   # connect-before-bind costs ≤ 2 ms, not 100
        ctx.setsockopt(zmq.LINGER, 0)
        self.ctx = ctx
        t0 = time.perf_counter()
        self.km = AsyncKernelManager(
            kernel_name=self.name, kernel_spec_manager=self.ksm, context=ctx,
            connection_file=os.path.join(self.workdir, f"{self.tag}.json"))
        await self.km.start_kernel(stdout=self.log, stderr=self.log)
        self.phases = {"launched": (time.perf_counter() - t0) * 1000}
        self.pid = getattr(self.km.provisioner, "pid", None)
        self.reaper.track(self.pid)
        self.kc = self.km.client(context=ctx)
        self.kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.shell, self.iopub = self.kc.shell_channel.socket, self.kc.iopub_channel.socket
        self.session = self.kc.session
        self.poller = zmq.asyncio.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)
        await self._subscribed(timeout)
        self.phases["iopub"] = (time.perf_counter() - t0) * 1000
        await self.execute("1+1", "2", timeout=timeout)
        self.phases["result"] = (time.perf_counter() - t0) * 1000
        return self.phases["result"]

    async def _subscribed(self, timeout: float) -> None:
        """Until an IOPub message arrives: PUB drops what it sends before our SUB is connected,
        so without this the first execution's outputs may be lost. A kernel_info_request whose
        reply came without any IOPub is resent (its busy/idle went nowhere)."""
        deadline = time.monotonic() + timeout
        while True:
            msg_id = self.kc.kernel_info()
            replied: float | None = None
            while replied is None or time.monotonic() < replied + 0.05:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: no IOPub message in {timeout:.0f} s")
                got = await self._next(0.05 if replied else deadline - time.monotonic(),
                                       quiet_ok=replied is not None)
                if got is None:
                    continue
                sock, msg = got
                if sock is self.iopub:
                    return
                if msg["parent_header"].get("msg_id") == msg_id:
                    replied = time.monotonic()

    async def _next(self, timeout: float, quiet_ok: bool = False
                    ) -> tuple[Any, dict[str, Any]] | None:
        """The next message from shell or IOPub: (socket, message); None after `timeout` if
        `quiet_ok`, else TimeoutError."""
        import zmq
        deadline = time.monotonic() + timeout
        while True:
            for sock in (self.shell, self.iopub):
                try:
                    frames = await sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                _, parts = self.session.feed_identities(frames)
                return sock, self.session.deserialize(parts)
            left = deadline - time.monotonic()
            if left <= 0 or not await self.poller.poll(max(1, min(200, int(left * 1000)))):
                code = await self.km.provisioner.poll()
                if code is not None:
                    raise KernelDied(f"{self.name} kernel pid={self.pid} exited with code {code} "
                                     f"before answering: {self.log_tail()}")
                if time.monotonic() > deadline:
                    if quiet_ok:
                        return None
                    raise TimeoutError(f"{self.name} kernel pid={self.pid} did not answer in "
                                       f"{timeout:.1f} s; see {self.log.name}")

    def log_tail(self, lines: int = 5) -> str:
        self.log.flush()
        try:
            with open(self.log.name, errors="replace") as f:
                return " | ".join(line.rstrip() for line in f.readlines()[-lines:])
        except OSError:
            return ""

    async def execute(self, code: str, expect: str | None = None, count_stream: bool = False,
                      result: bool = False, timeout: float = 120.0) -> tuple[int, str | None]:
        """Run `code`; done at execute_reply and (if `expect` or `result`) the execute_result,
        and (if `count_stream`) the idle status. Returns (stdout bytes, execute_result text)."""
        msg_id = self.kc.execute(code, store_history=True)
        reply = idle = False
        want_result = result or expect is not None
        text: str | None = None
        nbytes = 0
        while not (reply and (text is not None or not want_result)
                   and (idle or not count_stream)):
            got = await self._next(timeout)
            assert got is not None
            sock, msg = got
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if sock is self.shell and kind == "execute_reply":
                if msg["content"]["status"] != "ok":
                    raise RuntimeError(f"{self.name} execution failed: {msg['content']}")
                reply = True
            elif kind == "execute_result":
                text = msg["content"]["data"].get("text/plain")
                if expect is not None and text != expect:
                    raise RuntimeError(f"{self.name} returned {text!r}, expected {expect!r}")
            elif kind == "stream":
                nbytes += len(msg["content"]["text"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return nbytes, text

    async def close(self) -> None:
        """A graceful shutdown, as a Jupyter client does it (shutdown_request on control; the
        kerneld adapter destroys its kernel then), and a kill if it does not end in time."""
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None and self.km.has_kernel:
            with contextlib.suppress(Exception):  # the pid is killed below anyway
                await asyncio.wait_for(self.km.shutdown_kernel(now=False), 15)
        if self.pid is not None and self.reaper.alive(self.pid):
            self.reaper.procs[self.pid].kill()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        self.log.close()


async def start_kernel(name: str, ksm: Any, reaper: Reaper, workdir: str
                       ) -> tuple[JupyterKernel, float]:
    """A started kernel and its ms to the first result; a kernel whose process died before
    answering (ipykernel's TCP port race: a free port picked, closed, then taken) is replaced,
    up to 3 attempts, and the failed attempt's time is not counted."""
    for attempt in range(1, 4):
        k = JupyterKernel(name, ksm, reaper, workdir)
        try:
            return k, await k.start()
        except KernelDied as e:
            await k.close()
            print(f"[bench] {e}; attempt {attempt} of 3", file=sys.stderr)
            if attempt == 3:
                raise
        except BaseException:
            await k.close()
            raise
    raise AssertionError("unreachable")


class JupyterBench:
    """The phases: setup (daemon, kernelspec, confinement check) → start → rtt → print."""

    def __init__(self, mode: str, reaper: Reaper, workdir: str) -> None:
        self.mode, self.reaper, self.workdir = mode, reaper, workdir
        self.starts, self.rtt_n, self.rounds, self.print_mib, self.print_reps = COUNTS[mode]
        self.samples: dict[str, dict[str, list[float]]] = {
            m.name: {KERNELD: [], IPYKERNEL: []} for m in JUPYTER_METRICS}
        self.details: dict[str, Any] = {"mode": mode, "side": "jupyter", "workdir": workdir,
                                        "notes": {}, "errors": {}}
        self.kd: KerneldSide | None = None
        self.ksm: dict[str, Any] = {}
        self.open: list[JupyterKernel] = []
        self.phases: dict[str, dict[str, list[float]]] = {}   # system → phase → ms samples

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def add(self, name: str, system: str, value: float) -> None:
        self.samples[name][system].append(value)

    async def run(self) -> None:
        self.kd = KerneldSide(self.reaper, self.workdir, "kerneld-jupyter", pool_size=0)
        try:
            for name, fn in (("setup", self.setup), ("start", self.start),
                             ("rtt", self.rtt), ("print", self.print_stream)):
                self.say(f"jupyter {name}")
                t0 = time.perf_counter()
                try:
                    await fn()
                except Exception as exc:  # noqa: BLE001 - report the phase, then stop
                    self.details["errors"][name] = f"{type(exc).__name__}: {exc}"
                    self.say(f"jupyter {name} FAILED: {type(exc).__name__}: {exc}")
                    break
                finally:
                    self.details.setdefault("phase_seconds", {})[name] = round(
                        time.perf_counter() - t0, 2)
            await bounded(asyncio.gather(*(k.close() for k in self.open),
                                         return_exceptions=True))
            self.open = []
            if not self.details["errors"]:
                await self.check_nothing_left()
        finally:
            await bounded(asyncio.gather(*(k.close() for k in self.open),
                                         return_exceptions=True))
            await bounded(self.kd.close())

    # -- setup ----------------------------------------------------------------------------

    async def setup(self) -> None:
        assert self.kd is not None
        from jupyter_client.kernelspec import KernelSpecManager
        await self.kd.start()
        prefix = os.path.join(self.workdir, "jupyter")
        cmd = [sys.executable, "-m", "kerneld", "jupyter", "install", "--prefix", prefix,
               "--profile", "default", "--address", self.kd.address]
        proc = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                       timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd[1:])}` failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        kd_ksm = KernelSpecManager(kernel_dirs=[os.path.join(prefix, "share", "jupyter",
                                                             "kernels")])
        spec = kd_ksm.get_kernel_spec(KD_KERNEL)
        peer = KernelSpecManager().get_kernel_spec(PEER_KERNEL)
        self.ksm = {KERNELD: kd_ksm, IPYKERNEL: KernelSpecManager()}
        self.details["kernelspecs"] = {
            KERNELD: {"name": KD_KERNEL, "argv": spec.argv, "metadata": spec.metadata,
                      "interrupt_mode": spec.interrupt_mode},
            IPYKERNEL: {"name": PEER_KERNEL, "argv": peer.argv}}
        k, _ = await start_kernel(KD_KERNEL, kd_ksm, self.reaper, self.workdir)
        self.open.append(k)
        await self.check_confined(k)

    async def check_confined(self, k: JupyterKernel) -> None:
        """Refuse to report figures of a kerneld Jupyter kernel that is not confined, or that
        the daemon does not list with the profile its kernelspec names."""
        assert self.kd is not None
        from kerneld.backends.supervisor import SOURCE_DIR
        _, text = await k.execute(CONFINED_CODE.format(
            probe=os.path.join(SOURCE_DIR, "pyproject.toml")), result=True)
        seen = json.loads(ast.literal_eval(text or "'{}'"))
        kernels = await maybe(self.kd.client.list_kernels())
        self.details["confinement"] = seen
        self.details["daemon_kernels_during_run"] = [
            {"id": x.get("id"), "profile": x.get("profile")} for x in kernels]
        wrong = [what for what, ok in (
            ("uid", seen.get("uid") != 0), ("Seccomp", seen.get("Seccomp") == "2"),
            ("NoNewPrivs", seen.get("NoNewPrivs") == "1"),
            ("checkout hidden", seen.get("checkout_readable") is False),
            ("listed by the daemon with profile default",
             [x.get("profile") for x in kernels] == ["default"])) if not ok]
        if wrong:
            raise RuntimeError(f"the kerneld Jupyter kernel is not as required "
                               f"({', '.join(wrong)}: {seen}, daemon lists {kernels}); "
                               "refusing to report its figures")

    async def check_nothing_left(self) -> None:
        """Every adapter destroyed its kernel at shutdown: the daemon holds none."""
        assert self.kd is not None
        deadline = time.monotonic() + 10
        while True:
            left = await maybe(self.kd.client.list_kernels())
            if not left:
                self.details["kernels_left_in_daemon"] = []
                return
            if time.monotonic() > deadline:
                self.details["kernels_left_in_daemon"] = [x.get("id") for x in left]
                self.details["errors"]["cleanup"] = (
                    f"{len(left)} kernel(s) still in the daemon after every Jupyter client "
                    f"shut its kernel down: {[x.get('id') for x in left]}")
                return
            await asyncio.sleep(0.05)

    # -- phases ---------------------------------------------------------------------------

    async def _one_start(self, system: str) -> float:
        name = KD_KERNEL if system == KERNELD else PEER_KERNEL
        k, ms = await start_kernel(name, self.ksm[system], self.reaper, self.workdir)
        for phase, at in k.phases.items():
            self.phases.setdefault(system, {}).setdefault(phase, []).append(at)
        await k.close()
        return ms

    async def start(self) -> None:
        for system in (IPYKERNEL, KERNELD):                       # warm-up (page cache)
            await self._one_start(system)
        for i in range(self.starts):
            order = (IPYKERNEL, KERNELD) if i % 2 == 0 else (KERNELD, IPYKERNEL)
            for system in order:
                self.add("jupyter_start_ms", system, await self._one_start(system))
        self.details["start_phases_p50_ms"] = {
            system: {phase: round(percentile(v, 50), 1) for phase, v in per.items()}
            for system, per in self.phases.items()}
        self.details["notes"]["start_phases_p50_ms"] = (
            "where a start's time goes, ms since start_kernel() was called: `launched` = "
            "start_kernel() returned (connection file written, process spawned), `iopub` = the "
            "first IOPub message, `result` = the `1+1` result (warm-up included)")
        self.details["notes"]["jupyter_start_ms"] = (
            "AsyncKernelManager.start_kernel() of the kernelspec → an IOPub message (ipykernel: "
            "iopub_welcome; or the status of a kernel_info_request, resent until one arrives) → "
            "`1+1` execute_reply + execute_result; kerneld: the daemon's default config (no warm "
            "pool), the default profile; each kernel shut down gracefully between samples "
            "(not timed)")

    async def _pair(self) -> dict[str, JupyterKernel]:
        kernels = {}
        for system, name in ((KERNELD, KD_KERNEL), (IPYKERNEL, PEER_KERNEL)):
            already = [k for k in self.open if k.name == name]
            if already:
                kernels[system] = already[0]
            else:
                k, _ = await start_kernel(name, self.ksm[system], self.reaper, self.workdir)
                self.open.append(k)
                kernels[system] = k
        return kernels

    async def rtt(self) -> None:
        assert self.kd is not None
        kernels = await self._pair()
        # the same daemon through kerneld's own client, interleaved: what the Jupyter path
        # (jupyter_client's framing, the adapter's hop) adds to a kerneld round trip
        client = self.kd.client
        native_kid = await client.create_kernel()
        native: list[float] = []
        try:
            for _ in range(min(50, self.rtt_n)):                   # warm-up
                await kd_execute(client, native_kid, "1+1", "2")
                for k in kernels.values():
                    await k.execute("1+1", "2")
            for r in range(self.rounds):
                order = (KERNELD, IPYKERNEL) if r % 2 == 0 else (IPYKERNEL, KERNELD)
                for system in order:
                    k = kernels[system]
                    for _ in range(self.rtt_n):
                        t0 = time.perf_counter()
                        await k.execute("1+1", "2")
                        self.add("jupyter_rtt_ms", system, (time.perf_counter() - t0) * 1000)
                for _ in range(self.rtt_n):
                    t0 = time.perf_counter()
                    await kd_execute(client, native_kid, "1+1", "2")
                    native.append((time.perf_counter() - t0) * 1000)
        finally:
            await client.destroy_kernel(native_kid)
        self.details["kerneld_native_rtt_ms"] = summarize(native, False)
        self.details["notes"]["jupyter_rtt_ms"] = (
            "`1+1` on an idle kernel through jupyter_client's sockets until execute_reply and "
            "execute_result are both in (not waiting for idle)")
        self.details["notes"]["kerneld_native_rtt_ms"] = (
            "`1+1` through kerneld.connect_async() on a kernel of the same daemon, rounds "
            "interleaved with jupyter_rtt_ms: the round trip without the Jupyter path")

    async def print_stream(self) -> None:
        kernels = await self._pair()
        lines = self.print_mib * MiB // 100
        code, expected = PRINT_CODE.format(n=lines), lines * 100
        for k in kernels.values():                                 # warm-up
            await k.execute(PRINT_CODE.format(n=1000), count_stream=True)
        for r in range(self.print_reps):
            order = (KERNELD, IPYKERNEL) if r % 2 == 0 else (IPYKERNEL, KERNELD)
            for system in order:
                t0 = time.perf_counter()
                got, _ = await kernels[system].execute(code, count_stream=True)
                elapsed = time.perf_counter() - t0
                if got != expected:
                    raise RuntimeError(f"{system} delivered {got} of {expected} bytes")
                self.add("jupyter_print_mb_per_s", system, got / MB / elapsed)
        self.details["notes"]["jupyter_print_mb_per_s"] = (
            f"print() of {lines} 100-byte lines in one execution; MB/s = bytes of stream text "
            "received (1 MB = 10^6 B) / time from execute_request to the idle status")


# --------------------------------------------------------------------------- report


def build_report(bench: JupyterBench, machine: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for m in JUPYTER_METRICS:
        kd = summarize(bench.samples[m.name][KERNELD], m.higher_better)
        peer = summarize(bench.samples[m.name][IPYKERNEL], m.higher_better)
        metrics[m.name] = {"unit": m.unit, KERNELD: kd, IPYKERNEL: peer,
                           "ratio": ratio(m, kd, peer)}
        status, texts = evaluate(m, metrics[m.name])
        targets[m.name] = {"target": texts, "status": status}
    details = dict(bench.details)
    details["samples"] = {name: {s: len(v) for s, v in per.items()}
                          for name, per in bench.samples.items()}
    return {"machine": machine, "metrics": metrics, "targets": targets, "details": details}


def render_table(report: dict[str, Any]) -> str:
    from kerneld_bench.report import _fmt
    head = ("metric", "unit", "kerneld p50", "p99", "ipykernel p50", "p99", "ratio", "target",
            "status")
    rows = [head]
    for name, entry in report["metrics"].items():
        kd, peer, t = entry[KERNELD] or {}, entry[IPYKERNEL] or {}, report["targets"][name]
        rows.append((name, entry["unit"], _fmt(kd.get("p50")), _fmt(kd.get("p99")),
                     _fmt(peer.get("p50")), _fmt(peer.get("p99")),
                     "—" if entry["ratio"] is None else f"{entry['ratio']:g}×",
                     ", ".join(t["target"]) or "—", "" if t["status"] == "n/a" else t["status"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j in (0, 1, 7, 8) else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    m, d = report["machine"], report["details"]
    spec = d.get("kernelspecs", {}).get(KERNELD, {})
    lines.append("")
    lines.append(f"machine: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, Python "
                 f"{m['python']}, kerneld {m['kerneld']}, ipykernel {m['ipykernel']}, "
                 f"jupyter_client {m['jupyter_client']}, {m['date']}, loadavg "
                 f"{m['loadavg_at_start']} → {m.get('loadavg_at_end')}")
    lines.append(f"mode: {d['mode']}, Jupyter side: one jupyter_client driver, kernelspecs "
                 f"{PEER_KERNEL} (ipykernel) and {KD_KERNEL} (argv {spec.get('argv')}); "
                 "ratio = times better than ipykernel")
    for phase, error in d["errors"].items():
        lines.append(f"ERROR in {phase}: {error}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def main(args: argparse.Namespace, mode: str) -> int:
    """`kerneld bench --jupyter [--smoke|--quick] [--json FILE] [--check]` (report.py parses
    the arguments and hands them here)."""
    from kerneld_bench.report import run_and_report
    if args.embedded:
        print("kerneld bench: --embedded has no Jupyter side (the kernelspec drives a daemon)",
              file=sys.stderr)
        return 1
    return run_and_report(lambda reaper, workdir: JupyterBench(mode, reaper, workdir), args,
                          build_report, render_table)
