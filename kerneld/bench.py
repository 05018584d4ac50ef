"""`kerneld bench`: kerneld and ipykernel 7 side by side, on this machine, in one run.

Process model: the bench is an ordinary client program. It starts its own kerneld daemons
(`python -m kerneld serve` on a private ipc endpoint, the `default` profile fully enforced, each
in its own session) and talks to them with `kerneld.connect_async()`, exactly as a user would.
The peer is ipykernel 7 started by jupyter_client 8's `AsyncKernelManager` and driven by its
`AsyncKernelClient` sockets with our own loop (no `wait_for_ready()` fixed cost; ZeroMQ
reconnect interval 2 ms so a client that connects before the kernel binds pays no 100 ms
reconnect: see ../shared/docs/BASELINES.md). `--embedded` swaps the daemon for an in-process
`kerneld.KernelManager` (a development stand-in; its figures are labelled as such).

Phases, in order (kerneld and ipykernel alternate inside every phase, after a warm-up):
idle memory of the peer → create_cold → rtt (`1+1`, `x = 1`) → throughput 1×1 and 8×8 →
streaming (1 MiB writes, print loop; daemon RSS sampled) → sandbox overhead (confined worker vs
IN_PROCESS, same daemon) → idle confined kernels held at once (and their USS/PSS) → a second
daemon with a warm pool for create_pool.

Output: a table on stdout and `--json FILE` shaped as
`{"machine": {...}, "metrics": {NAME: {"unit", "kerneld": {"p50", "p99"}, "ipykernel": {...} |
null, "ratio": float | null}}, "targets": {...}, "details": {...}}`. `ratio` is how many times
better kerneld is (> 1 when it wins). For metrics where higher is better, "p99" is the tail
value that 99 % of samples reach (the 1st percentile), so p99 is always the pessimistic side.

Cleanup: every daemon, zygote, worker and ipykernel process the bench starts is recorded and
ended on exit, error, Ctrl-C or SIGTERM (gracefully first, then SIGKILL).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import datetime as dt
import functools
import inspect
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

import psutil

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
    Metric("rtt_ms", "ms", False, (("p50", "<=", 0.6), ("ratio", ">=", 6))),
    Metric("rtt_assign_ms", "ms", False),
    Metric("throughput_1x1_per_s", "exec/s", True),
    Metric("throughput_8x8_per_s", "exec/s", True),
    Metric("stream_mb_per_s", "MB/s", True, (("p50", ">=", 100),)),
    Metric("stream_print_mb_per_s", "MB/s", True, (("p50", ">=", 100),)),
    Metric("stream_rss_growth_mib", "MiB", False, (("p99", "<=", 64),), peer=False),
    Metric("idle_uss_mib", "MiB", False, (("p50", "<=", 6), ("ratio", ">=", 6))),
    Metric("idle_pss_mib", "MiB", False),
    Metric("max_idle_kernels", "kernels", True, (("p50", ">=", 500),), peer=False),
    Metric("sandbox_overhead_pct", "%", False, (("p50", "<=", 5),), peer=False),
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


MODES = {
    "smoke": Counts(3, 1, 3, 1, 20, 1, 0.2, 2, 2, 1, 3, 2000, 1, True),
    "quick": Counts(15, 5, 20, 4, 300, 3, 0.5, 8, 7, 3, 100, 8000, 12, True),
    "full": Counts(60, 20, 100, 8, 2000, 8, 2.0, 8, 7, 10, 500, 10000, 40, False),
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


# --------------------------------------------------------------------------- processes we own


class Reaper:
    """Every process the bench starts, so that it can end them whatever happens."""

    def __init__(self) -> None:
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.procs: dict[int, psutil.Process] = {}
        self.dirs: list[str] = []

    def track(self, pid: int | None) -> None:
        if pid and pid not in self.procs:
            try:
                self.procs[pid] = psutil.Process(pid)
            except psutil.Error:
                pass

    def alive(self, pid: int) -> bool:
        proc = self.procs.get(pid)
        try:
            return proc is not None and proc.is_running() and \
                proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def track_tree(self, pid: int) -> None:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                self.procs.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def stop_daemon(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            self.track_tree(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc in self.daemons:
            self.daemons.remove(proc)

    def kill_all(self) -> list[int]:
        """End everything still alive; returns the pids that had to be killed."""
        for proc in list(self.daemons):
            self.stop_daemon(proc)
        killed = []
        for pid, proc in list(self.procs.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    killed.append(pid)
            except psutil.Error:
                pass
        self.procs.clear()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        return killed


class ProcTable:
    """One snapshot of the process tree (parent → children), so that finding the processes of
    hundreds of kernels costs one scan of /proc, not one per kernel."""

    def __init__(self) -> None:
        self.children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            self.children.setdefault(proc.info["ppid"] or 0, []).append(proc.pid)
        self.parent = {c: p for p, cs in self.children.items() for c in cs}

    def descendants(self, pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            kids = self.children.get(todo.pop(), [])
            out.extend(kids)
            todo.extend(kids)
        return out

    def kernel(self, pid: int) -> list[psutil.Process]:
        """A kerneld worker and every process of its kernel: all processes in its PID namespace
        (its init, e.g. kerneld-init, is a sibling under the zygote) and their descendants."""
        members = {pid}
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            for sibling in self.children.get(self.parent.get(pid, -1), []):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{sibling}/ns/pid") == ns:
                        members.add(sibling)
        members.update([d for member in members for d in self.descendants(member)])
        procs = []
        for member in sorted(members):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(member))
        return procs


def tree_memory(pid: int, procs: list[psutil.Process] | None = None
                ) -> tuple[float, float, float]:
    """(USS, PSS, RSS) in MiB of a process and all its descendants (or of `procs`)."""
    if procs is None:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    uss = pss = rss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        uss, pss, rss = uss + info.uss, pss + info.pss, rss + info.rss
    return uss / MiB, pss / MiB, rss / MiB


class RssSampler:
    """Samples one process's RSS every `interval` seconds on a thread; `peak` in bytes."""

    def __init__(self, pid: int, interval: float = 0.003) -> None:
        self.proc, self.interval = psutil.Process(pid), interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# --------------------------------------------------------------------------- the kerneld side


