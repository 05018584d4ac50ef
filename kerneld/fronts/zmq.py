"""The daemon's ZeroMQ front: one ROUTER socket in front of the request service.

Wire: clients connect DEALER sockets to the ROUTER (`ipc://` with file permissions; `tcp://`
only with CURVE authentication, the allowed client keys checked by a ZAP handler). Each
request is one `protocol.Request{v, id, op, args}` frame; the answer is zero or more
`Event{v, id, event}` frames and exactly one terminal `Reply{v, id, ok, value | error}`
(docs/protocol.md). This front checks the framing (one frame, at most MAX_REQUEST_BYTES, a
decodable Request of this protocol version) and hands the rest to `Service.handle`.

I/O: the ROUTER is a plain (non-asyncio) ZeroMQ socket drained on the loop by
`kerneld.zmqio.Drain` (edge-triggered, NOBLOCK, at most 256 messages or READ_BATCH_BYTES per
wake-up, re-checked after each send). Every request is handled as it is read: the service
answers sync ops inline and `execute` from its future's done-callback, so a round trip costs
no task and no pyzmq future. Sends never block.

Replies: every request gets exactly one terminal reply. When a peer's ZeroMQ queue is full
(SNDHWM, a client not reading), replies wait in its backlog, in order, and a timer sends them as
the peer reads; while a peer has a backlog, its new requests are answered LimitExceeded instead
of being run. A backlog beyond MAX_BACKLOG_REPLIES / MAX_BACKLOG_BYTES (or all backlogs beyond
MAX_BACKLOG_BYTES_TOTAL), or one that has not moved for BACKLOG_TIMEOUT seconds, means the peer
is treated as gone (logged). Stream events wait for room instead (backpressure, same timeout);
subscription events are dropped when there is none (they may be).

Peers: a peer is a ROUTER identity (one client connection). Each request gets a `_Peer`
naming it, whose `caller` is read from the request's last frame: on ipc the connection's
SO_PEERCRED, which ZeroMQ reports as the `Peer-Address` property `…:uid:gid:pid`; on tcp the
CURVE key (the ZAP `User-Id`), a caller with no identity on this host. A vanished peer is
noticed when a send to it fails (ROUTER_MANDATORY → EHOSTUNREACH): its backlog is dropped and
the service told (`peer_gone`).

Failure modes: malformed, oversized, multi-frame or wrong-version requests get an error reply
when their id can be read (`protocol.request_id`, at any nesting depth), else they are
dropped; either way a DEBUG line each and a rate-limited WARNING summary (`Tally`). A reply
that cannot be encoded becomes InternalError.
"""

from __future__ import annotations

import asyncio
import collections
import grp
import logging
import os
import socket
import stat
import time
from typing import Any

import msgspec
import zmq

from kerneld import protocol as p
from kerneld.access import Caller
from kerneld.config import ConfigError, DaemonConfig, client_public_keys, load_curve_keys
from kerneld.errors import InternalError, InvalidArgument, KernelError, LimitExceeded
from kerneld.service import Service
from kerneld.systemd import Tally
from kerneld.zmqio import Drain

log = logging.getLogger(__name__)

SNDHWM = 10_000                  # messages ZeroMQ queues for one peer
# Replies queued beyond SNDHWM for a peer that does not read (see "Replies" above): ~200 bytes
# each for a refused request, so a peer's 100 000 take ~25 MiB.
MAX_BACKLOG_REPLIES = 100_000
MAX_BACKLOG_BYTES = 64 * 1024 * 1024
MAX_BACKLOG_BYTES_TOTAL = 256 * 1024 * 1024
BACKLOG_TIMEOUT = 60.0           # seconds a backlog may stand still before its peer is dropped
READ_BATCH_BYTES = 8 * 1024 * 1024  # read at most this much before other work gets a turn
_OK, _AGAIN, _GONE = 0, 1, 2
_encode = p.encode


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


class _Peer:
    """One request's `kerneld.service.Peer`: the ROUTER identity it came from, and (while
    it is handled) its last frame, whose properties say who sent it."""

    __slots__ = ("_caller", "_front", "closed", "frame", "key")

    def __init__(self, front: ZmqFront, ident: bytes, frame: zmq.Frame) -> None:
        self._front, self.key = front, ident
        self.frame: zmq.Frame | None = frame
        self._caller: Caller | None = None
        self.closed = False

    @property
    def caller(self) -> Caller:
        if self._caller is None:
            if self.frame is None:
                raise RuntimeError("a request's caller is known only while it is handled")
            self._caller = self._front.caller(self.frame)
        return self._caller

    def reply(self, rid: str, value: Any = None, error: KernelError | None = None) -> None:
        if error is None:
            payload = _ok_payload(rid, value)
        else:
            payload = _error_payload(rid, error)
        if self._front.reply(self.key, payload) == _GONE:
            self.closed = True

    def event_nowait(self, rid: str, event: p.KernelEvent) -> bool:
        status = self._front.send(self.key, _encode(p.Event(p.VERSION, rid, event)))
        if status == _GONE:
            self.closed = True
        return status == _OK

    async def event(self, rid: str, event: p.KernelEvent) -> None:
        if not await self._front.deliver(self.key, _encode(p.Event(p.VERSION, rid, event))):
            self.closed = True


