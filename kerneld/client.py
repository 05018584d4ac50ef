"""Clients of a running daemon: `AsyncClient` (the core) and `Client` (a thin sync wrapper).

Both have the `KernelManager` methods, arguments, return values and exceptions (SPEC.md), so
code written against the embedded manager runs against a daemon. Differences, all forced by a
network in between: every `AsyncClient` method that reaches the daemon is a coroutine (also
those that are plain methods on the manager, such as `list_kernels` or `get_kernel`), except
`execute_stream`, which returns an async iterator at once as the manager's does; a stream's
`execution_id` is known from its first event on; relative `filesystem.root` and profile
paths are made absolute on the client's side; event callbacks of the sync `Client` run on its background
thread.

Process model: `AsyncClient` owns one ZeroMQ DEALER socket, bound to the event loop it first
connects on and drained by `kerneld.zmqio.Drain` (its fd watched with `loop.add_reader`): every
frame is routed by request id as it is read, to a future for plain calls, a queue for streams,
a callback for subscriptions (no reader task and no pyzmq futures: one task switch less per
call). A coroutine callback becomes a task that the client keeps, and cancels and awaits when
it closes. Any number of tasks on that loop may share one client. `Client`
runs one private event loop in a background thread and submits the async core's coroutines to
it, so it can be used from several threads at once.

Liveness: a socket monitor tracks the connection. The first use connects and pings (a missing
or dead ipc socket fails at once; otherwise within `connect_timeout`), raising
`DaemonUnavailable` naming the address. When the connection drops, every request in flight
ends with `DaemonUnavailable` (after 50 ms, so replies already on their way are still routed);
new requests wait up to `connect_timeout` for a reconnection. Nothing waits forever on a daemon
that is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, Self, TypeVar, cast

import msgspec
import zmq
from zmq.utils.monitor import parse_monitor_message

from kerneld import protocol as p
from kerneld.config import client_default_address
from kerneld.errors import DaemonUnavailable, InvalidArgument, KernelError, LimitExceeded, from_wire
from kerneld.zmqio import Drain

__all__ = [
    "AsyncClient",
    "AsyncRemoteKernel",
    "Client",
    "RemoteExecutionStream",
    "RemoteKernel",
    "SyncExecutionStream",
]

log = logging.getLogger(__name__)

_DISCONNECT_GRACE = 0.05
_decode = p.to_client_decoder.decode
_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                   | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
Listener = Callable[[p.KernelEvent], Any]


class _Pending:
    """What the reader does with frames carrying one request id."""

    __slots__ = ("callback", "epoch", "event_type", "future", "kernel_id", "queue")

    def __init__(self, future: asyncio.Future[p.Reply] | None, epoch: int,
                 queue: asyncio.Queue[Any] | None = None, callback: Listener | None = None
                 ) -> None:
        self.future, self.queue, self.callback, self.epoch = future, queue, callback, epoch
        self.kernel_id = self.event_type = ""


class AsyncClient:
    """asyncio client of a kerneld daemon (see the module docstring).

    address: `ipc:///path` or `tcp://host:port`; default `$KERNELD_ADDRESS`, else the user's
    daemon socket if it exists, else the system one (`/run/kerneld/kerneld.sock`).
    timeout: seconds any one call may take (None: no limit; the connection is watched anyway).
    connect_timeout: seconds to wait for the daemon to answer when connecting.
    server_key / public_key / secret_key: CURVE keys (Z85) for `tcp://` daemons; default
    `$KERNELD_SERVER_KEY` and the certificate file `$KERNELD_CLIENT_KEY_FILE`.
    """

    def __init__(self, address: str | None = None, *, timeout: float | None = None,
                 connect_timeout: float = 3.0, server_key: str | bytes | None = None,
                 public_key: str | bytes | None = None, secret_key: str | bytes | None = None
                 ) -> None:
        self.address = address or os.environ.get("KERNELD_ADDRESS") or client_default_address()
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._curve = _curve_keys(server_key, public_key, secret_key)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drains: list[Drain] = []
        self._reader: Drain | None = None
        self._listeners: set[asyncio.Future[Any]] = set()  # coroutine callbacks running
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._up: asyncio.Event | None = None
        self._lock: asyncio.Lock | None = None
        self._epoch = 0
        self._verified = False
        self._rejected: str | None = None
        self._closed = False

    # ================================================================== connection

    async def connect(self) -> AsyncClient:
        """Connect and ping now (otherwise the first call does). Raises DaemonUnavailable."""
        await self._ready()
        return self

    async def _ready(self) -> None:
        if self._verified and self._up is not None and self._up.is_set():
            return
        if self._closed:
            raise DaemonUnavailable(f"this client of {self.address} is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._sock is None:
                self._open()
            assert self._up is not None
            if not self._up.is_set():
                try:
                    await asyncio.wait_for(self._up.wait(), self.connect_timeout)
                except TimeoutError:
                    raise self._unavailable() from None
            if not self._verified:
                reply = await self._request("ping", {}, self.connect_timeout)
                if not isinstance(reply, dict) or reply.get("protocol") != p.VERSION:
                    raise DaemonUnavailable(f"the daemon at {self.address} speaks another "
                                            f"protocol version ({reply!r:.100})")
                self._verified = True

    def _open(self) -> None:
        _precheck(self.address)
        loop = self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)   # never queue requests for a connection not up
        sock.setsockopt(zmq.ROUTING_ID, uuid.uuid4().bytes)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self.address.startswith("tcp://"):
            sock.setsockopt(zmq.HEARTBEAT_IVL, 10_000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30_000)
            if self._curve is not None:
                server, public, secret = self._curve
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                    server, public, secret)
        self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        self._up = asyncio.Event()
        sock.connect(self.address)
        self._sock = sock
        self._reader = Drain(loop, sock, self._route, multipart=False)
        self._drains = [self._reader, Drain(loop, self._monitor, self._on_monitor, batch=None)]

    def _unavailable(self) -> DaemonUnavailable:
        why = f" ({self._rejected})" if self._rejected else ""
        return DaemonUnavailable(f"no kerneld daemon answers at {self.address}{why}; "
                                 "start one with `kerneld serve` or set $KERNELD_ADDRESS")

    def _on_monitor(self, message: list[bytes]) -> None:
        loop, up = self._loop, self._up
        assert loop is not None and up is not None
        event = parse_monitor_message(message)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._rejected = None
            up.set()
        elif event == zmq.EVENT_DISCONNECTED:
            up.clear()
            self._epoch += 1
            loop.call_later(_DISCONNECT_GRACE, self._fail_before, self._epoch,
                            f"lost the connection to the daemon at {self.address}")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._rejected = "the daemon rejected this client's CURVE key"
        else:
            self._rejected = "the connection handshake failed (CURVE keys?)"

    def _fail_before(self, epoch: int, message: str) -> None:
        for rid, entry in list(self._pending.items()):
            if entry.epoch < epoch:
                self._pending.pop(rid, None)
                self._fail(entry, DaemonUnavailable(message))

    @staticmethod
    def _fail(entry: _Pending, exc: BaseException) -> None:
        if entry.future is not None and not entry.future.done():
            entry.future.set_exception(exc)
        if entry.queue is not None:
            entry.queue.put_nowait(exc)

    def _route(self, raw: bytes) -> None:
        """Hand one frame from the daemon to whoever waits for its request id."""
        try:
            msg = _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not from a kerneld daemon: ignore
        entry = self._pending.get(msg.id)
        if entry is None:
            return  # a call that was abandoned (timeout, cancelled, stream closed)
        if type(msg) is p.Reply:
            if entry.callback is None:
                del self._pending[msg.id]
            if entry.queue is not None:
                entry.queue.put_nowait(msg)
            elif entry.future is not None and not entry.future.done():
                entry.future.set_result(msg)
        elif type(msg) is p.Event:
            if entry.queue is not None:
                entry.queue.put_nowait(msg.event)
            elif entry.callback is not None:
                self._call_listener(entry.callback, msg.event)

    def _call_listener(self, callback: Listener, event: p.KernelEvent) -> None:
        try:
            outcome = callback(event)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._listeners.add(task)
                task.add_done_callback(self._listener_done)
        except Exception:  # a listener's bug must not stop the reader
            log.exception("event listener failed event=%s", event.type)

    def _listener_done(self, task: asyncio.Future[Any]) -> None:
        self._listeners.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event listener failed", exc_info=task.exception())

    async def _send(self, rid: str, op: str, args: dict[str, Any]) -> None:
        try:
            payload = p.encode(p.Request(p.VERSION, rid, op, args))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(f"{op}: the arguments cannot be sent: {exc}") from None
        if len(payload) > p.MAX_REQUEST_BYTES:
            raise LimitExceeded(f"{op}: request of {len(payload)} bytes exceeds the limit of "
                                f"{p.MAX_REQUEST_BYTES} bytes")
        sock, reader = self._sock, self._reader
        assert sock is not None and reader is not None and self._up is not None
        delay = 0.001
        while True:
            try:
                sock.send(payload, flags=zmq.NOBLOCK, copy=len(payload) < 65536)
                reader.after_send()
                return
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                raise DaemonUnavailable(f"cannot send to {self.address}: {exc}") from None
            if not self._up.is_set():  # disconnected: wait for the reconnection
                try:
                    await asyncio.wait_for(self._up.wait(), self.connect_timeout)
                except TimeoutError:
                    raise self._unavailable() from None
            else:                      # the daemon is not reading fast enough
                await asyncio.sleep(delay)
                delay = min(2 * delay, 0.05)

    # ================================================================== calls

    async def _request(self, op: str, args: dict[str, Any],
                       timeout: float | None = None) -> Any:
        """One call: send, await the terminal Reply, return its value or raise its error."""
        if not self._verified and op != "ping":
            await self._ready()
        rid = f"{next(self._ids):x}"
        future: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, self._epoch)
        try:
            await self._send(rid, op, args)
            timeout = timeout if timeout is not None else self.timeout
            if timeout is None:
                reply = await future
            else:
                try:
                    reply = await asyncio.wait_for(future, timeout)
                except TimeoutError:
                    raise DaemonUnavailable(f"{op}: no reply from the daemon at "
                                            f"{self.address} within {timeout} s") from None
        finally:
            self._pending.pop(rid, None)
        if reply.ok:
            return reply.value
        raise from_wire(reply.error)

    async def _open_stream(self, op: str, args: dict[str, Any]
                           ) -> tuple[str, asyncio.Queue[Any]]:
        await self._ready()
        rid = f"{next(self._ids):x}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending[rid] = _Pending(None, self._epoch, queue=queue)
        try:
            await self._send(rid, op, args)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return rid, queue

    # ---------------------------------------------------------------- the manager's methods

    async def create_kernel(
        self, id: str | None = None, namespace: str | None = None, mode: Any = "worker",
        profile: str | None = None, env: dict[str, str] | None = None,
        filesystem: dict[str, Any] | None = None, permissions: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None, inactivity_timeout: float | None = None,
        max_execution_time: float | None = None,
    ) -> str:
        if isinstance(filesystem, dict) and isinstance(filesystem.get("root"), str | os.PathLike):
            filesystem = {**filesystem, "root": os.path.abspath(
                os.path.expanduser(os.fspath(filesystem["root"])))}
        profile = _profile_arg(profile)
        args = _given(id=id, namespace=namespace, mode=str(getattr(mode, "value", mode)),
                      profile=profile, env=env, filesystem=filesystem, permissions=permissions,
                      limits=limits, inactivity_timeout=inactivity_timeout,
                      max_execution_time=max_execution_time)
        return str(await self._request("create_kernel", args))

    async def destroy_kernel(self, kernel_id: str) -> None:
        await self._request("destroy_kernel", {"kernel_id": kernel_id})

    async def destroy_all(self, namespace: str | None = None) -> int:
        return int(await self._request("destroy_all", _given(namespace=namespace)))

    async def get_kernel(self, kernel_id: str) -> AsyncRemoteKernel:
        info = await self._request("get_kernel", {"kernel_id": kernel_id})
        return AsyncRemoteKernel(self, kernel_id, info)

    async def get_kernel_ids(self) -> list[str]:
        return list(await self._request("get_kernel_ids", {}))

    async def list_kernels(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(await self._request("list_kernels", _given(namespace=namespace)))

    async def execute(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
                      silent: bool = False, store_history: bool = True,
                      user_expressions: dict[str, str] | None = None) -> p.ExecutionResult:
        args: dict[str, Any] = {"kernel_id": kernel_id, "code": code}
        if allow_stdin or silent or not store_history:
            args.update(allow_stdin=allow_stdin, silent=silent, store_history=store_history)
        if user_expressions:
            args["user_expressions"] = user_expressions
        value = await self._request("execute", args)
        return msgspec.convert(value, p.ExecutionResult)

    def execute_stream(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
                       silent: bool = False, store_history: bool = True,
                       user_expressions: dict[str, str] | None = None
                       ) -> RemoteExecutionStream:
        args: dict[str, Any] = {"kernel_id": kernel_id, "code": code,
                                "allow_stdin": allow_stdin, "silent": silent,
                                "store_history": store_history}
        if user_expressions:
            args["user_expressions"] = user_expressions
        return RemoteExecutionStream(self, args)

    def send_comm(self, kernel_id: str, msg_type: str, content: dict[str, Any],
                  metadata: dict[str, Any] | None = None,
                  buffers: list[bytes] | None = None) -> RemoteExecutionStream:
        """A front end's comm message to the kernel's CommManager, as the manager's
        `send_comm`: a stream of what its handler emitted, then the result. Buffers may be
        bytes, bytearrays or memoryviews (sent as bytes)."""
        args: dict[str, Any] = {"kernel_id": kernel_id, "msg_type": msg_type,
                                "content": content}
        if metadata is not None:
            args["metadata"] = metadata
        if buffers is not None:
            args["buffers"] = [bytes(b) if isinstance(b, bytearray | memoryview) else b
                               for b in buffers]
        return RemoteExecutionStream(self, args, op="send_comm")

    async def on_kernel_event(self, kernel_id: str, event_type: Any, callback: Listener) -> None:
        """Subscribe: `callback(event)` runs on this client's loop for each matching event
        (a coroutine function is scheduled as a task)."""
        await self._ready()
        event_type = str(getattr(event_type, "value", event_type))
        rid = f"{next(self._ids):x}"
        future: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        entry = _Pending(future, self._epoch, callback=callback)
        entry.kernel_id, entry.event_type = kernel_id, event_type
        self._pending[rid] = entry
        try:
            await self._send(rid, "subscribe", {"kernel_id": kernel_id, "event_type": event_type})
            reply = await future
        except BaseException:
            self._pending.pop(rid, None)
            raise
        if not reply.ok:
            self._pending.pop(rid, None)
            raise from_wire(reply.error)

    async def off_kernel_event(self, kernel_id: str, event_type: Any,
                               callback: Listener | None = None) -> None:
        event_type = str(getattr(event_type, "value", event_type))
        for rid, entry in list(self._pending.items()):
            if (entry.callback is not None and entry.kernel_id == kernel_id
                    and entry.event_type == event_type
                    and (callback is None or entry.callback == callback)):
                self._pending.pop(rid, None)
                await self._request("unsubscribe", {"subscription": rid})

    async def input_reply(self, kernel_id: str, value: str) -> bool:
        return bool(await self._request("input_reply", {"kernel_id": kernel_id, "value": value}))

    async def interrupt_kernel(self, kernel_id: str) -> bool:
        return bool(await self._request("interrupt_kernel", {"kernel_id": kernel_id}))

    async def restart_kernel(self, kernel_id: str) -> bool:
        return bool(await self._request("restart_kernel", {"kernel_id": kernel_id}))

    async def ping_kernel(self, kernel_id: str) -> bool:
        return bool(await self._request("ping_kernel", {"kernel_id": kernel_id}))

    async def set_inactivity_timeout(self, kernel_id: str, timeout: float | None) -> bool:
        return bool(await self._request("set_inactivity_timeout",
                                        {"kernel_id": kernel_id, "timeout": timeout}))

    async def get_inactivity_timeout(self, kernel_id: str) -> float | None:
        return await self._request("get_inactivity_timeout", {"kernel_id": kernel_id})  # type: ignore[no-any-return]

    async def get_time_until_shutdown(self, kernel_id: str) -> float | None:
        return await self._request("get_time_until_shutdown", {"kernel_id": kernel_id})  # type: ignore[no-any-return]

    async def get_execution_info(self, kernel_id: str) -> dict[str, Any]:
        return dict(await self._request("get_execution_info", {"kernel_id": kernel_id}))

    async def get_ongoing_execution_count(self, kernel_id: str) -> int:
        return int(await self._request("get_ongoing_execution_count", {"kernel_id": kernel_id}))

    async def get_stuck_executions(self, kernel_id: str) -> list[dict[str, Any]]:
        return list(await self._request("get_stuck_executions", {"kernel_id": kernel_id}))

    async def force_terminate_kernel(self, kernel_id: str, reason: str | None = None) -> bool:
        return bool(await self._request("force_terminate_kernel",
                                        _given(kernel_id=kernel_id, reason=reason)))

    async def complete(self, kernel_id: str, code: str,
                       cursor_pos: int | None = None) -> dict[str, Any]:
        return dict(await self._request("complete", _given(
            kernel_id=kernel_id, code=code, cursor_pos=cursor_pos)))

    async def inspect(self, kernel_id: str, code: str, cursor_pos: int | None = None,
                      detail_level: int = 0) -> dict[str, Any]:
        return dict(await self._request("inspect", _given(
            kernel_id=kernel_id, code=code, cursor_pos=cursor_pos, detail_level=detail_level)))

    async def is_complete(self, kernel_id: str, code: str) -> dict[str, Any]:
        return dict(await self._request("is_complete", {"kernel_id": kernel_id, "code": code}))

    async def history(self, kernel_id: str, hist_access_type: str = "tail",
                      output: bool = False, raw: bool = True, session: int = 0,
                      start: int = 0, stop: int | None = None, n: int | None = None,
                      pattern: str | None = None, unique: bool = False) -> dict[str, Any]:
        args = _given(kernel_id=kernel_id, hist_access_type=hist_access_type, stop=stop, n=n,
                      pattern=pattern)
        args.update(output=output, raw=raw, session=session, start=start, unique=unique)
        return dict(await self._request("history", args))

    async def comm_info(self, kernel_id: str, target_name: str | None = None
                        ) -> dict[str, Any]:
        return dict(await self._request("comm_info", _given(kernel_id=kernel_id,
                                                            target_name=target_name)))

    async def get_pool_stats(self) -> dict[str, Any]:
        return dict(await self._request("get_pool_stats", {}))

    async def check_profile(self, profile: str | None = None) -> dict[str, Any]:
        """What `kerneld profile check` prints, from the daemon: {profile, source, report}
        for the profile a new kernel would get (default: the daemon's default profile)."""
        return dict(await self._request("check_profile", _given(profile=_profile_arg(profile))))

    # ---------------------------------------------------------------- daemon-only

    async def status(self) -> dict[str, Any]:
        """Daemon health: version, uptime, kernel counts by status, pool, RSS (`kerneld
        status`)."""
        return dict(await self._request("status", {}))

    async def ping(self) -> dict[str, Any]:
        await self._ready()
        return dict(await self._request("ping", {}))

    # ---------------------------------------------------------------- closing

    async def close(self) -> None:
        """Close the connection (kernels stay in the daemon until destroyed or timed out)."""
        if self._closed:
            return
        self._closed = True
        for entry in list(self._pending.values()):
            self._fail(entry, DaemonUnavailable("the client was closed"))
        self._pending.clear()
        for drain in self._drains:
            drain.close()
        self._drains, self._reader = [], None
        for sock in (self._sock, self._monitor):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        self._sock = self._monitor = None
        current = asyncio.current_task()  # close() awaited by a listener: not itself
        listeners = [task for task in self._listeners if task is not current]
        for task in listeners:
            task.cancel()
        if listeners:
            await asyncio.gather(*listeners, return_exceptions=True)
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RemoteExecutionStream:
    """Async iterator over one execution's events; `result` is set once it ends (its
    `outputs` are the events received)."""

    def __init__(self, client: AsyncClient, args: dict[str, Any],
                 op: str = "execute_stream") -> None:
        self._client, self._args, self._op = client, args, op
        self.kernel_id: str = args["kernel_id"]
        self.execution_id: str | None = None
        self.result: p.ExecutionResult | None = None
        self._started = False

    def __aiter__(self) -> AsyncIterator[p.KernelEvent]:
        if self._started:
            raise RuntimeError("an execution stream can be iterated only once")
        self._started = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[p.KernelEvent]:
        rid, queue = await self._client._open_stream(self._op, self._args)
        outputs: list[p.KernelEvent] = []
        try:
            while True:
                item = await queue.get()
                if type(item) is p.KernelEvent:
                    outputs.append(item)
                    if self.execution_id is None:
                        self.execution_id = item.execution_id
                    yield item
                elif type(item) is p.Reply:
                    if not item.ok:
                        raise from_wire(item.error)
                    result = msgspec.convert(item.value, p.ExecutionResult)
                    self.result = msgspec.structs.replace(result, outputs=outputs)
                    self.execution_id = result.execution_id
                    return
                else:
                    raise item
        finally:
            self._client._pending.pop(rid, None)

    async def wait(self) -> p.ExecutionResult:
        """Run to the end (consuming the events) and return the result."""
        if not self._started:
            async for _ in self:
                pass
        assert self.result is not None, "the stream was abandoned before its end"
        return self.result


class AsyncRemoteKernel:
    """A handle on one kernel of the daemon (like the manager's `Kernel`)."""

    def __init__(self, client: AsyncClient, kernel_id: str, info: dict[str, Any]) -> None:
        self.client, self.id, self.info = client, kernel_id, info

    async def execute(self, code: str, **kw: Any) -> p.ExecutionResult:
        return await self.client.execute(self.id, code, **kw)

    def execute_stream(self, code: str, **kw: Any) -> RemoteExecutionStream:
        return self.client.execute_stream(self.id, code, **kw)

    async def interrupt(self) -> bool:
        return await self.client.interrupt_kernel(self.id)

    async def restart(self) -> bool:
        return await self.client.restart_kernel(self.id)

    async def input_reply(self, value: str) -> bool:
        return await self.client.input_reply(self.id, value)

    async def close(self) -> None:
        try:
            await self.client.destroy_kernel(self.id)
        except KernelError as exc:
            if type(exc).__name__ != "KernelNotFound":
                raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ====================================================================== the sync client

P = ParamSpec("P")
R = TypeVar("R")


def _sync(method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]
          ) -> Callable[Concatenate[Any, P], R]:
    """`Client.name(...)` = run `AsyncClient.name(...)` on the client's loop and wait."""
    name = method.__name__

    def call(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return cast(R, self._run(getattr(self._async, name)(*args, **kwargs)))
    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    call.__wrapped__ = method  # type: ignore[attr-defined]  # inspect.signature: its arguments
    return call


class Client:
    """Synchronous client: `AsyncClient` run on a private event loop in a background thread.
    Same methods (without `await`); usable from several threads at once. Connects (and pings)
    when created, so an absent daemon fails here with DaemonUnavailable."""

    def __init__(self, address: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="kerneld-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(address, **options)
        self.address = self._async.address
        try:
            self._run(self._async.connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, R]) -> R:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a Client method was called from its own event thread (an "
                               "event callback); hand the work to another thread")
        if self._loop.is_closed():
            coro.close()
            raise DaemonUnavailable(f"this client of {self.address} is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    create_kernel = _sync(AsyncClient.create_kernel)
    destroy_kernel = _sync(AsyncClient.destroy_kernel)
    destroy_all = _sync(AsyncClient.destroy_all)
    get_kernel_ids = _sync(AsyncClient.get_kernel_ids)
    list_kernels = _sync(AsyncClient.list_kernels)
    execute = _sync(AsyncClient.execute)
    on_kernel_event = _sync(AsyncClient.on_kernel_event)
    off_kernel_event = _sync(AsyncClient.off_kernel_event)
    input_reply = _sync(AsyncClient.input_reply)
    interrupt_kernel = _sync(AsyncClient.interrupt_kernel)
    restart_kernel = _sync(AsyncClient.restart_kernel)
    ping_kernel = _sync(AsyncClient.ping_kernel)
    set_inactivity_timeout = _sync(AsyncClient.set_inactivity_timeout)
    get_inactivity_timeout = _sync(AsyncClient.get_inactivity_timeout)
    get_time_until_shutdown = _sync(AsyncClient.get_time_until_shutdown)
    get_execution_info = _sync(AsyncClient.get_execution_info)
    get_ongoing_execution_count = _sync(AsyncClient.get_ongoing_execution_count)
    get_stuck_executions = _sync(AsyncClient.get_stuck_executions)
    force_terminate_kernel = _sync(AsyncClient.force_terminate_kernel)
    complete = _sync(AsyncClient.complete)
    inspect = _sync(AsyncClient.inspect)
    is_complete = _sync(AsyncClient.is_complete)
    history = _sync(AsyncClient.history)
    comm_info = _sync(AsyncClient.comm_info)
    get_pool_stats = _sync(AsyncClient.get_pool_stats)
    check_profile = _sync(AsyncClient.check_profile)
    status = _sync(AsyncClient.status)
    ping = _sync(AsyncClient.ping)

    def get_kernel(self, kernel_id: str) -> RemoteKernel:
        handle = self._run(self._async.get_kernel(kernel_id))
        return RemoteKernel(self, kernel_id, handle.info)

    def execute_stream(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
                       silent: bool = False, store_history: bool = True,
                       user_expressions: dict[str, str] | None = None) -> SyncExecutionStream:
        return SyncExecutionStream(self, self._async.execute_stream(
            kernel_id, code, allow_stdin=allow_stdin, silent=silent,
            store_history=store_history, user_expressions=user_expressions))

    def send_comm(self, kernel_id: str, msg_type: str, content: dict[str, Any],
                  metadata: dict[str, Any] | None = None,
                  buffers: list[bytes] | None = None) -> SyncExecutionStream:
        return SyncExecutionStream(self, self._async.send_comm(
            kernel_id, msg_type, content, metadata=metadata, buffers=buffers))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncExecutionStream:
    """Iterator over one execution's events (for `Client`); `result` once it ends."""

    def __init__(self, client: Client, stream: RemoteExecutionStream) -> None:
        self._client, self._stream = client, stream
        self.kernel_id = stream.kernel_id

    @property
    def execution_id(self) -> str | None:
        return self._stream.execution_id

    @property
    def result(self) -> p.ExecutionResult | None:
        return self._stream.result

    def __iter__(self) -> Iterator[p.KernelEvent]:
        events = self._stream.__aiter__()
        try:
            while True:
                try:
                    event = self._client._run(_next(events))
                except StopAsyncIteration:
                    return
                yield event
        finally:  # abandoned early: stop routing its events (never from the loop's thread)
            if (self._stream.result is None and not self._client._loop.is_closed()
                    and threading.current_thread() is not self._client._thread):
                self._client._run(_close(events))

    def wait(self) -> p.ExecutionResult:
        for _ in self:
            pass
        assert self._stream.result is not None
        return self._stream.result


class RemoteKernel:
    """A handle on one kernel of the daemon, for `Client` (like the manager's `Kernel`)."""

    def __init__(self, client: Client, kernel_id: str, info: dict[str, Any]) -> None:
        self.client, self.id, self.info = client, kernel_id, info

    def execute(self, code: str, **kw: Any) -> p.ExecutionResult:
        return self.client.execute(self.id, code, **kw)

    def execute_stream(self, code: str, **kw: Any) -> SyncExecutionStream:
        return self.client.execute_stream(self.id, code, **kw)

    def interrupt(self) -> bool:
        return self.client.interrupt_kernel(self.id)

    def restart(self) -> bool:
        return self.client.restart_kernel(self.id)

    def input_reply(self, value: str) -> bool:
        return self.client.input_reply(self.id, value)

    def close(self) -> None:
        try:
            self.client.destroy_kernel(self.id)
        except KernelError as exc:
            if type(exc).__name__ != "KernelNotFound":
                raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ====================================================================== helpers


async def _next(events: AsyncIterator[p.KernelEvent]) -> p.KernelEvent:
    return await events.__anext__()


async def _close(events: AsyncIterator[p.KernelEvent]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()


def _given(**args: Any) -> dict[str, Any]:
    """Only the arguments the caller set (the daemon applies the manager's defaults)."""
    return {k: v for k, v in args.items() if v is not None}


def _profile_arg(profile: str | os.PathLike[str] | None) -> str | None:
    """A profile path is the client's (made absolute here, as `filesystem.root` is); a name
    goes as it is."""
    if isinstance(profile, os.PathLike):
        profile = os.fspath(profile)
    if isinstance(profile, str) and ("/" in profile or profile.endswith(".toml")):
        return os.path.abspath(os.path.expanduser(profile))
    return profile


def _precheck(address: str) -> None:
    """Fail at once, with a useful message, when an ipc socket is missing or dead."""
    if not address.startswith("ipc://"):
        if not address.startswith("tcp://"):
            raise DaemonUnavailable(f"unsupported daemon address {address!r} "
                                    "(use ipc:///path or tcp://host:port)")
        return
    path = address[len("ipc://"):]
    if not os.path.exists(path):
        raise DaemonUnavailable(f"no kerneld daemon at {address}: {path} does not exist "
                                "(start one with `kerneld serve` or set $KERNELD_ADDRESS)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except PermissionError:
            raise DaemonUnavailable(f"permission denied on {path}: is this user in the "
                                    "daemon's socket group?") from None
        except OSError as exc:
            raise DaemonUnavailable(f"no kerneld daemon answers at {address} "
                                    f"({exc.strerror or exc})") from None


def _curve_keys(server: str | bytes | None, public: str | bytes | None,
                secret: str | bytes | None) -> tuple[bytes, bytes, bytes] | None:
    server = server or os.environ.get("KERNELD_SERVER_KEY")
    if not server:
        return None
    if not (public and secret):
        key_file = os.environ.get("KERNELD_CLIENT_KEY_FILE")
        if key_file:
            from kerneld.config import load_curve_keys
            public, secret = load_curve_keys(key_file, "KERNELD_CLIENT_KEY_FILE")
        else:  # an ephemeral identity: only a daemon allowing any key would accept it
            public, secret = zmq.curve_keypair()
    return tuple(k.encode() if isinstance(k, str) else k  # type: ignore[return-value]
                 for k in (server, public, secret))