def _result_text(res: Any) -> str | None:
    result = getattr(res, "result", None)
    if result is None and isinstance(res, dict):
        result = res.get("result")
    if not result:
        return None
    return (result.get("data") or {}).get("text/plain")


def _check_ok(res: Any, expect: str | None) -> None:
    status = getattr(res, "status", None) or (res.get("status") if isinstance(res, dict) else None)
    if status != "ok":
        error = getattr(res, "error", None) or (res.get("error") if isinstance(res, dict) else None)
        raise RuntimeError(f"kerneld execution failed: {error}")
    if expect is not None and _result_text(res) != expect:
        raise RuntimeError(f"kerneld returned {_result_text(res)!r}, expected {expect!r}")


class KerneldSide:
    """A kerneld daemon started by the bench (or, with --embedded, a KernelManager in this
    process); `client` is what the metrics talk to, `extra_client()` opens another one."""

    kind = "daemon"

    def __init__(self, reaper: Reaper, workdir: str, name: str, pool_size: int,
                 confine: bool = True) -> None:
        # confine=False exists for bench/profile.py's diagnosis only; the bench never uses it
        self.reaper, self.workdir, self.name, self.pool_size = reaper, workdir, name, pool_size
        self.confine = confine
        self.address = f"ipc://{workdir}/{name}.sock"
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None
        self._extra: list[Any] = []
        self.worker_pids: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _config(self) -> str:
        path = os.path.join(self.workdir, f"{self.name}.toml")
        with open(path, "w") as f:
            f.write("# written by kerneld bench\n[kernels]\n"
                    f"confine = {str(self.confine).lower()}\nallow_in_process = true\n"
                    f"[pool]\nsize = {self.pool_size}\n"
                    'profiles = ["default"]\n')
        return path

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "kerneld", "serve", "--address", self.address,
               "--config", self._config()]
        # KERNELD_* variables outrank the config file: none may loosen what is measured
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KERNELD_") or k == "KERNELD_RUNTIME_PYTHON"}
        with open(self.log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, start_new_session=True)
        self.reaper.daemons.append(proc)
        return proc

    async def start(self, timeout: float = 60.0) -> None:
        import kerneld
        from kerneld.errors import KernelError
        self.proc = self._spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with code {self.proc.returncode}:\n"
                                   + self.log_tail())
            if os.path.exists(self.address[len("ipc://"):]):
                client = kerneld.connect_async(self.address, timeout=CALL_TIMEOUT)
                try:
                    await asyncio.wait_for(maybe(client.get_pool_stats()), 5)
                    self.client = client
                    break
                except (TimeoutError, KernelError, OSError):
                    await _close_client(client)
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not answer within "
                                   f"{timeout:.0f} s:\n{self.log_tail()}")
            await asyncio.sleep(0.02)
        self.reaper.track_tree(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    async def extra_client(self) -> Any:
        import kerneld
        client = kerneld.connect_async(self.address, timeout=CALL_TIMEOUT)
        self._extra.append(client)
        return client

    async def wait_pool(self, timeout: float = 30.0) -> None:
        """Until the warm pool is full again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = await maybe(self.client.get_pool_stats())
            state = (stats or {}).get("default") or {}
            if state.get("idle", 0) >= self.pool_size:
                return
            await asyncio.sleep(0.005)
        raise RuntimeError(f"the warm pool did not refill within {timeout:.0f} s: {stats}")

    async def pids(self) -> dict[str, int | None]:
        kernels = await maybe(self.client.list_kernels())
        pids = {k["id"]: k.get("pid") for k in kernels}
        self.worker_pids.update(p for p in pids.values() if p)
        for pid in pids.values():
            self.reaper.track(pid)
        return pids

    async def close(self) -> None:
        for client in [*self._extra, self.client]:
            await _close_client(client)
        self._extra, self.client = [], None
        if self.proc is not None:
            self.reaper.track_tree(self.proc.pid)
            await asyncio.to_thread(self.reaper.stop_daemon, self.proc)
        for _ in range(10):
            leftovers = [p for p in self.worker_pids if self.reaper.alive(p)]
            if not leftovers:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"worker processes outlived the daemon: {leftovers}")


class EmbeddedSide(KerneldSide):
    """Stand-in while the daemon is unavailable: a KernelManager in this process."""

    kind = "embedded (stand-in, not the daemon)"

    @property
    def pid(self) -> int:
        return os.getpid()

    async def start(self, timeout: float = 60.0) -> None:
        from kerneld import KernelManager
        from kerneld.config import ManagerConfig
        self.client = KernelManager(ManagerConfig(pool_size=self.pool_size,
                                                  allow_in_process=True))
        await self.client.start()

    async def extra_client(self) -> Any:
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


async def _close_client(client: Any) -> None:
    if client is None:
        return
    for name in ("aclose", "close"):
        method = getattr(client, name, None)
        if method is not None:
            with contextlib.suppress(Exception):  # best effort: the daemon may be gone
                await asyncio.wait_for(maybe(method()), 5)
            return


async def kd_execute(client: Any, kid: str, code: str, expect: str | None = None) -> Any:
    res = await client.execute(kid, code)
    _check_ok(res, expect)
    return res


async def kd_stream(client: Any, kid: str, code: str) -> int:
    """Run `code`, count the bytes of stdout text that reach this client."""
    stream = await maybe(client.execute_stream(kid, code))
    total = 0
    async for event in stream:
        kind = getattr(event, "type", None) or event["type"]
        if kind == "stream":
            data = getattr(event, "data", None) or event["data"]
            total += len(data["text"])
        elif kind == "execute_error":
            raise RuntimeError(f"stream execution failed: {getattr(event, 'data', event)}")
    return total


# --------------------------------------------------------------------------- the ipykernel side


class IpyKernel:
    """One ipykernel 7 kernel started by jupyter_client 8 and driven with our own loop."""

    def __init__(self, reaper: Reaper, workdir: str) -> None:
        self.reaper, self.workdir = reaper, workdir
        self.km: Any = None
        self.kc: Any = None
        self.pid: int | None = None
        self.ctx: Any = None
        self.log = open(os.path.join(workdir, "ipykernel.log"), "ab")  # noqa: SIM115 (close())

    async def start(self) -> float:
        """Start the kernel and run `1+1`; returns ms from start to the result."""
        import zmq
        import zmq.asyncio
        from jupyter_client.manager import AsyncKernelManager
        ctx = zmq.asyncio.Context()
        ctx.setsockopt(zmq.RECONNECT_IVL, 2)   # connect-before-bind costs ≤ 2 ms, not 100
        ctx.setsockopt(zmq.LINGER, 0)
        self.ctx = ctx
        t0 = time.perf_counter()
        self.km = AsyncKernelManager(
            kernel_name="python3", context=ctx,
            connection_file=os.path.join(self.workdir, f"ipy-{uuid.uuid4().hex}.json"))
        await self.km.start_kernel(stdout=self.log, stderr=self.log)
        self.pid = self.km.provisioner.process.pid
        self.reaper.track(self.pid)
        self.kc = self.km.client(context=ctx)
        self.kc.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        self.shell, self.iopub = self.kc.shell_channel.socket, self.kc.iopub_channel.socket
        self.session = self.kc.session
        self.poller = zmq.asyncio.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)
        while (await self._next(60.0))[1]["msg_type"] != "iopub_welcome":
            pass
        await self.execute("1+1", "2")
        return (time.perf_counter() - t0) * 1000

    async def _next(self, timeout: float) -> tuple[Any, dict[str, Any]]:
        """The next message from shell or iopub: (socket, message)."""
        import zmq
        while True:
            for sock in (self.shell, self.iopub):
                try:
                    frames = await sock.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                _, parts = self.session.feed_identities(frames)
                return sock, self.session.deserialize(parts)
            if not await self.poller.poll(timeout * 1000):
                raise TimeoutError(f"ipykernel pid={self.pid} did not answer in {timeout} s")

    async def execute(self, code: str, expect: str | None = None, count_stream: bool = False,
                      timeout: float = 120.0) -> int:
        """Run `code`; done when execute_reply (and, if `expect`, the execute_result; if
        `count_stream`, the final idle status) has arrived. Returns stdout bytes seen."""
        msg_id = self.kc.execute(code, store_history=True)
        reply = result = idle = False
        nbytes = 0
        while not (reply and (result or expect is None) and (idle or not count_stream)):
            sock, msg = await self._next(timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if sock is self.shell and kind == "execute_reply":
                if msg["content"]["status"] != "ok":
                    raise RuntimeError(f"ipykernel execution failed: {msg['content']}")
                reply = True
            elif kind == "execute_result":
                text = msg["content"]["data"].get("text/plain")
                if expect is not None and text != expect:
                    raise RuntimeError(f"ipykernel returned {text!r}, expected {expect!r}")
                result = True
            elif kind == "stream":
                nbytes += len(msg["content"]["text"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return nbytes

    async def close(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None:
            with contextlib.suppress(Exception):  # best effort; the pid is killed below anyway
                await asyncio.wait_for(self.km.shutdown_kernel(now=True), 10)
        if self.pid is not None and self.reaper.alive(self.pid):
            with contextlib.suppress(psutil.Error):
                self.reaper.procs[self.pid].kill()
        if self.ctx is not None:
            self.ctx.destroy(linger=0)
        self.log.close()


async def start_ipykernels(reaper: Reaper, workdir: str, n: int) -> list[IpyKernel]:
    kernels = [IpyKernel(reaper, workdir) for _ in range(n)]
    try:
        await asyncio.gather(*(k.start() for k in kernels))
    except BaseException:
        await asyncio.gather(*(k.close() for k in kernels), return_exceptions=True)
        raise
    return kernels


# --------------------------------------------------------------------------- workloads

CHUNK_CODE = ("import sys\n_kb_chunk = 'x' * (1 << 20)\nfor _ in range({n}):\n"
              "    sys.stdout.write(_kb_chunk)\nsys.stdout.flush()\n")
PRINT_CODE = "for _ in range({n}):\n    print('x' * 99)\n"     # 100 bytes a line
# Syscall-heavy loop, timed inside the kernel (transport excluded): 7 syscalls an iteration on
# objects that look the same confined or not (a pipe, a stdlib file under /usr). Returns (wall,
# CPU) seconds for n iterations, scaled from the fastest of `parts` equal slices (by CPU time):
# on a shared VM a slice disturbed by the host is slower, never faster, so the best slice is
# the sandbox's cost and not the neighbours'. The overhead is computed on the thread's CPU time,
# so that waiting for a CPU does not count as sandbox cost either.
SYSCALL_CODE = """\
import os as _kb_os, time as _kb_time
def _kb_syscalls(n, path=_kb_os.__file__, parts=5):
    r, w = _kb_os.pipe()
    buf = b"x" * 64
    best = None
    for _ in range(parts):
        t, cpu = _kb_time.perf_counter(), _kb_time.thread_time()
        for _ in range(n // parts):
            _kb_os.getpid()
            _kb_os.stat(path)
            _kb_os.write(w, buf)
            _kb_os.read(r, 64)
            fd = _kb_os.open(path, _kb_os.O_RDONLY)
            _kb_os.read(fd, 128)
            _kb_os.close(fd)
        run = (_kb_time.perf_counter() - t, _kb_time.thread_time() - cpu)
        best = run if best is None or run[1] < best[1] else best
    _kb_os.close(r)
    _kb_os.close(w)
    return best[0] * parts, best[1] * parts
def _kb_per_op(n, path=_kb_os.__file__):
    r, w = _kb_os.pipe()
    buf = b"x" * 64
    def orc():
        fd = _kb_os.open(path, _kb_os.O_RDONLY)
        _kb_os.read(fd, 128)
        _kb_os.close(fd)
    ops = {"getpid": _kb_os.getpid, "stat": lambda: _kb_os.stat(path),
           "pipe_write_read": lambda: (_kb_os.write(w, buf), _kb_os.read(r, 64)),
           "open_read_close": orc}
    out = {}
    for name, op in ops.items():
        best = None
        for _ in range(5):  # the fastest slice, as in _kb_syscalls
            t = _kb_time.thread_time()
            for _ in range(n // 5):
                op()
            took = (_kb_time.thread_time() - t) / (n // 5)
            best = took if best is None else min(best, took)
        out[name] = round(best * 1e9)
    _kb_os.close(r)
    _kb_os.close(w)
    return out
"""


CONFINED_CODE = """\
import json as _kb_json, os as _kb_os
def _kb_confinement(probe):
    fields = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    try:
        open(probe).close()
        readable = True
    except OSError:
        readable = False
    return _kb_json.dumps({{"uid": _kb_os.getuid(), "pid_in_namespace": _kb_os.getpid(),
                           "Seccomp": fields.get("Seccomp"),
                           "NoNewPrivs": fields.get("NoNewPrivs"),
                           "checkout_readable": readable}})
_kb_confinement({probe!r})
"""


async def bounded(aw: Awaitable[Any], timeout: float = CLEANUP_TIMEOUT) -> None:
    """Await a cleanup step, even while being cancelled, but never for longer than `timeout`
    (what it leaves behind, the Reaper ends)."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout)
        raise
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort
        print(f"kerneld bench: cleanup step failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


async def drive(fns: Sequence[Callable[[], Awaitable[Any]]], seconds: float) -> float:
    """Run each fn in a loop on its own for `seconds`; total completions per second."""
    async def loop(fn: Callable[[], Awaitable[Any]]) -> int:
        end, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            await fn()
            n += 1
        return n
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(loop(fn) for fn in fns))
    return sum(counts) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- the run


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
        self.kd = self.side_cls(self.reaper, self.workdir, "kerneld-a", pool_size=0)
        try:
            await self.phase("setup", self.setup)
            if "setup" in self.details["errors"]:
                return
            await self.phase("create_cold", self.create_cold)
            await self.phase("rtt", self.rtt)
            await self.phase("throughput", self.throughput)
            await self.phase("stream", self.stream)
            await self.phase("sandbox_overhead", self.sandbox_overhead)
            await self.phase("idle_kernels", self.idle_kernels)
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
        from kerneld.spawner import SOURCE_DIR
        res = await kd_execute(self.kd.client, kid, CONFINED_CODE.format(
            probe=os.path.join(SOURCE_DIR, "pyproject.toml")))
        seen = json.loads(ast.literal_eval(_result_text(res) or "'{}'"))
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
        k = IpyKernel(self.reaper, self.workdir)
        try:
            return await k.start()
        finally:
            await k.close()

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
                wall, cpu = ast.literal_eval(_result_text(res) or "(nan, nan)")
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
                per_op[name] = ast.literal_eval(_result_text(res) or "{}")
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

    # -- idle confined kernels held at once ---------------------------------------------------

    async def idle_kernels(self) -> None:
        assert self.kd is not None
        client, n = self.kd.client, self.c.idle_kernels
        await asyncio.sleep(0.5)
        avail0 = psutil.virtual_memory().available
        held: list[str] = []
        failure = None

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
                if len(held) % 100 < 4:
                    self.say(f"  {len(held)} kernels held")
            await asyncio.sleep(1.0)
            avail1 = psutil.virtual_memory().available
            answered = await self._verify(held)
            await self._held_memory(held, answered, avail0 - avail1, failure)
        finally:
            async def destroy() -> None:
                for i in range(0, len(held), 8):
                    await asyncio.gather(*(client.destroy_kernel(k) for k in held[i:i + 8]),
                                         return_exceptions=True)
            await bounded(destroy())

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

    # -- create from the warm pool (a second daemon) -------------------------------------------

    async def create_pool(self) -> None:
        side = self.side_cls(self.reaper, self.workdir, "kerneld-pool", self.c.pool_size)
        try:
            await side.start()
            client = side.client

            async def sample() -> float:
                await side.wait_pool()
                kid = ""

                async def create() -> None:
                    nonlocal kid
                    kid = await client.create_kernel()
                    await kd_execute(client, kid, "1+1", "2")
                ms = await timed(create)
                await side.pids()
                await client.destroy_kernel(kid)
                return ms
            await sample()                                                   # warm-up
            for _ in range(self.c.pool):
                self.add("create_pool_ms", "kerneld", await sample())
            self.details["pool_stats"] = await maybe(client.get_pool_stats())
        finally:
            await bounded(side.close())
        self.note("create_pool_ms", f"as create_cold_ms from a daemon with [pool] size = "
                  f"{self.c.pool_size} (default profile), the pool refilled before each "
                  "sample; ipykernel has no pool: its ratio is against ipykernel's cold start")


# --------------------------------------------------------------------------- report


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import kerneld
    from kerneld.config import ManagerConfig
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    runtime = ManagerConfig().runtime_python
    try:
        runtime_version = subprocess.run(
            [runtime, "-I", "-c", "import sys; print(sys.version.split()[0])"],
            check=False, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        runtime_version = None
    os_name = None
    try:
        with open("/etc/os-release") as f:
            os_name = next((line.split("=", 1)[1].strip().strip('"') for line in f
                            if line.startswith("PRETTY_NAME=")), None)
    except OSError:
        pass
    import zmq
    return {
        "cpu_model": cpu, "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "kernel": platform.release(), "os": os_name,
        "python": platform.python_version(), "runtime_python": runtime_version,
        "runtime_python_path": runtime,
        "kerneld": kerneld.__version__, "ipykernel": _version("ipykernel"),
        "jupyter_client": _version("jupyter_client"), "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "ipython": _version("ipython"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared VM: other work may run concurrently; see loadavg at start and end",
    }


def build_report(bench: Bench, machine: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    cold_peer = summarize(bench.samples["create_cold_ms"]["ipykernel"], False)
    for m in METRICS:
        kd = summarize(bench.samples[m.name]["kerneld"], m.higher_better)
        peer = summarize(bench.samples[m.name]["ipykernel"], m.higher_better) if m.peer else None
        r = ratio(m, kd, cold_peer if m.name == "create_pool_ms" else peer)
        metrics[m.name] = {"unit": m.unit, "kerneld": kd, "ipykernel": peer, "ratio": r}
        status, texts = evaluate(m, metrics[m.name])
        targets[m.name] = {"target": texts, "status": status}
    details = dict(bench.details)
    details["samples"] = {name: {sys_: len(v) for sys_, v in s.items()}
                          for name, s in bench.samples.items()}
    details["p99_meaning"] = ("for higher-is-better metrics (throughput, MB/s, max_idle_kernels) "
                              "p99 is the 1st percentile: the value 99 % of samples reach")
    return {"machine": machine, "metrics": metrics, "targets": targets, "details": details}


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def render_table(report: dict[str, Any]) -> str:
    head = ("metric", "unit", "kerneld p50", "p99", "ipykernel p50", "p99", "ratio", "target",
            "status")
    rows = [head]
    for name, entry in report["metrics"].items():
        kd, peer = entry["kerneld"] or {}, entry["ipykernel"] or {}
        t = report["targets"][name]
        label = name
        if name == "max_idle_kernels" and "EXTRAPOLATED" in str(
                report["details"].get("max_idle_kernels", {}).get("value_is", "")):
            label += " (extrapolated)"
        rows.append((label, entry["unit"], _fmt(kd.get("p50")), _fmt(kd.get("p99")),
                     _fmt(peer.get("p50")), _fmt(peer.get("p99")),
                     "—" if entry["ratio"] is None else f"{entry['ratio']:g}×",
                     ", ".join(t["target"]) or "—", "" if t["status"] == "n/a" else t["status"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        cells = [c.ljust(w) if j in (0, 1, 7, 8) else c.rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    m = report["machine"]
    lines.append("")
    lines.append(f"machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, "
                 f"Linux {m['kernel']}, Python {m['python']} (runtime {m['runtime_python']}), "
                 f"kerneld {m['kerneld']}, ipykernel {m['ipykernel']}, jupyter_client "
                 f"{m['jupyter_client']}, {m['date']}, loadavg {m['loadavg_at_start']} → "
                 f"{m.get('loadavg_at_end')}")
    d = report["details"]
    lines.append(f"mode: {d['mode']}; kerneld side: {d['kerneld_side']}; "
                 "ratio = times better than ipykernel; create_pool ratio vs ipykernel cold "
                 "start; p99 of higher-is-better metrics = 1st percentile")
    for phase, error in d["errors"].items():
        lines.append(f"ERROR in {phase}: {error}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


async def _run(bench: Bench) -> None:
    """Ctrl-C (asyncio.run) and SIGTERM both cancel this task: cleanup runs in `finally`s."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await bench.run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kerneld bench", description="kerneld vs ipykernel 7 side by side on this machine "
        "(see docs/benchmarks.md). Default: the full run.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="routine run, under 60 s")
    group.add_argument("--smoke", action="store_true",
                       help="minimal counts, checks the harness only (figures are meaningless)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE")
    parser.add_argument("--idle-kernels", type=int, metavar="N",
                        help="kernels to hold at once (full: 500, measured)")
    parser.add_argument("--embedded", action="store_true",
                        help="measure an in-process KernelManager instead of the daemon "
                             "(development stand-in; not the official figures)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 2 if a target is missed")
    parser.add_argument("--address", help=argparse.SUPPRESS)  # passed on by `kerneld --address`
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.address:
        print("kerneld bench: --address ignored: the bench starts and measures its own private "
              "daemons", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    counts = MODES[mode]
    if args.idle_kernels:
        counts = Counts(**{**counts.__dict__, "idle_kernels": args.idle_kernels})
    reaper = Reaper()
    workdir = tempfile.mkdtemp(prefix="kb-", dir="/tmp")
    os.chmod(workdir, 0o755)
    reaper.dirs.append(workdir)

    t0 = time.perf_counter()
    bench = Bench(counts, mode, reaper, workdir, args.embedded)
    try:
        machine = machine_info()
        asyncio.run(_run(bench))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("kerneld bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        killed = reaper.kill_all()
        bench.details["killed_at_exit"] = killed   # processes that outlived their owner
        if killed:
            print(f"kerneld bench: killed leftover processes {killed}", file=sys.stderr)
    bench.details["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = build_report(bench, machine)
    print(render_table(report))
    print(f"elapsed: {bench.details['elapsed_seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if bench.details["errors"]:
        return 1
    if args.check and any(t["status"] != "met" for t in report["targets"].values()
                          if t["status"] != "n/a"):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
