"""Supervisor side of the worker processes: the zygote client and the workers' ZeroMQ hub.

Process model: lives in the manager's process and event loop (the daemon's, or the embedding
program's). `ZygoteClient` starts the zygote (`kerneld.zygote`) by exec of the runtime
interpreter with a clean environment and asks it for forks over pipes. `WorkerHub` binds the one
ROUTER socket every worker connects to; each worker's routing id is its kernel's secret token,
so a worker can only ever speak for its own kernel.

State: pending fork requests (req id → future); the hub's token → sink map.

Liveness: the zygote reaps workers and reports `Exited`; if the zygote itself dies, every
worker dies with it (PR_SET_PDEATHSIG) and the client reports that through `on_zygote_exit`.

Failure modes: anything malformed from the zygote or a worker is logged and dropped; it never
raises into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from kerneld import protocol as p
from kerneld.errors import KernelStartError

log = logging.getLogger(__name__)

SOURCE_DIR = str(Path(__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.insert(0, {src!r}); "
         "from kerneld.zygote import main; main(sys.argv[1:])")


class ZygoteClient:
    """Starts one zygote and turns fork requests into pids."""

    def __init__(self, python: str, preload: list[str], *,
                 on_message: Callable[[Any], None], on_exit: Callable[[], None]) -> None:
        self.python, self.preload = python, preload
        self.on_message, self.on_exit = on_message, on_exit
        self.proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[p.Forked]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self._reader is not None

    async def ensure_started(self) -> None:
        async with self._lock:
            if not self.alive:
                await self._start()

    async def _start(self) -> None:
        if not os.path.exists(self.python):
            raise KernelStartError(f"worker runtime interpreter not found: {self.python} "
                                   "(run scripts/setup.sh, or set runtime.python in the config)")
        self.proc = await asyncio.create_subprocess_exec(
            self.python, "-I", "-c", _BOOT.format(src=SOURCE_DIR), *self.preload,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
            limit=p.MAX_WORKER_MESSAGE)
        assert self.proc.stdout is not None
        try:
            header = await asyncio.wait_for(self.proc.stdout.readexactly(4 + 5), timeout=60)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            _kill(self.proc)
            raise KernelStartError(f"the zygote failed to start ({self.python}); see the "
                                   "daemon's log for its error") from exc
        if header[4:] != b"ready":
            raise KernelStartError(f"the zygote spoke out of turn: {header!r}")
        self._reader = asyncio.create_task(self._read(self.proc), name="kerneld-zygote-reader")
        log.info("zygote started pid=%s python=%s preload=%s", self.proc.pid, self.python,
                 ",".join(self.preload))

    async def fork(self, **fields: Any) -> p.Forked:
        await self.ensure_started()
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        req_id = self._next_id
        future: asyncio.Future[p.Forked] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        self.proc.stdin.write(p.frame(p.encode(p.ForkRequest(req_id=req_id, **fields))))
        try:
            return await asyncio.wait_for(future, timeout=30)
        finally:
            self._pending.pop(req_id, None)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        buffer = bytearray()
        try:
            while chunk := await proc.stdout.read(1 << 20):
                buffer += chunk
                for payload in p.unframe(buffer):
                    self._dispatch(payload)
        except (ValueError, ConnectionError) as exc:
            log.error("zygote stream broken error=%r", exc)
        finally:
            await self._died(proc)

    def _dispatch(self, payload: bytes) -> None:
        try:
            msg = p.from_zygote_decoder.decode(payload)
        except p.DecodeError as exc:
            log.error("malformed message from zygote error=%s", exc)
            return
        if isinstance(msg, p.Forked):
            future = self._pending.get(msg.req_id)
            if future is not None and not future.done():
                if msg.error:
                    future.set_exception(KernelStartError(msg.error))
                else:
                    future.set_result(msg)
        else:
            self.on_message(msg)

    async def _died(self, proc: asyncio.subprocess.Process) -> None:
        _kill(proc)  # its stdout closed: normally it has exited already
        code = await proc.wait()
        self._reader = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(KernelStartError(f"the zygote exited (code {code})"))
        if proc is self.proc:
            log.warning("zygote exited pid=%s code=%s", proc.pid, code)
            self.on_exit()

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=2)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the zygote unless asyncio already knows it exited.

    Not `proc.kill()`: `subprocess.Popen.send_signal` first polls with waitpid(WNOHANG) and
    so can reap a zygote that has just exited, before asyncio's child watcher does; the
    watcher then logs "Unknown child process" and reports exit code 255. A signal to a
    zombie does nothing, and its pid cannot be reused before the watcher reaps it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


class WorkerHub:
    """The ROUTER socket every worker connects to, keyed by secret tokens.

    A plain (non-asyncio) ZeroMQ socket whose notification fd is watched with
    `loop.add_reader`: each wake-up drains every waiting message and hands it to its kernel
    at once — no future or task per message (about 50 µs a round trip, measured). ZeroMQ's fd
    is edge-triggered, so after every send the socket is re-checked for input."""

    def __init__(self, ctx: zmq.Context[Any], socket_path: str) -> None:
        self.socket_path = socket_path
        self.endpoint = f"ipc://{socket_path}"
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_WORKER_MESSAGE)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(self.endpoint)
        os.chmod(socket_path, 0o666)  # its directory (0700) keeps host users out
        self.sinks: dict[bytes, Callable[[Any], None]] = {}
        self.loop = asyncio.get_running_loop()
        self._drain_scheduled = False
        self.loop.add_reader(self.sock.getsockopt(zmq.FD), self._drain)

    def register(self, token: bytes, sink: Callable[[Any], None]) -> None:
        self.sinks[token] = sink

    def unregister(self, token: bytes) -> None:
        self.sinks.pop(token, None)

    def send(self, token: bytes, msg: Any) -> None:
        try:
            self.sock.send_multipart([token, p.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("send to worker failed error=%s", exc)
        if not self._drain_scheduled and self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        sock = self.sock
        while not sock.closed:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.error("worker hub recv failed error=%s", exc)
                return
            self._dispatch(frames)

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        sink = self.sinks.get(frames[0])
        if sink is None:
            return
        try:
            msg = p.from_worker_decoder.decode(frames[1])
        except p.DecodeError as exc:
            log.warning("malformed message from a worker dropped error=%s", exc)
            return
        try:
            sink(msg)
        except Exception:
            log.exception("worker message handler failed")

    async def close(self) -> None:
        if not self.sock.closed:
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
            self.sock.close(linger=0)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


__all__ = ["SOURCE_DIR", "WorkerHub", "ZygoteClient"]
