"""The Jupyter kernel process: five Jupyter sockets in front of one kerneld kernel.

Process model: `python -m kerneld.jupyter -f CONN --profile NAME` (a kernelspec's argv). One
asyncio loop, pyzmq asyncio sockets bound from the connection file (shell, control, stdin:
ROUTER; iopub: XPUB, so a new subscriber gets `iopub_welcome`), the heartbeat echoed by
`zmq.proxy` on its own thread, and one `kerneld.client.AsyncClient` to the daemon that holds
the kernel (created with the kernelspec's profile, so it is confined exactly like any kerneld
kernel, and shown by `kerneld ls` in namespace `jupyter`). The code runs in the daemon's
kernel, never here: with no daemon the adapter exits non-zero saying so.

State: the shell queue (requests are handled one at a time in arrival order, as ipykernel's
shell; control requests are handled at once, beside it), the execution count, the `aborting`
flag of stop_on_error.

Liveness: the kernel's `kernel_died` / `kernel_terminated` events, and a `get_kernel` probe
every `_PROBE_INTERVAL` s (a daemon gone ends every call with DaemonUnavailable): on either
the adapter exits with status 1, so the client's restarter sees a dead kernel as it would
an ipykernel that died.

Shutdown: `shutdown_request` (restart or not: jupyter_client launches a new process for a
restart), SIGTERM or SIGHUP: destroy the kernel, tell the reaper, exit 0. SIGINT (the
kernelspec's `interrupt_mode: signal`) and `interrupt_request` on control interrupt the
kernel. If the adapter is killed, its reaper (`kerneld.jupyter.reaper`) destroys the kernel.

Failure modes: a request that is not signed with the connection key is dropped and logged;
unknown request types are logged and answered with busy/idle only (as ipykernel); a failing
kerneld call becomes that request's `status: error` reply.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from kerneld.client import AsyncClient
from kerneld.errors import DaemonUnavailable, KernelError, KernelNotFound
from kerneld.jupyter import reaper
from kerneld.jupyter.wire import PROTOCOL_VERSION, BadMessage, Message, Signer, now_iso

__all__ = ["Adapter", "ConnectionInfo"]

log = logging.getLogger("kerneld.jupyter")

_PROBE_INTERVAL = 2.0
SUBSCRIBE_GRACE = 1.0  # seconds the first shell request waits for an IOPub subscriber
_STOP_ABORTING = object()
_HELP_LINKS = [
    {"text": "kerneld", "url": "https://github.com/kerneld/kerneld/blob/main/docs/jupyter.md"},
    {"text": "Python Reference", "url": "https://docs.python.org/3/"},
    {"text": "IPython Reference", "url": "https://ipython.readthedocs.io/en/stable/"},
]
_OUTPUTS = {"stream", "display_data", "update_display_data", "execute_result",
            "clear_output", "comm_open", "comm_msg", "comm_close"}
Handler = Callable[[zmq.asyncio.Socket, Message], Awaitable[None]]


class ConnectionInfo:
    """The connection file (jupyter_client writes it before launching the kernel)."""

    CHANNELS = ("shell", "iopub", "stdin", "control", "hb")

    def __init__(self, data: dict[str, Any], source: str) -> None:
        def field(name: str, kind: type) -> Any:
            value = data.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{source}: `{name}` must be a {kind.__name__}, "  # noqa: TRY004
                                 f"got {value!r:.60}")
            return value
        self.transport = data.get("transport", "tcp")
        if self.transport not in ("tcp", "ipc"):
            raise ValueError(f"{source}: transport {self.transport!r} (want tcp or ipc)")
        self.ip: str = field("ip", str)
        self.ports = {name: field(f"{name}_port", int) for name in self.CHANNELS}
        self.key: bytes = str(data.get("key", "")).encode()
        self.scheme: str = str(data.get("signature_scheme", "hmac-sha256"))

    def url(self, channel: str) -> str:
        port = self.ports[channel]
        if self.transport == "ipc":
            return f"ipc://{self.ip}-{port}"
        return f"tcp://{self.ip}:{port}"


class Adapter:
    """One Jupyter kernel in front of one kerneld kernel (see the module docstring)."""

    def __init__(self, conn: ConnectionInfo, profile: str, address: str | None,
                 kernel_id: str, reaper_fd: int | None = None) -> None:
        self.conn, self.profile, self.kernel_id = conn, profile, kernel_id
        self.client = AsyncClient(address, connect_timeout=3.0)
        self.address = self.client.address
        self.signer = Signer(conn.key, conn.scheme)
        self._reaper_fd = reaper_fd
        self._ctx = zmq.asyncio.Context()
        self._hb_ctx = zmq.Context()
        self._socks: dict[str, zmq.asyncio.Socket] = {}
        self._out: dict[str, zmq.Socket[bytes]] = {}  # the same sockets, for sending
        self._shell_q: asyncio.Queue[Any] = asyncio.Queue()
        self._subscribed = asyncio.Event()  # some client subscribed to IOPub (see _shell_worker)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped: asyncio.Future[int] | None = None
        self._aborting = False
        self._count = 0
        self._created = False
        self._language_version = ""
        self._banner = ""

    # ================================================================== lifetime

    async def run(self) -> int:
        """Bind, create the kernel, serve until shutdown or death; return the exit status."""
        loop = asyncio.get_running_loop()
        self._stopped = loop.create_future()
        self._bind()
        try:
            await self._create()
        except KernelError as exc:
            self._close_sockets()
            raise _fatal(self._explain(exc)) from None
        for sig, action in ((signal.SIGINT, self._on_sigint),
                            (signal.SIGTERM, lambda: self.stop(0)),
                            (signal.SIGHUP, lambda: self.stop(0))):
            loop.add_signal_handler(sig, action)
        self._spawn(self._read("shell", self._enqueue_shell))
        self._spawn(self._read("control", self._on_control))
        self._spawn(self._read("stdin", self._on_stdin))
        self._spawn(self._subscriptions())
        self._spawn(self._shell_worker())
        self._spawn(self._probe())
        code = await self._stopped
        await self._teardown()
        return code

    def stop(self, code: int) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(code)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("adapter task failed", exc_info=task.exception())
            self.stop(1)

    def _bind(self) -> None:
        kinds = {"shell": zmq.ROUTER, "control": zmq.ROUTER, "stdin": zmq.ROUTER,
                 "iopub": zmq.XPUB}
        for name, kind in kinds.items():
            sock = self._ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 1000)
            if kind == zmq.XPUB:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # a welcome for every subscriber
            sock.bind(self.conn.url(name))
            self._socks[name] = sock
            self._out[name] = zmq.Socket.shadow(sock.underlying)
        hb = self._hb_ctx.socket(zmq.ROUTER)
        hb.setsockopt(zmq.LINGER, 0)
        hb.bind(self.conn.url("hb"))
        threading.Thread(target=_echo, args=(hb,), name="heartbeat", daemon=True).start()

    async def _create(self) -> None:
        namespace, _, name = self.kernel_id.rpartition(":")
        self.kernel_id = await self.client.create_kernel(id=name, namespace=namespace or None,
                                                         profile=self.profile)
        self._created = True
        if self._reaper_fd is not None:
            reaper.tell(self._reaper_fd, b"c")
        for kind in ("kernel_died", "kernel_terminated"):
            await self.client.on_kernel_event(self.kernel_id, kind, self._on_death)
        for kind in ("comm_open", "comm_msg", "comm_close"):  # sent by a thread between cells
            await self.client.on_kernel_event(self.kernel_id, kind, self._on_idle_comm)
        self._language_version = await self._runtime_version()
        self._banner = (f"Python {self._language_version} in a kerneld kernel "
                        f"(profile {self.profile!r}, confined by the OS)\n")
        log.info("kernel ready kernel=%s profile=%s", self.kernel_id, self.profile)

    async def _runtime_version(self) -> str:
        """The version of the interpreter the kernel runs (the daemon's runtime, not ours)."""
        code = "__import__('platform').python_version()"
        options: dict[str, Any] = {"user_expressions": {"v": code}}
        try:
            res = await self.client.execute(self.kernel_id, "", silent=True,
                                            store_history=False, **options)
            text = res.user_expressions["v"]["data"]["text/plain"]
        except (TypeError, KeyError):  # a kerneld without user_expressions: print it
            printed = []
            async for event in self.client.execute_stream(
                    self.kernel_id, f"print({code}, end='')", silent=True,
                    store_history=False):
                if event.type == "stream":
                    printed.append(str(event.data.get("text", "")))
            text = repr("".join(printed))
        try:
            version = str(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            version = ""
        return version or ".".join(map(str, sys.version_info[:3]))

    def _explain(self, exc: KernelError) -> str:
        if isinstance(exc, DaemonUnavailable):
            return (f"kerneld.jupyter: no kerneld daemon answers at {self.address} ({exc}). "
                    "Start it with `kerneld serve` (or `systemctl start kerneld`), or point "
                    "the kernelspec at it with `kerneld jupyter install --address ADDR` or "
                    "$KERNELD_ADDRESS. This kernel never runs code outside the daemon's "
                    "confinement, so it stops here.")
        return (f"kerneld.jupyter: the daemon at {self.address} refused the kernel "
                f"(profile {self.profile!r}): {type(exc).__name__}: {exc}")

    def _on_idle_comm(self, event: Any) -> None:
        """A comm message the kernel sent outside any request (a widget updated from a
        thread between cells): on IOPub with no parent, as ipykernel does. Those sent during
        a request arrive as that request's events (`_run`) and are skipped here."""
        if event.execution_id is None:
            self._publish_comm(event.type, event.data, {})

    def _on_death(self, event: Any) -> None:
        data = event.data or {}
        if event.type == "kernel_died":
            log.error("the kerneld kernel died kernel=%s reason=%s", self.kernel_id,
                      data.get("reason"))
        else:
            log.error("the kerneld kernel was terminated kernel=%s reason=%s",
                      self.kernel_id, data.get("reason"))
        self.stop(1)

    async def _probe(self) -> None:
        """The second liveness signal: the daemon answers and still has the kernel."""
        while True:
            await asyncio.sleep(_PROBE_INTERVAL)
            try:
                kernel = await asyncio.wait_for(self.client.get_kernel(self.kernel_id), 10)
            except (KernelError, TimeoutError) as exc:
                log.error("lost the kerneld kernel kernel=%s error=%s", self.kernel_id, exc)
                self.stop(1)
                return
            if kernel.info.get("status") == "dead":
                log.error("the kerneld kernel is dead kernel=%s", self.kernel_id)
                self.stop(1)
                return

    async def _teardown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._created:
            try:
                await asyncio.wait_for(self.client.destroy_kernel(self.kernel_id), 10)
                if self._reaper_fd is not None:
                    reaper.tell(self._reaper_fd, b"d")
            except KernelNotFound:
                if self._reaper_fd is not None:
                    reaper.tell(self._reaper_fd, b"d")
            except (KernelError, TimeoutError) as exc:
                log.warning("could not destroy the kernel kernel=%s error=%s (the reaper "
                            "retries)", self.kernel_id, exc)
        await self.client.close()
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self._socks.values():
            sock.close(linger=200)
        self._ctx.term()
        self._hb_ctx.destroy(linger=0)

    # ================================================================== sockets

    async def _read(self, channel: str, handle: Callable[[zmq.asyncio.Socket, Message],
                                                        Awaitable[None]]) -> None:
        sock = self._socks[channel]
        while True:
            frames = await sock.recv_multipart()
            msg = self._parse(channel, frames)
            if msg is not None:
                await handle(sock, msg)

    def _parse(self, channel: str, frames: list[bytes]) -> Message | None:
        try:
            return self.signer.parse(frames)
        except BadMessage as exc:
            log.warning("dropped a message channel=%s reason=%s", channel, exc)
            return None

    async def _subscriptions(self) -> None:
        """XPUB: a subscription event per new subscriber → `iopub_welcome` (protocol 5.4)."""
        sock = self._socks["iopub"]
        while True:
            frame = await sock.recv()
            if frame[:1] == b"\x01":
                self._subscribed.set()
                topic = frame[1:]
                self._send("iopub", self.signer.serialize(
                    "iopub_welcome", {"subscription": topic.decode("utf-8", "replace")}, {},
                    idents=[topic] if topic else None))

    async def publish(self, msg_type: str, content: dict[str, Any], parent: Message,
                      *, metadata: dict[str, Any] | None = None,
                      buffers: list[bytes] | None = None) -> None:
        topic = f"kernel.{self.signer.session}.{msg_type}".encode()
        self._send("iopub", self.signer.serialize(
            msg_type, content, parent.header, idents=[topic], metadata=metadata,
            buffers=buffers))

    async def reply(self, sock: zmq.asyncio.Socket, parent: Message, msg_type: str,
                    content: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        name = next(n for n, s in self._socks.items() if s is sock)
        self._send(name, self.signer.serialize(
            msg_type, content, parent.header, idents=parent.idents, metadata=metadata))

    def _send(self, channel: str, frames: list[bytes]) -> None:
        """Send at once, without a future: XPUB and ROUTER never block a sender (at their
        high-water mark they drop, as ipykernel's sockets do), so there is nothing to await;
        this keeps a `1+1` round trip's six messages off the event loop's scheduling."""
        try:
            self._out[channel].send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("dropped a message channel=%s (peer not reading)", channel)

    async def _status(self, state: str, parent: Message) -> None:
        await self.publish("status", {"execution_state": state}, parent)

    # ================================================================== dispatch

    async def _enqueue_shell(self, _sock: zmq.asyncio.Socket, msg: Message) -> None:
        self._shell_q.put_nowait(msg)

    def _drain_shell_nowait(self) -> None:
        """Queue every shell message zmq already holds (so stop_on_error aborts them)."""
        while True:
            try:
                frames = self._out["shell"].recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = self._parse("shell", frames)
            if msg is not None:
                self._shell_q.put_nowait(msg)

    async def _shell_worker(self) -> None:
        sock = self._socks["shell"]
        while True:
            msg = await self._shell_q.get()
            if not self._subscribed.is_set():
                # A request can arrive before its client's IOPub subscription has: Jupyter
                # Server's restart reuses the ports, and a client that executes at once on
                # its old connection otherwise lost busy/output/idle (6 of 8 restarts,
                # measured; ipykernel 2 of 8). Hold the first request until a subscriber is
                # there, for at most SUBSCRIBE_GRACE: a client without IOPub still works.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_GRACE)
            if msg is _STOP_ABORTING:
                self._aborting = False
                continue
            await self._dispatch(sock, msg, self._shell_handlers)

    async def _on_control(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        await self._dispatch(sock, msg, self._control_handlers)

    async def _dispatch(self, sock: zmq.asyncio.Socket, msg: Message,
                        handlers: dict[str, Handler]) -> None:
        """busy → the handler (its reply, its IOPub) → idle, for every request."""
        await self._status("busy", msg)
        try:
            if msg.msg_type == "execute_request" and self._aborting:
                await self.reply(sock, msg, "execute_reply", {"status": "aborted"},
                                 {"status": "aborted", "started": now_iso()})
                return
            handler = handlers.get(msg.msg_type)
            if handler is None:
                log.warning("unknown message type=%s (ignored)", msg.msg_type)
                return
            await handler(sock, msg)
        except DaemonUnavailable as exc:
            log.error("lost the daemon at %s: %s", self.address, exc)
            self.stop(1)
        except Exception as exc:  # one malformed request must not end the kernel
            log.exception("request failed type=%s", msg.msg_type)
            if msg.msg_type.endswith("_request"):
                await self.reply(sock, msg, msg.msg_type[:-len("_request")] + "_reply", {
                    "status": "error", "ename": type(exc).__name__, "evalue": str(exc),
                    "traceback": []})
        finally:
            await self._status("idle", msg)

    @property
    def _shell_handlers(self) -> dict[str, Handler]:
        return {"execute_request": self._execute, "kernel_info_request": self._kernel_info,
                "complete_request": self._complete, "inspect_request": self._inspect,
                "is_complete_request": self._is_complete, "history_request": self._history,
                "comm_info_request": self._comm_info, "connect_request": self._connect,
                "comm_open": self._comm, "comm_msg": self._comm, "comm_close": self._comm,
                "shutdown_request": self._shutdown}

    @property
    def _control_handlers(self) -> dict[str, Handler]:
        return {"kernel_info_request": self._kernel_info, "connect_request": self._connect,
                "interrupt_request": self._interrupt, "shutdown_request": self._shutdown}

    # ================================================================== handlers

    def kernel_info(self) -> dict[str, Any]:
        from kerneld import __version__
        version = self._language_version
        return {"status": "ok", "protocol_version": PROTOCOL_VERSION,
                "implementation": "kerneld", "implementation_version": __version__,
                "language_info": {
                    "name": "python", "version": version, "mimetype": "text/x-python",
                    "codemirror_mode": {"name": "ipython", "version": 3},
                    "pygments_lexer": "ipython3", "nbconvert_exporter": "python",
                    "file_extension": ".py"},
                "banner": self._banner, "help_links": _HELP_LINKS, "debugger": False,
                "supported_features": []}

    async def _kernel_info(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        await self.reply(sock, msg, "kernel_info_reply", self.kernel_info())

    async def _connect(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        content: dict[str, Any] = {f"{name}_port": port for name, port in self.conn.ports.items()}
        await self.reply(sock, msg, "connect_reply", {"status": "ok", **content})

    async def _complete(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        code = str(msg.content.get("code", ""))
        pos = msg.content.get("cursor_pos")
        content = await self._ask(self.client.complete(self.kernel_id, code, _pos(pos, code)))
        await self.reply(sock, msg, "complete_reply", content)

    async def _inspect(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        code = str(msg.content.get("code", ""))
        pos, detail = msg.content.get("cursor_pos"), msg.content.get("detail_level", 0)
        content = await self._ask(self.client.inspect(
            self.kernel_id, code, _pos(pos, code), detail if detail in (0, 1) else 0))
        await self.reply(sock, msg, "inspect_reply", content)

    async def _is_complete(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        code = str(msg.content.get("code", ""))
        content = await self._ask(self.client.is_complete(self.kernel_id, code))
        await self.reply(sock, msg, "is_complete_reply", content)

    async def _history(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        c = msg.content
        kind = str(c.get("hist_access_type", "tail"))
        args = {k: c[k] for k in ("output", "raw", "session", "start", "stop", "n", "pattern",
                                  "unique") if k in c}
        content = await self._ask(self.client.history(self.kernel_id, hist_access_type=kind,
                                                      **args))
        session = c.get("session")
        if kind == "range" and isinstance(session, int) and session > 0:
            # IPython answers a range of the current session as session 0 while its `tail`
            # names it by number: answer with the number the client asked for.
            content["history"] = [[session, *row[1:]] if row and row[0] == 0 else row
                                  for row in content.get("history") or []]
        await self.reply(sock, msg, "history_reply", content)

    async def _comm_info(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        target = msg.content.get("target_name")
        content = await self._ask(self.client.comm_info(
            self.kernel_id, target if isinstance(target, str) else None))
        await self.reply(sock, msg, "comm_info_reply", content)

    async def _ask(self, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """A kerneld call answered as Jupyter content; its failure as `status: error`."""
        try:
            return dict(await call)
        except DaemonUnavailable:
            raise
        except KernelError as exc:
            return {"status": "error", "ename": type(exc).__name__, "evalue": str(exc),
                    "traceback": []}

    async def _interrupt(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        content = await self._ask(self._interrupt_kernel())
        await self.reply(sock, msg, "interrupt_reply", content)

    async def _interrupt_kernel(self) -> dict[str, Any]:
        await self.client.interrupt_kernel(self.kernel_id)
        return {"status": "ok"}

    def _on_sigint(self) -> None:
        self._spawn(self._ask(self._interrupt_kernel()))

    async def _shutdown(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        content = {"status": "ok", "restart": bool(msg.content.get("restart", False))}
        await self.reply(sock, msg, "shutdown_reply", content)
        await self.publish("shutdown_reply", content, msg)
        self.stop(0)

    # ------------------------------------------------------------------ execute

    async def _execute(self, sock: zmq.asyncio.Socket, msg: Message) -> None:
        c = msg.content
        code = str(c.get("code", ""))
        silent = bool(c.get("silent", False))
        store_history = bool(c.get("store_history", not silent)) and not silent
        expressions = c.get("user_expressions") or {}
        if not isinstance(expressions, dict):  # as a missing one: nothing to evaluate
            expressions = {}
        started = now_iso()
        if not silent:
            await self.publish("execute_input", {
                "code": code, "execution_count": self._count + (1 if store_history else 0)},
                msg)
        options: dict[str, Any] = {"silent": silent, "store_history": store_history,
                                   "allow_stdin": bool(c.get("allow_stdin", False))}
        if expressions:
            options["user_expressions"] = {str(k): str(v) for k, v in expressions.items()}
        content = await self._run(msg, code, options)
        status = content["status"]
        await self.reply(sock, msg, "execute_reply", content, {
            "started": started, "dependencies_met": True, "engine": self.signer.session,
            "status": status})
        if status == "error" and c.get("stop_on_error", True):
            self._abort_queued()

    async def _run(self, msg: Message, code: str, options: dict[str, Any]) -> dict[str, Any]:
        """Stream one execution's events to IOPub / stdin; its execute_reply content."""
        stream = self.client.execute_stream(self.kernel_id, code, **options)
        published_error = False
        try:
            async for event in stream:
                if event.type == "execute_error":
                    published_error = True
                    await self.publish("error", _error(event.data), msg)
                elif event.type == "input_request":
                    await self._input_request(msg, event.data)
                elif event.type in _OUTPUTS:
                    await self._output(msg, event.type, event.data)
            result = stream.result
            assert result is not None
        except DaemonUnavailable:
            raise
        except KernelError as exc:
            error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": [str(exc)]}
            await self.publish("error", error, msg)
            return {"status": "error", "execution_count": self._count, **error}
        if result.execution_count is not None:
            self._count = result.execution_count
        if result.status == "ok":
            return {"status": "ok", "execution_count": self._count,
                    "user_expressions": getattr(result, "user_expressions", None) or {},
                    "payload": getattr(result, "payload", None) or []}
        error = _error(result.error or {})
        if not published_error:
            await self.publish("error", error, msg)
        return {"status": "error", "execution_count": self._count, **error,
                "user_expressions": {}, "payload": []}

    async def _output(self, msg: Message, kind: str, data: dict[str, Any]) -> None:
        if kind.startswith("comm_"):
            self._publish_comm(kind, data, msg.header)
        else:
            await self.publish(kind, data, msg)

    def _publish_comm(self, kind: str, data: dict[str, Any], parent: dict[str, Any]) -> None:
        """A comm event as Jupyter sends it: its `metadata` in the message's metadata (the
        widget manager checks `metadata.version` of a comm_open) and its buffers as frames."""
        content = dict(data)
        buffers = [bytes(b) for b in content.pop("buffers", None) or []]
        metadata = content.pop("metadata", None)
        topic = f"kernel.{self.signer.session}.{kind}".encode()
        self._send("iopub", self.signer.serialize(
            kind, content, parent, idents=[topic],
            metadata=metadata if isinstance(metadata, dict) else None, buffers=buffers))

    async def _input_request(self, msg: Message, data: dict[str, Any]) -> None:
        self._send("stdin", self.signer.serialize(
            "input_request", {"prompt": str(data.get("prompt", "")),
                              "password": bool(data.get("password", False))},
            msg.header, idents=msg.idents))

    async def _on_stdin(self, _sock: zmq.asyncio.Socket, msg: Message) -> None:
        if msg.msg_type != "input_reply":
            log.warning("unexpected message on stdin type=%s (ignored)", msg.msg_type)
            return
        await self._ask(self._input_reply(str(msg.content.get("value", ""))))

    async def _input_reply(self, value: str) -> dict[str, Any]:
        await self.client.input_reply(self.kernel_id, value)
        return {"status": "ok"}

    def _abort_queued(self) -> None:
        """stop_on_error: abort the executes already waiting (as ipykernel's _abort_queues):
        everything queued before the marker is answered `aborted`."""
        self._aborting = True
        self._drain_shell_nowait()
        self._shell_q.put_nowait(_STOP_ABORTING)

    # ------------------------------------------------------------------ comms from clients

    async def _comm(self, _sock: zmq.asyncio.Socket, msg: Message) -> None:
        """A front end's comm message: run by the kernel's CommManager in its FIFO; what the
        handler emits goes to IOPub with this message as parent (no reply: Jupyter's comms
        have none)."""
        stream = self.client.send_comm(self.kernel_id, msg.msg_type, msg.content,
                                       metadata=msg.metadata, buffers=list(msg.buffers))
        try:
            async for event in stream:
                if event.type == "execute_error":
                    await self.publish("error", _error(event.data), msg)
                elif event.type in _OUTPUTS:
                    await self._output(msg, event.type, event.data)
        except DaemonUnavailable:
            raise
        except KernelError as exc:
            log.warning("%s failed: %s", msg.msg_type, exc)


def _error(data: dict[str, Any]) -> dict[str, Any]:
    return {"ename": str(data.get("ename", "Error")), "evalue": str(data.get("evalue", "")),
            "traceback": [str(line) for line in data.get("traceback") or []]}


def _pos(pos: Any, code: str) -> int:
    return pos if isinstance(pos, int) and not isinstance(pos, bool) else len(code)


def _echo(sock: zmq.Socket[bytes]) -> None:
    """The heartbeat: every ping comes back as it came (ipykernel's ROUTER device)."""
    try:
        zmq.proxy(sock, sock)
    except zmq.ContextTerminated:
        pass
    except zmq.ZMQError as exc:
        if exc.errno != zmq.ENOTSOCK:
            log.warning("heartbeat stopped: %s", exc)


class _Fatal(SystemExit):
    pass


def _fatal(message: str) -> _Fatal:
    print(message, file=sys.stderr, flush=True)
    return _Fatal(1)


def run(conn: ConnectionInfo, profile: str, address: str | None, kernel_id: str,
        reaper_fd: int | None) -> int:
    adapter = Adapter(conn, profile, address, kernel_id, reaper_fd)
    return asyncio.run(adapter.run())

