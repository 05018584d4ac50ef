"""The two systems measured: kerneld (a private daemon, or embedded) and ipykernel 7."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import psutil

from kerneld_bench.metrics import CALL_TIMEOUT
from kerneld_bench.procs import Reaper, maybe

# --------------------------------------------------------------------------- the kerneld side


def result_text(res: Any) -> str | None:
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
    if expect is not None and result_text(res) != expect:
        raise RuntimeError(f"kerneld returned {result_text(res)!r}, expected {expect!r}")


class KerneldSide:
    """A kerneld daemon started by the bench (or, with --embedded, a KernelManager in this
    process); `client` is what the metrics talk to, `extra_client()` opens another one."""

    kind = "daemon"

    def __init__(self, reaper: Reaper, workdir: str, name: str, pool_size: int,
                 confine: bool = True, max_kernels: int = 2000) -> None:
        # confine=False: bench/profile.py's diagnosis, and the workload_overhead phase's
        # baseline (kerneld_bench.overhead: the same zygote with confinement off)
        self.reaper, self.workdir, self.name, self.pool_size = reaper, workdir, name, pool_size
        self.confine, self.max_kernels = confine, max_kernels
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
                    f"max_kernels = {self.max_kernels}\n"
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
                                                  allow_in_process=True,
                                                  max_kernels=self.max_kernels))
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


class IpyKernelDied(RuntimeError):
    """The ipykernel process exited before it answered: typically the port race of
    jupyter_client's TCP ports (a free port picked, closed, then taken by another process
    before the kernel binds it). Not a cost of ipykernel's start, so the bench retries."""


class IpyKernel:
    """One ipykernel 7 kernel started by jupyter_client 8 and driven with our own loop."""

    def __init__(self, reaper: Reaper, workdir: str, kernel_name: str = "python3") -> None:
        self.reaper, self.workdir, self.kernel_name = reaper, workdir, kernel_name
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
            kernel_name=self.kernel_name, context=ctx,
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
            deadline = time.monotonic() + timeout
            while not await self.poller.poll(200):
                code = self.km.provisioner.process.poll()
                if code is not None:
                    raise IpyKernelDied(f"ipykernel pid={self.pid} exited with code {code} "
                                        f"before answering; see {self.log.name}")
                if time.monotonic() > deadline:
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


async def start_ipykernel(reaper: Reaper, workdir: str, attempts: int = 3,
                          kernel_name: str = "python3") -> tuple[IpyKernel, float]:
    """A started ipykernel and its ms to the first result; a kernel whose process died
    before answering (`IpyKernelDied`) is replaced, up to `attempts` in all, and the
    failed attempt's time is not counted."""
    for attempt in range(1, attempts + 1):
        k = IpyKernel(reaper, workdir, kernel_name)
        try:
            return k, await k.start()
        except IpyKernelDied as e:
            await k.close()
            print(f"[bench] {e}; attempt {attempt} of {attempts}", file=sys.stderr)
            if attempt == attempts:
                raise
        except BaseException:
            await k.close()
            raise
    raise AssertionError("unreachable")


async def start_ipykernels(reaper: Reaper, workdir: str, n: int) -> list[IpyKernel]:
    started = await asyncio.gather(*(start_ipykernel(reaper, workdir) for _ in range(n)),
                                   return_exceptions=True)
    kernels = [s[0] for s in started if not isinstance(s, BaseException)]
    failures = [s for s in started if isinstance(s, BaseException)]
    if failures:
        await asyncio.gather(*(k.close() for k in kernels), return_exceptions=True)
        raise failures[0]
    return kernels
