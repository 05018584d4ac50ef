"""The kerneld daemon: one ZeroMQ ROUTER in front of one KernelManager.

Process model: `kerneld serve` runs `Server.run()` on one asyncio event loop in one thread
(ZeroMQ adds its own I/O thread). The manager lives on the same loop and owns the zygote and the
workers; the daemon only translates requests into manager calls and results into replies.

Wire: clients connect DEALER sockets to the ROUTER (`ipc://` with file permissions; `tcp://`
only with CURVE authentication). Each request is one `protocol.Request{v, id, op, args}` frame;
the daemon answers with zero or more `Event{v, id, event}` frames and exactly one terminal
`Reply{v, id, ok, value | error}` (docs/protocol.md). Ops are a fixed whitelist (`kerneld.ops`):
manager methods with checked keyword arguments, plus subscribe/unsubscribe/status/ping.

I/O: the ROUTER is a plain (non-asyncio) ZeroMQ socket whose notification fd is registered
with `loop.add_reader`; the callback drains every waiting message and handles it at once
(sync manager methods answer inline, async ones become tasks; `execute` is answered from its
future's done-callback). Sends never block (NOBLOCK).
This saves pyzmq's per-message futures and a task switch per request (~50 µs a round trip,
measured). ZeroMQ's fd is edge-triggered, so after each send the socket is re-checked for
input that the send let through.

Replies: every request gets exactly one terminal reply. When a peer's ZeroMQ queue is full
(SNDHWM, a client not reading), replies wait in its backlog, in order, and a timer sends them as
the peer reads; while a peer has a backlog, its new requests are answered LimitExceeded instead
of being run. A backlog beyond MAX_BACKLOG_REPLIES / MAX_BACKLOG_BYTES (or all backlogs beyond
MAX_BACKLOG_BYTES_TOTAL), or one that has not moved for BACKLOG_TIMEOUT seconds, means the peer
is treated as gone (logged). Stream events wait for room instead (backpressure, same timeout);
subscription events are dropped when there is none (they may be).

State: in-flight request tasks; subscriptions (peer, request id) → manager listener; reply
backlogs per peer; executions queued or running per peer (the per-client limit; the manager
limits them per kernel and in all). Nothing else: kernels belong to the manager. A peer that
vanished is noticed when a send to it fails (ROUTER_MANDATORY → EHOSTUNREACH); its
subscriptions and backlog are then dropped. Its executions run on to their end; their replies
are discarded.

Liveness: a worker or zygote crash is the manager's business (a worker's: KernelDied events;
the zygote's: its kernels carry on, a new zygote starts on the next fork); nothing from a
client or a kernel can raise into the loop.
systemd is told READY=1 once the zygote is up, STATUS= every few seconds, WATCHDOG=1 every
half WATCHDOG_USEC (from the loop itself, so a wedged loop stops the pings).

Signals only enqueue commands (`handle_<name>` runs them): SIGTERM/SIGINT → shutdown,
SIGHUP → reload.

Shutdown ladder: stop accepting (new requests get DaemonUnavailable), wait up to
`shutdown_grace` seconds for running executions (a second SIGTERM/SIGINT skips the wait),
`manager.close()` (the rest end with execute_error DaemonShutdown, every kernel tree is killed),
flush the last replies, close the socket, remove the socket file, exit 0, all within
grace + 2 s. Had the daemon been SIGKILLed instead, the zygote (watching a pidfd of the
daemon) kills and reaps every worker and kernel init, and each init also exits on its own when
the daemon does: nothing outlives the daemon. `kerneld serve` is a child subreaper (cli), so a
zygote that dies leaves its kernels to the daemon, which keeps them (see `kerneld.manager`).

Failure modes: malformed, oversized, wrong-version or unknown requests get an error reply when
their id can be read (`protocol.request_id`, at any nesting depth), else they are dropped;
either way a DEBUG line each and a rate-limited WARNING summary (`Tally`). A reply that cannot
be encoded becomes InternalError; an unexpected exception is logged with its traceback and
answered with InternalError, whose message never carries host paths (`_internal`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import grp
import inspect
import logging
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import msgspec
import psutil
import zmq

from kerneld import protocol as p
from kerneld._service import Notifier, Tally, setup_logging
from kerneld.access import Caller, caller_groups
from kerneld.config import (
    ConfigError,
    DaemonConfig,
    ManagerConfig,
    client_public_keys,
    load_curve_keys,
)
from kerneld.errors import (
    DaemonUnavailable,
    InternalError,
    InvalidArgument,
    KernelError,
    KernelNotFound,
    LimitExceeded,
    PermissionDenied,
)
from kerneld.kernels import KernelEvents
from kerneld.manager import KernelManager
from kerneld.ops import OPS, check_args

log = logging.getLogger(__name__)

MAX_INFLIGHT = 10_000            # requests being worked on at once, all clients together
MAX_SUBSCRIPTIONS_PER_PEER = 1_000
SNDHWM = 10_000                  # messages ZeroMQ queues for one peer
# Replies queued beyond SNDHWM for a peer that does not read (see "Replies" above): ~200 bytes
# each for a refused request, so a peer's 100 000 take ~25 MiB.
MAX_BACKLOG_REPLIES = 100_000
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
MAX_BACKLOG_BYTES_TOTAL = 256 * 1024 * 1024
BACKLOG_TIMEOUT = 60.0           # seconds a backlog may stand still before its peer is dropped
STATUS_INTERVAL = 5.0
READ_BATCH_BYTES = 8 * 1024 * 1024  # read at most this much before other work gets a turn
_EVENT_TYPES = frozenset(e.value for e in KernelEvents)
_OK, _AGAIN, _GONE = 0, 1, 2
# Fields of ManagerConfig that only take effect when the daemon restarts.
_RESTART_ONLY = ("runtime_python", "preload", "runtime_dir")
_DAEMON_RESTART_ONLY = ("address", "tcp_address", "socket_group", "socket_mode",
                        "curve_secret_key_file")


class _Backlog:
    """Replies waiting for a peer whose ZeroMQ queue is full, oldest first."""

    def __init__(self, now: float) -> None:
        self.replies: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.moved = now  # when it last got smaller (or was created)


class _AllowedKeys:
    """CURVE credentials provider for zmq.auth: the configured client public keys."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            log.warning("curve client rejected key=%s", key.decode("ascii", "replace"))
        return allowed