class ZmqFront:
    """The ROUTER front (see the module docstring); a `kerneld.fronts.Front`."""

    def __init__(self, service: Service, config: DaemonConfig) -> None:
        self.service = service
        self.config = config
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._drain: Drain | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._auth: Any = None
        self._allowed: _AllowedKeys | None = None
        self._ipc_path: str | None = None
        self._unreadable = Tally(log, "unreadable message dropped")
        self._malformed = Tally(log, "bad request answered")
        self._backlog: dict[bytes, _Backlog] = {}
        self._backlog_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._flush_delay = 0.001

    # ================================================================== the daemon's calls

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._bind()
        except zmq.ZMQError as exc:
            raise OSError(str(exc)) from exc
        assert self._sock is not None
        # not copied: the last frame carries the peer's credentials (`caller`)
        self._drain = Drain(self._loop, self._sock, self._on_message, copy=False,
                            batch_bytes=READ_BATCH_BYTES,
                            on_error=lambda exc: log.error("recv failed error=%s", exc))

    def reconfigure(self, config: DaemonConfig) -> None:
        old, self.config = self.config, config
        if self._allowed is not None and old.allowed_client_keys != config.allowed_client_keys:
            self._allowed.keys = client_public_keys(config.allowed_client_keys)
            log.info("allowed CURVE client keys reloaded count=%d", len(self._allowed.keys))

    def tick(self) -> None:
        self._unreadable.flush()
        self._malformed.flush()

    def waiting(self) -> int:
        return sum(len(b.replies) for b in self._backlog.values())

    async def flush(self, deadline: float) -> None:
        while self._backlog and time.monotonic() < deadline:
            self._flush_backlogs()
            await asyncio.sleep(0.01)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._drain is not None:
            self._drain.close()
            self._drain = None
        if self._sock is not None:
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

    # ================================================================== requests

    def _on_message(self, msg: list[zmq.Frame]) -> None:
        try:
            self._on_frames([frame.bytes for frame in msg], msg[-1])
        except Exception:  # never let one request take the reader down
            log.exception("request handling failed")

    def _on_frames(self, frames: list[bytes], last: zmq.Frame) -> None:
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
        backlog = self._backlog.get(ident)
        if backlog is not None:
            self._error(ident, req.id, LimitExceeded(
                f"this client has not read {SNDHWM + len(backlog.replies)} or more replies; "
                "read them before sending more requests"))
            return
        peer = _Peer(self, ident, last)
        self.service.handle(peer, req.id, req.op, req.args)
        peer.frame = None  # the caller is read while the request is handled, not later

    def caller(self, frame: zmq.Frame) -> Caller:
        """Who sent the message whose last frame this is (see "Peers" in the module
        docstring); without supplementary groups."""
        key = _frame_property(frame, "User-Id") if self._auth is not None else None
        if key:  # only CURVE (tcp) connections carry one: skipped on an ipc-only daemon
            return Caller(None, key=key)
        fields = (_frame_property(frame, "Peer-Address") or "").rsplit(":", 3)
        if len(fields) == 4 and all(f.isdigit() for f in fields[1:]):
            uid, gid, pid = (int(f) for f in fields[1:])
            return Caller(uid, gid, pid)
        return Caller(None)

    def _error(self, ident: bytes, rid: str, exc: KernelError) -> None:
        self.reply(ident, _error_payload(rid, exc))

    def _bad(self, ident: bytes, payload: bytes, exc: KernelError) -> None:
        """A request that could not be parsed: answer if its id can be read, else drop it."""
        rid = p.request_id(payload)
        if rid is None:
            self._unreadable.note(f"size={len(payload)} error={str(exc)[:200]!r}")
            return
        self._malformed.note(f"id={rid[:64]!r} error={str(exc)[:200]!r}")
        self._error(ident, rid, exc)

    # ================================================================== sending

    def reply(self, ident: bytes, payload: bytes) -> int:
        """Send a request's terminal reply: now, or queued in the peer's backlog behind the
        replies it has not read yet (never dropped unless the peer is treated as gone)."""
        status = self.send(ident, payload)
        if status == _AGAIN:
            self._queue_reply(ident, payload)
        return status

    def send(self, ident: bytes, payload: bytes) -> int:
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
        if self._drain is not None:
            self._drain.after_send()
        return status

    async def deliver(self, ident: bytes, payload: bytes) -> bool:
        """Send, waiting (up to BACKLOG_TIMEOUT) while the peer's queue is full. False if it
        is gone."""
        delay = 0.001
        deadline = None
        while True:
            status = self.send(ident, payload)
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
        self.service.peer_gone(ident)


# ====================================================================== helpers


def _frame_property(frame: zmq.Frame, name: str) -> str | None:
    try:
        return str(frame.get(name))
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


def _unix_socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


__all__ = ["ZmqFront"]