class Server:
    """`kerneld serve`: see the module docstring."""

    def __init__(self, config: DaemonConfig,
                 reload: Callable[[], DaemonConfig] | None = None) -> None:
        self.config = config
        self._reload = reload
        self.manager = KernelManager(_with_runtime_dir(config))
        self.started = time.time()
        self.accepting = True
        self.exit_code: int | None = None
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_scheduled = False
        self._auth: Any = None
        self._allowed: _AllowedKeys | None = None
        self._ipc_path: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: dict[tuple[bytes, str], tuple[str, str, Callable[[p.KernelEvent], None]]] = {}
        self._subs_by_peer: dict[bytes, set[str]] = {}
        self._unreadable = Tally(log, "unreadable message dropped")
        self._malformed = Tally(log, "bad request answered")
        self._slow_subscribers = Tally(log, "subscriber too slow, event dropped")
        self._backlog: dict[bytes, _Backlog] = {}
        self._backlog_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_delay = 0.001
        self._executions_by_peer: dict[bytes, int] = {}
        self._stopping = False
        self._background: list[asyncio.Task[Any]] = []
        self._notify = Notifier.from_env()
        self._frame: zmq.Frame | None = None  # the last frame of the request being handled

    # ================================================================== main

    async def run(self) -> int:
        """Serve until a shutdown command; returns the exit status."""
        loop = self._loop = asyncio.get_running_loop()
        for sig, command in ((signal.SIGINT, "shutdown"), (signal.SIGTERM, "shutdown"),
                             (signal.SIGHUP, "reload")):
            loop.add_signal_handler(sig, self.commands.put_nowait, command)
        try:
            self._bind()
        except (ConfigError, OSError, zmq.ZMQError) as exc:
            log.error("cannot listen address=%s error=%s", self.config.address, exc)
            self._close_socket()
            return 1
        assert self._sock is not None
        loop.add_reader(self._sock.FD, self._on_readable)
        loop.call_soon(self._on_readable)  # anything that arrived before the registration
        self._spawn(self._startup(), "kerneld-startup")
        while self.exit_code is None:
            command = await self.commands.get()
            handler = getattr(self, f"handle_{command}", None)
            if handler is None:
                log.error("unknown command=%s", command)
                continue
            await handler()
        return self.exit_code

    def _spawn(self, coro: Any, name: str) -> None:
        self._background.append(asyncio.create_task(coro, name=name))

    async def _startup(self) -> None:
        try:
            _check_profiles(self.config.manager)
        except (KernelError, OSError) as exc:  # kernels using it will fail; say so now
            log.error("profile problem: %s", exc)
        try:
            await self.manager.start()
        except Exception as exc:  # noqa: BLE001  (any failure here means: exit 1, logged)
            log.error("the kernel manager could not start error=%s", exc)
            self.commands.put_nowait("startup_failed")
            return
        log.info("ready address=%s pid=%s confine=%s %r", self.config.address, os.getpid(),
                 self.config.manager.confine, self.manager.pool)
        self._notify.send(f"READY=1\nSTATUS={self.status_line()}\nMAINPID={os.getpid()}")
        self._spawn(self._status_loop(), "kerneld-status")
        if self._notify.watchdog_interval:
            self._spawn(self._watchdog(self._notify.watchdog_interval), "kerneld-watchdog")

    async def handle_startup_failed(self) -> None:
        await self._shutdown(exit_code=1, grace=0.0)

    async def handle_shutdown(self) -> None:
        await self._shutdown(exit_code=0, grace=self.config.shutdown_grace)

    # ================================================================== listening

    def _bind(self) -> None:
        cfg = self.config
        self._ctx = zmq.Context()
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # Twice the request limit: requests between the two get a LimitExceeded reply; ZeroMQ
        # itself cuts off peers that send more (connection reset, nothing buffered).
        sock.setsockopt(zmq.MAXMSGSIZE, 2 * p.MAX_REQUEST_BYTES)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.LINGER, 500)
        addresses = [cfg.address] + ([cfg.tcp_address] if cfg.tcp_address else [])
        for address in sorted(addresses, key=lambda a: a.startswith("tcp://")):
            if address.startswith("ipc://"):
                self._bind_ipc(sock, address[len("ipc://"):])
            else:
                self._bind_tcp(sock, address)
            log.info("listening address=%s", address)

    def _bind_ipc(self, sock: zmq.Socket[bytes], path: str) -> None:
        cfg = self.config
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o755, exist_ok=True)
            os.chmod(directory, 0o755)
        st = os.stat(directory)
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(f"daemon.address: {directory} belongs to uid {st.st_uid}; "
                              "the socket's directory must be the daemon's own")
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            raise ConfigError(f"daemon.address: {directory} is writable by others; "
                              "put the socket in a directory only the daemon can write")
        if st.st_mode & stat.S_IWOTH:
            log.warning("socket directory is world-writable (sticky) dir=%s: prefer a private "
                        "directory such as /run/kerneld", directory)
        if os.path.exists(path):
            if _unix_socket_answers(path):
                raise ConfigError(f"daemon.address: another process already listens on {path}")
            os.unlink(path)  # stale socket of a daemon that died
        old_umask = os.umask(0o177)
        try:
            sock.bind(f"ipc://{path}")
        finally:
            os.umask(old_umask)
        self._ipc_path = path
        if cfg.socket_group is not None:
            group = cfg.socket_group
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            os.chown(path, -1, gid)
        os.chmod(path, cfg.socket_mode)

    def _bind_tcp(self, sock: zmq.Socket[bytes], address: str) -> None:
        cfg = self.config
        if not cfg.curve_secret_key_file or not cfg.allowed_client_keys:
            raise ConfigError(f"refusing to listen on {address} without CURVE keys "
                              "(daemon.curve_secret_key_file, daemon.allowed_client_keys)")
        from zmq.auth.asyncio import AsyncioAuthenticator
        public, secret = load_curve_keys(cfg.curve_secret_key_file)
        allowed = client_public_keys(cfg.allowed_client_keys)
        assert self._ctx is not None
        if self._auth is None:
            self._auth = AsyncioAuthenticator(self._ctx, log=logging.getLogger("kerneld.auth"))
            self._auth.start()
        self._allowed = _AllowedKeys(allowed)
        self._auth.configure_curve_callback("*", credentials_provider=self._allowed)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 10_000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30_000)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        sock.bind(address)
        log.info("curve enabled address=%s server_key=%s allowed_clients=%d", address,
                 public.decode(), len(allowed))

    def _close_socket(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._sock is not None:
            if self._loop is not None and not self._sock.closed:
                self._loop.remove_reader(self._sock.FD)
            self._sock.close(linger=200)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._ipc_path is not None:
            try:
                if stat.S_ISSOCK(os.lstat(self._ipc_path).st_mode):
                    os.unlink(self._ipc_path)
            except FileNotFoundError:
                pass
            self._ipc_path = None

    # ================================================================== requests

    def _on_readable(self) -> None:
        """Handle every message waiting on the ROUTER (at most 256, or READ_BATCH_BYTES,
        before yielding to the loop, so one flooding client cannot starve the rest)."""
        self._read_scheduled = False
        sock = self._sock
        if sock is None:
            return
        budget = READ_BATCH_BYTES
        for _ in range(256):
            if budget <= 0:
                break
            try:
                # not copied: the last frame carries the peer's credentials (`_caller`)
                msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                    log.error("recv failed error=%s", exc)
                return
            self._frame = msg[-1]
            frames = [frame.bytes for frame in msg]
            budget -= len(frames[-1])
            try:
                self._on_frames(frames)
            except Exception:  # never let one request take the reader down
                log.exception("request handling failed")
        self._schedule_read()

    def _schedule_read(self) -> None:
        if not self._read_scheduled and self._loop is not None:
            self._read_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_frames(self, frames: list[bytes]) -> None:
        ident = frames[0]
        payload = frames[-1]
        if len(frames) != 2:
            size = sum(len(f) for f in frames[1:])
            # answered with the id of whichever frame holds a request ([request, extra] too;
            # an oversize one as well, as a single oversize frame is answered LimitExceeded)
            payload = next((f for f in frames[1:9] if p.request_id(f) is not None), payload)
            self._bad(ident, payload, InvalidArgument(
                f"a request is exactly one frame (got {len(frames) - 1}, {size} bytes)"))
            return
        if len(payload) > p.MAX_REQUEST_BYTES:
            self._bad(ident, payload, LimitExceeded(
                f"request of {len(payload)} bytes exceeds the limit of "
                f"{p.MAX_REQUEST_BYTES} bytes"))
            return
        try:
            req = p.request_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._bad(ident, payload, InvalidArgument(f"malformed request: {exc}"))
            return
        except RecursionError:  # msgspec recurses into nested arrays and maps
            self._bad(ident, payload, InvalidArgument(
                "malformed request: nested too deeply (the decoder takes values nested "
                "fewer than about 900 levels)"))
            return
        if req.v != p.VERSION:
            self._error(ident, req.id, InvalidArgument(
                f"protocol version {req.v} is not supported (this daemon speaks {p.VERSION})"))
            return
        op = OPS.get(req.op)
        if op is None:
            self._error(ident, req.id, InvalidArgument(f"unknown op {req.op[:64]!r}"))
            return
        backlog = self._backlog.get(ident)
        if backlog is not None:
            self._error(ident, req.id, LimitExceeded(
                f"this client has not read {SNDHWM + len(backlog.replies)} or more replies; "
                "read them before sending more requests"))
            return
        if not self.accepting:
            self._error(ident, req.id, DaemonUnavailable("the daemon is shutting down"))
            return
        if len(self._tasks) >= MAX_INFLIGHT:
            self._error(ident, req.id, LimitExceeded(
                f"the daemon is working on {MAX_INFLIGHT} requests already; retry later"))
            return
        try:
            check_args(op, req.args)
            if self._scoped(ident, req):
                return
            self._dispatch(ident, req, op.kind)
        except KernelError as exc:
            self._error(ident, req.id, exc)
        except Exception as exc:
            log.exception("request failed op=%s", req.op)
            self._error(ident, req.id, _internal(req.op, exc))

    def _dispatch(self, ident: bytes, req: p.Request, kind: str) -> None:
        mgr = self.manager
        if req.op == "execute":
            # Submitted here, synchronously, and answered from the future's done-callback: no
            # task per execution. The manager refuses what exceeds its queue limits.
            self._admit_execution(ident)
            future = mgr.submit(**req.args)
            self._count_execution(ident, 1)
            future.add_done_callback(functools.partial(self._answer_done, ident, req.id))
        elif req.op == "create_kernel":
            # supplementary groups (a /proc read) only where something can use them
            caller = self._caller(groups=bool(req.args.get("filesystem")
                                              or self.config.access.rules))
            self._check_profile_access(caller, req.args.get("profile"))
            log.info("create requested caller=%s profile=%s id=%.64s", caller,
                     req.args.get("profile") or self.config.manager.default_profile,
                     req.args.get("id") or "")
            self._task(self._answer(ident, req.id, req.op,
                                    mgr.create_kernel(**req.args, caller=caller)))
        elif kind == "call":
            value = getattr(mgr, req.op)(**req.args)
            if inspect.isawaitable(value):
                self._task(self._answer(ident, req.id, req.op, value))
            else:
                self._ok(ident, req.id, value)
        elif kind == "stream":
            self._admit_execution(ident)
            stream = mgr.execute_stream(**req.args)
            self._count_execution(ident, 1)
            self._task(self._stream(ident, req.id, stream))
        else:
            getattr(self, f"_op_{req.op}")(ident, req.id, **req.args)

    def _caller(self, groups: bool = False) -> Caller:
        """Who sent the request being handled: on ipc, the peer's SO_PEERCRED, which ZeroMQ
        reports as the `Peer-Address` property `…:uid:gid:pid`; on tcp, the CURVE key (the
        ZAP `User-Id`), a caller with no identity on this host. `groups`: also read the
        caller's supplementary groups (a /proc read: only for what needs them)."""
        frame = self._frame
        key = _frame_property(frame, "User-Id") if self._auth is not None else None
        if key:  # only CURVE (tcp) connections carry one: skipped on an ipc-only daemon
            return Caller(None, key=key)
        fields = (_frame_property(frame, "Peer-Address") or "").rsplit(":", 3)
        if len(fields) == 4 and all(f.isdigit() for f in fields[1:]):
            uid, gid, pid = (int(f) for f in fields[1:])
            return Caller(uid, gid, pid, caller_groups(pid, uid, gid) if groups else ())
        return Caller(None)

    def _scoped(self, ident: bytes, req: p.Request) -> bool:
        """A caller other than root sees and acts on the kernels it created only: another's
        kernel is "not found" (never "access denied", which would tell that it exists), and
        listing or destroying everything covers its own. True if answered here."""
        if self._frame is None:
            return False
        principal = self._caller().principal
        if principal is None:
            return False
        mgr, args = self.manager, req.args
        kernel_id = args.get("kernel_id")
        if kernel_id is not None and mgr.owner_of(kernel_id) != principal:
            raise KernelNotFound(f"kernel {str(kernel_id)[:64]!r} not found")
        if req.op not in ("list_kernels", "get_kernel_ids", "destroy_all"):
            return False
        mine = {k for k in mgr.get_kernel_ids() if mgr.owner_of(k) == principal}
        if req.op == "get_kernel_ids":
            self._ok(ident, req.id, [k for k in mgr.get_kernel_ids() if k in mine])
            return True
        listed = [d for d in mgr.list_kernels(args.get("namespace")) if d["id"] in mine]
        if req.op == "list_kernels":
            self._ok(ident, req.id, listed)
        else:
            self._task(self._answer(ident, req.id, req.op,
                                    self._destroy([d["id"] for d in listed])))
        return True

    async def _destroy(self, kernel_ids: list[str]) -> int:
        await asyncio.gather(*(self.manager.destroy_kernel(k) for k in kernel_ids),
                             return_exceptions=True)
        return len(kernel_ids)

    def _check_profile_access(self, caller: Caller, profile: str | None) -> None:
        """`[access] profiles`: which callers may create kernels with which profile."""
        name = profile or self.config.manager.default_profile
        if not self.config.access.allows(caller, name):
            raise PermissionDenied(f"profile {name!r} is not granted to this caller ({caller}); "
                                   "see [access] profiles in the daemon's config")

    def _admit_execution(self, ident: bytes) -> None:
        limit = self.config.max_queued_executions_per_client
        mine = self._executions_by_peer.get(ident, 0)
        if mine >= limit:
            raise LimitExceeded(
                f"this client has {mine} executions queued or running, the limit "
                f"(max_queued_executions_per_client = {limit}); retry when some end")

    def _count_execution(self, ident: bytes, delta: int) -> None:
        mine = self._executions_by_peer.get(ident, 0) + delta
        if mine > 0:
            self._executions_by_peer[ident] = mine
        else:
            self._executions_by_peer.pop(ident, None)

    def _task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, ident: bytes, rid: str, op: str, call: Any) -> None:
        try:
            value = await call
        except KernelError as exc:
            payload = _error_payload(rid, exc)
        except asyncio.CancelledError:
            self._reply(ident, _error_payload(rid, DaemonUnavailable(
                "the daemon shut down before this request finished")))
            raise
        except Exception as exc:
            log.exception("request failed op=%s", op)
            payload = _error_payload(rid, _internal(op, exc))
        else:
            payload = _ok_payload(rid, value)
        self._reply(ident, payload)

    def _answer_done(self, ident: bytes, rid: str, future: asyncio.Future[Any]) -> None:
        self._count_execution(ident, -1)
        exc = None if future.cancelled() else future.exception()
        if future.cancelled():
            payload = _error_payload(rid, DaemonUnavailable(
                "the daemon shut down before this request finished"))
        elif exc is None:
            payload = _ok_payload(rid, future.result())
        elif isinstance(exc, KernelError):
            payload = _error_payload(rid, exc)
        else:
            log.error("execute failed error=%r", exc)
            payload = _error_payload(rid, _internal("execute", exc))
        self._reply(ident, payload)

    async def _stream(self, ident: bytes, rid: str, stream: Any) -> None:
        gone = False
        try:
            async for event in stream:
                if not gone:
                    gone = not await self._deliver(ident, _encode(p.Event(p.VERSION, rid, event)))
            result = stream.result
        except asyncio.CancelledError:
            self._reply(ident, _error_payload(rid, DaemonUnavailable(
                "the daemon shut down before this execution finished")))
            raise
        except Exception as exc:
            log.exception("execute_stream failed")
            payload = _error_payload(rid, _internal("execute_stream", exc))
        else:
            # The client rebuilds `outputs` from the events it received: no second copy.
            payload = _ok_payload(rid, msgspec.structs.replace(result, outputs=[]))
        finally:
            self._count_execution(ident, -1)
        if not gone:
            self._reply(ident, payload)

    # ------------------------------------------------------------------ sending

    def _ok(self, ident: bytes, rid: str, value: Any) -> None:
        self._reply(ident, _ok_payload(rid, value))

    def _error(self, ident: bytes, rid: str, exc: KernelError) -> None:
        self._reply(ident, _error_payload(rid, exc))

    def _bad(self, ident: bytes, payload: bytes, exc: KernelError) -> None:
        """A request that could not be parsed: answer if its id can be read, else drop it."""
        rid = p.request_id(payload)
        if rid is None:
            self._unreadable.note(f"size={len(payload)} error={str(exc)[:200]!r}")
            return
        self._malformed.note(f"id={rid[:64]!r} error={str(exc)[:200]!r}")
        self._error(ident, rid, exc)

    def _reply(self, ident: bytes, payload: bytes) -> None:
        """Send a request's terminal reply: now, or queued in the peer's backlog behind the
        replies it has not read yet (never dropped unless the peer is treated as gone)."""
        if self._send(ident, payload) == _AGAIN:
            self._queue_reply(ident, payload)

    def _send(self, ident: bytes, payload: bytes) -> int:
        """Send now without blocking: _OK, _AGAIN (the peer's queue is full, or replies wait in
        its backlog: nothing may overtake them) or _GONE."""
        if ident in self._backlog:
            return _AGAIN
        return self._send_now(ident, payload)

    def _send_now(self, ident: bytes, payload: bytes) -> int:
        sock = self._sock
        if sock is None:
            return _GONE
        try:
            sock.send_multipart([ident, payload], flags=zmq.NOBLOCK, copy=len(payload) < 65536)
            status = _OK
        except zmq.Again:
            status = _AGAIN
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._peer_gone(ident)
            else:
                log.warning("send failed error=%s", exc)
            status = _GONE
        if not self._read_scheduled and int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._schedule_read()  # the send may have consumed the fd's edge
        return status

    async def _deliver(self, ident: bytes, payload: bytes) -> bool:
        """Send, waiting (up to BACKLOG_TIMEOUT) while the peer's queue is full. False if it
        is gone."""
        delay = 0.001
        deadline = None
        while True:
            status = self._send(ident, payload)
            if status != _AGAIN:
                return status == _OK
            now = time.monotonic()
            deadline = deadline or now + BACKLOG_TIMEOUT
            if now > deadline:
                log.warning("client not reading for %.0f s; dropping its replies",
                            BACKLOG_TIMEOUT)
                self._peer_gone(ident)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _queue_reply(self, ident: bytes, payload: bytes) -> None:
        backlog = self._backlog.get(ident)
        if backlog is None:
            backlog = self._backlog[ident] = _Backlog(time.monotonic())
            self._flush_delay = 0.001
        backlog.replies.append(payload)
        backlog.size += len(payload)
        self._backlog_bytes += len(payload)
        if (len(backlog.replies) > MAX_BACKLOG_REPLIES or backlog.size > MAX_BACKLOG_BYTES
                or self._backlog_bytes > MAX_BACKLOG_BYTES_TOTAL):
            log.warning("client not reading: %d replies (%d bytes) wait for it, more than the "
                        "daemon keeps; dropping them", len(backlog.replies), backlog.size)
            self._peer_gone(ident)
        elif self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(self._flush_delay, self._flush_backlogs)

    def _flush_backlogs(self) -> None:
        """Send what the backlogs hold while their peers have room; again later if any is
        left (1 ms, doubling up to 100 ms while nothing moves)."""
        self._flush_handle = None
        now = time.monotonic()
        moved = False
        for ident, backlog in list(self._backlog.items()):
            replies = backlog.replies
            status = _OK
            while replies:
                status = self._send_now(ident, replies[0])
                if status != _OK:
                    break
                sent = replies.popleft()
                backlog.size -= len(sent)
                self._backlog_bytes -= len(sent)
                backlog.moved = now
                moved = True
            if status == _GONE:
                self._drop_backlog(ident)
            elif not replies:
                del self._backlog[ident]
            elif now - backlog.moved > BACKLOG_TIMEOUT:
                log.warning("client not reading for %.0f s; dropping its %d queued replies",
                            BACKLOG_TIMEOUT, len(replies))
                self._peer_gone(ident)
        self._flush_delay = 0.001 if moved else min(self._flush_delay * 2, 0.1)
        if self._backlog and self._loop is not None and self._sock is not None:
            self._flush_handle = self._loop.call_later(self._flush_delay, self._flush_backlogs)

    def _drop_backlog(self, ident: bytes) -> None:
        backlog = self._backlog.pop(ident, None)
        if backlog is not None:
            self._backlog_bytes -= backlog.size

    def _peer_gone(self, ident: bytes) -> None:
        self._drop_backlog(ident)
        for rid in list(self._subs_by_peer.get(ident, ())):
            self._unsubscribe(ident, rid)

    # ================================================================== local ops

    def _op_get_kernel(self, ident: bytes, rid: str, kernel_id: str) -> None:
        self._ok(ident, rid, self.manager.get_kernel(kernel_id).info)

    def _op_ping(self, ident: bytes, rid: str) -> None:
        self._ok(ident, rid, {"pong": True, "version": _version(), "protocol": p.VERSION})

    def _op_status(self, ident: bytes, rid: str) -> None:
        self._ok(ident, rid, self.status())

    def _op_subscribe(self, ident: bytes, rid: str, kernel_id: str, event_type: str) -> None:
        if event_type not in _EVENT_TYPES:
            raise InvalidArgument(f"unknown event type {event_type!r} (one of "
                                  f"{', '.join(sorted(_EVENT_TYPES))})")
        if len(self._subs_by_peer.get(ident, ())) >= MAX_SUBSCRIPTIONS_PER_PEER:
            raise LimitExceeded(f"at most {MAX_SUBSCRIPTIONS_PER_PEER} subscriptions per client")

        def listener(event: p.KernelEvent) -> None:
            if self._send(ident, _encode(p.Event(p.VERSION, rid, event))) == _AGAIN:
                self._slow_subscribers.note(f"kernel={event.kernel_id} event={event.type}")

        self.manager.on_kernel_event(kernel_id, event_type, listener)  # KernelNotFound
        self._subs_by_peer.setdefault(ident, set()).add(rid)
        self._subs[(ident, rid)] = (kernel_id, event_type, listener)
        self._ok(ident, rid, {"subscription": rid})

    def _op_unsubscribe(self, ident: bytes, rid: str, subscription: str) -> None:
        self._ok(ident, rid, self._unsubscribe(ident, subscription))

    def _unsubscribe(self, ident: bytes, sub: str) -> bool:
        entry = self._subs.pop((ident, sub), None)
        mine = self._subs_by_peer.get(ident)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._subs_by_peer[ident]
        if entry is None:
            return False
        kernel_id, event_type, listener = entry
        self.manager.off_kernel_event(kernel_id, event_type, listener)
        return True

    def _sweep_subscriptions(self) -> None:
        """Forget subscriptions whose kernel is gone (the manager dropped its listeners)."""
        alive = set(self.manager.get_kernel_ids())
        for (ident, sub), (kernel_id, _, _) in list(self._subs.items()):
            if kernel_id not in alive:
                self._unsubscribe(ident, sub)

    # ================================================================== status

    def _kernel_counts(self) -> dict[str, int]:
        counts = {"total": 0, "starting": 0, "idle": 0, "busy": 0, "dead": 0}
        for status, n in self.manager.counts().items():
            counts["total"] += n
            counts[status] = counts.get(status, 0) + n
        return counts

    def status_line(self) -> str:
        c = self._kernel_counts()
        return (f"kernels={c['total']} idle={c['idle']} busy={c['busy']} "
                f"starting={c['starting']} dead={c['dead']}; {self.manager.pool!r}")

    def status(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "status": "stopping" if self._stopping else "running",
            "version": _version(), "protocol": p.VERSION, "pid": os.getpid(),
            "address": cfg.address, "tcp_address": cfg.tcp_address,
            "started": self.started, "uptime": time.time() - self.started,
            "kernels": self._kernel_counts(),
            "pool": repr(self.manager.pool), "pool_stats": self.manager.get_pool_stats(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "requests_in_flight": len(self._tasks), "subscriptions": len(self._subs),
            "executions_queued": self.manager.queued_executions()[0],
            "replies_waiting": sum(len(b.replies) for b in self._backlog.values()),
            "confine": cfg.manager.confine, "allow_in_process": cfg.manager.allow_in_process,
            "default_profile": cfg.manager.default_profile, "config_file": cfg.source,
        }

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            try:
                self._sweep_subscriptions()
                for tally in (self._unreadable, self._malformed, self._slow_subscribers):
                    tally.flush()
                self._notify.send(f"STATUS={self.status_line()}")
            except Exception:
                log.exception("status update failed")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self._notify.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    # ================================================================== commands

    async def handle_reload(self) -> None:
        """SIGHUP: re-read the config file and check every profile. A failed reload keeps the
        old config; running kernels keep their policy either way."""
        if self._reload is None or self._stopping:
            return
        self._notify.send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self._reload()
            _check_profiles(new.manager)
        except (KernelError, OSError) as exc:
            log.error("reload failed, keeping the old config error=%s", exc)
        else:
            self._apply(new)
        self._notify.send(f"READY=1\nSTATUS={self.status_line()}")

    def _apply(self, new: DaemonConfig) -> None:
        old = self.config
        kept = {f: getattr(old.manager, f) for f in _RESTART_ONLY
                if getattr(old.manager, f) != getattr(new.manager, f)}
        kept_daemon = {f: getattr(old, f) for f in _DAEMON_RESTART_ONLY
                       if getattr(old, f) != getattr(new, f)}
        if kept or kept_daemon:
            log.warning("reload: these settings take effect at the next restart keys=%s",
                        ",".join([*kept_daemon, *kept]))
        self.config = replace(new, manager=replace(new.manager, **kept), **kept_daemon)
        if self._allowed is not None and old.allowed_client_keys != new.allowed_client_keys:
            self._allowed.keys = client_public_keys(new.allowed_client_keys)
            log.info("allowed CURVE client keys reloaded count=%d", len(self._allowed.keys))
        # New kernels get the new settings and re-read their profiles; running ones keep theirs.
        self.manager.reconfigure(replace(self.config.manager,
                                         runtime_dir=self.manager.config.runtime_dir))
        logging.getLogger().setLevel(self.config.log_level.upper())
        log.info("reloaded config=%s", new.source or "(defaults)")

    async def _shutdown(self, exit_code: int, grace: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.accepting = False
        start = time.monotonic()
        self._notify.send("STOPPING=1")
        running = self._running_executions()
        log.info("shutting down grace=%s running_executions=%d", grace, running)
        deadline = start + grace
        while running and time.monotonic() < deadline:
            try:
                command = await asyncio.wait_for(self.commands.get(), timeout=0.05)
            except TimeoutError:
                running = self._running_executions()
                continue
            if command == "shutdown":
                log.info("second shutdown signal: not waiting any longer")
                break
        for task in self._background:
            task.cancel()
        try:
            await asyncio.wait_for(self.manager.close("the daemon is shutting down"), timeout=1.2)
        except TimeoutError:
            log.error("the kernel manager did not close within 1.2 s; exiting anyway "
                      "(the zygote and workers die with the daemon)")
        except Exception:
            log.exception("closing the kernel manager failed")
        await self._finish_requests(0.3)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._close_socket()
        log.info("stopped exit_code=%d after=%.2fs", exit_code, time.monotonic() - start)
        self.exit_code = exit_code

    def _running_executions(self) -> int:
        total = 0
        for kernel_id in self.manager.get_kernel_ids():
            try:
                total += self.manager.get_ongoing_execution_count(kernel_id)
            except KernelError:
                pass
        return total

    async def _finish_requests(self, timeout: float) -> None:
        """Let in-flight requests send their replies; cancel what is still waiting (those
        answer DaemonUnavailable); give backlogged replies what time is left."""
        deadline = time.monotonic() + timeout
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=0.2)
        while self._backlog and time.monotonic() < deadline:
            self._flush_backlogs()
            await asyncio.sleep(0.01)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None


# ====================================================================== helpers

_encode = p.encode


def _frame_property(frame: zmq.Frame | None, name: str) -> str | None:
    if frame is None:
        return None
    try:
        return frame.get(name)  # type: ignore[no-any-return]
    except zmq.ZMQError:  # not set for this connection (e.g. User-Id without ZAP)
        return None


def _ok_payload(rid: str, value: Any) -> bytes:
    try:
        return _encode(p.Reply(p.VERSION, rid, True, value))
    except (TypeError, ValueError, OverflowError) as exc:
        log.error("reply could not be encoded id=%.64s error=%s", rid, exc)
        return _error_payload(rid, InternalError(f"the reply could not be encoded: {exc}"))


def _error_payload(rid: str, exc: KernelError) -> bytes:
    return _encode(p.Reply(p.VERSION, rid, False, None, exc.to_wire()))


_CGROUP_PATH = re.compile(r"/sys/fs/cgroup[^\s'\"]*")


def _internal(op: str, exc: BaseException) -> InternalError:
    """An unexpected exception as a client sees it: the op, the type and what went wrong, but
    no host paths (an OSError's file names, a cgroup path); the daemon's log has the rest."""
    if isinstance(exc, OSError):
        text = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else "OS error"
    else:
        text = _CGROUP_PATH.sub("<cgroup>", str(exc))
    return InternalError(f"{op}: {type(exc).__name__}: {text[:500]}")


def _with_runtime_dir(config: DaemonConfig) -> ManagerConfig:
    """The manager keeps its private worker socket next to the daemon's ipc socket (under
    systemd: /run/kerneld, which systemd removes when the service stops, even after a crash)."""
    manager = config.manager
    if manager.runtime_dir is None and config.address.startswith("ipc://"):
        manager = replace(manager, runtime_dir=os.path.dirname(config.address[len("ipc://"):]))
    return manager


def _version() -> str:
    from kerneld import __version__
    return __version__


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def _check_profiles(config: ManagerConfig) -> None:
    """Load every profile the config can reach, and the default one: a broken profile fails
    a reload (the error cites file:table.key) instead of failing kernels later."""
    from kerneld.profiles import available_profiles, load_profile
    for name, path in available_profiles(config.profile_dirs).items():
        load_profile(path)
    load_profile(config.default_profile, config.profile_dirs)
    for name in config.pool_profiles:
        load_profile(name, config.profile_dirs)


async def serve(config: DaemonConfig,
                reload: Callable[[], DaemonConfig] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status."""
    return await Server(config, reload).run()


__all__ = ["Server", "serve", "setup_logging"]
