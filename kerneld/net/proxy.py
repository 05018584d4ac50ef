"""Per-kernel network proxy: the only way out of a networked kernel's network namespace.

Process model
    Runs inside the supervisor's asyncio loop, one `KernelProxy` per kernel whose policy has
    `net.mode == "proxy"`. Its listening socket lives *inside the kernel's netns* at
    127.0.0.1:<proxy_port> (made by a short-lived thread that `setns`es into
    `/proc/<pid>/ns/net`, binds, listens and ends; a socket stays in the netns it was created
    in). Outbound connections are made from the supervisor's own netns, so the kernel reaches
    exactly the destinations this proxy agrees to and nothing else.

Protocols (told apart by the first byte; 0x05 = SOCKS5, anything else = HTTP/1.x)
    HTTP CONNECT host:port          tunnels anything (HTTPS, git, ...): 200, then raw bytes
    GET http://host[:port]/path ... plain HTTP through the proxy: forwarded in origin-form
                                    with `Connection: close` (one request per connection)
    SOCKS5                          no-auth, CONNECT only; ATYP IPv4, domain, IPv6. Replies:
                                    0x02 not allowed by ruleset, 0x04 host unreachable,
                                    0x05 connection refused, 0x07 command not supported,
                                    0x08 address type not supported

Decisions (kerneld.net.match, pure and unit-tested)
    The destination as named is checked first (`allowed`); a name is then resolved once, every
    address is checked (`check_address`: deny IP rules; loopback/private/link-local/metadata
    refused unless an IP/CIDR rule names them), and the proxy connects to an address it
    checked: no second resolution, so DNS rebinding cannot swap the target after the check.
    Every decision is logged: `netproxy kernel=.. proto=.. host=.. port=.. decision=.. reason=..`.

Bounds
    header/handshake size (`max_header_bytes`), handshake, DNS and connect timeouts,
    `max_connections` concurrent connections per kernel, byte counters in `stats`.

Failure modes
    A client that misbehaves only loses its own connection. `close()` stops listening and
    cancels every relay; it is idempotent.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import ipaddress
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from kerneld.net.match import (
    ALL,
    Decision,
    IPAddress,
    NetRule,
    RuleError,
    Rules,
    allowed,
    check_address,
    parse_ip,
    parse_port,
    parse_rules,
)

__all__ = ["KernelProxy", "ProxyStats", "Resolver"]

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
Failure = Literal["denied", "resolve", "refused", "unreachable"]
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization",
               "proxy-authenticate", "te", "trailer", "upgrade", "host"}
_SOCKS_REPLY = {"denied": 0x02, "resolve": 0x04, "unreachable": 0x04, "refused": 0x05}
_HTTP_STATUS = {"denied": (403, "Forbidden"), "resolve": (502, "Bad Gateway"),
                "unreachable": (502, "Bad Gateway"), "refused": (502, "Bad Gateway")}


@dataclass
class ProxyStats:
    """Counters of one proxy (mutable; read them, do not write them)."""

    connections: int = 0   # accepted client connections
    refused: int = 0       # destinations refused by the rules (or over the connection cap)
    active: int = 0        # connections open now
    bytes_up: int = 0      # kernel → destination
    bytes_down: int = 0    # destination → kernel


@dataclass
class _Outcome:
    decision: Decision
    failure: Failure | None = None
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None


class _BadRequest(Exception):
    """A malformed handshake; the message is shown to the client."""


def _q(text: object) -> str:
    """Quote a value for a key=value log line (no newlines or spaces can break the line)."""
    return json.dumps(str(text)[:256])


class KernelProxy:
    """The proxy of one kernel. `rules` (allow) and `deny_rules` are rule strings or parsed
    `NetRule`s (a kernel's come parsed: `Lowered.net_allow`/`net_deny` of
    `kerneld.permissions.lower`); `rules` may be `"*"` (every public
    destination, still minus loopback/private/metadata addresses and `deny_rules`)."""

    def __init__(self, kernel_id: str, rules: Rules | Sequence[str],
                 deny_rules: Sequence[NetRule | str] = (), *, max_connections: int = 64,
                 handshake_timeout: float = 10.0, resolve_timeout: float = 5.0,
                 connect_timeout: float = 10.0, max_header_bytes: int = 16 * 1024,
                 resolver: Resolver | None = None) -> None:
        self.kernel_id = kernel_id
        self.allow: Rules = ALL if rules == ALL else _rules(rules)
        self.deny: tuple[NetRule, ...] = _rules(deny_rules)
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.resolve_timeout = resolve_timeout
        self.connect_timeout = connect_timeout
        self.max_header_bytes = max_header_bytes
        self.stats = ProxyStats()
        self._resolve = resolver or self._getaddrinfo
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ------------------------------------------------------------------------

    async def start_in_netns(self, pid: int, port: int) -> None:
        """Listen on 127.0.0.1:`port` inside the network namespace of process `pid`."""
        sock = await _listen_in_netns(f"/proc/{pid}/ns/net", port)
        await self.start_on(sock)

    async def start_on(self, sock: socket.socket) -> None:
        """Serve an already bound (and preferably listening) TCP socket."""
        if self._server is not None:
            raise RuntimeError("proxy already started")
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._accept, sock=sock,
                                                  limit=self.max_header_bytes)
        log.info("netproxy kernel=%s listening=%s", self.kernel_id, _q(sock.getsockname()))

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) of the listening socket, or None before start / after close."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        """Stop listening and cancel every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
            log.info("netproxy kernel=%s closed connections=%d refused=%d bytes_up=%d "
                     "bytes_down=%d", self.kernel_id, self.stats.connections,
                     self.stats.refused, self.stats.bytes_up, self.stats.bytes_down)

    # --- per connection -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.stats.active >= self.max_connections:
            self.stats.refused += 1
            log.warning("netproxy kernel=%s decision=deny reason=%s", self.kernel_id,
                        _q(f"more than {self.max_connections} concurrent connections"))
            writer.close()
            return
        self._tasks.add(task)
        self.stats.connections += 1
        self.stats.active += 1
        try:
            first = await asyncio.wait_for(reader.readexactly(1), self.handshake_timeout)
            if first == b"\x05":
                await self._socks5(reader, writer)
            else:
                await self._http(first, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away or stalled: its connection only
        except Exception:  # a bug must not kill the proxy, only this connection
            log.exception("netproxy kernel=%s unexpected error", self.kernel_id)
        finally:
            self.stats.active -= 1
            self._tasks.discard(task)
            await _close(writer)

    async def _open(self, proto: str, host: str, port: int) -> _Outcome:
        """Check, resolve, re-check and connect; every outcome is logged."""
        out = await self._decide_and_connect(host, port)
        self.stats.refused += int(out.failure == "denied")
        verdict = "allow" if out.streams else ("deny" if out.failure == "denied" else "error")
        log.info("netproxy kernel=%s proto=%s host=%s port=%d decision=%s reason=%s",
                 self.kernel_id, proto, _q(host), port, verdict, _q(out.decision.reason))
        return out

    async def _decide_and_connect(self, host: str, port: int) -> _Outcome:
        first = allowed(self.allow, self.deny, host, port)
        if not first.allowed:
            return _Outcome(first, "denied")
        literal = parse_ip(host.strip("[]"))
        if literal is not None:
            candidates = [(literal, first)]
        else:
            try:
                addrs = await asyncio.wait_for(self._resolve(host, port), self.resolve_timeout)
            except (OSError, TimeoutError) as e:
                return _Outcome(Decision(False, f"cannot resolve {host}: {e or 'timeout'}"),
                                "resolve")
            checked = [(a, check_address(self.allow, self.deny, a, port, by_name=True))
                       for a in addrs]
            candidates = [(a, d) for a, d in checked if d.allowed]
            if not candidates:
                why = checked[0][1].reason if checked else f"{host} has no address"
                return _Outcome(Decision(False, why), "denied")
        return await self._connect_any(candidates, port)

    async def _connect_any(self, candidates: list[tuple[IPAddress, Decision]],
                           port: int) -> _Outcome:
        """Connect to the first checked address that answers (never re-resolving)."""
        failure: Failure = "unreachable"
        reason = "no address"
        for addr, decision in candidates:
            family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                loop = asyncio.get_running_loop()
                await asyncio.wait_for(loop.sock_connect(sock, (str(addr), port)),
                                       self.connect_timeout)
                streams = await asyncio.open_connection(sock=sock, limit=self.max_header_bytes)
                return _Outcome(Decision(True, f"{decision.reason}; connected to {addr}"),
                                None, streams)
            except ConnectionRefusedError:
                sock.close()
                failure, reason = "refused", f"{addr}:{port} refused the connection"
            except (OSError, TimeoutError) as e:
                sock.close()
                failure, reason = "unreachable", f"{addr}:{port} unreachable: {e or 'timeout'}"
        return _Outcome(Decision(True, reason), failure)

    async def _getaddrinfo(self, host: str, port: int) -> list[IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        out: list[IPAddress] = []
        for info in infos:
            addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if addr not in out:
                out.append(addr)
        return out

    # --- HTTP -----------------------------------------------------------------------------

    async def _http(self, first: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        origin_form = ""
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                                  self.handshake_timeout)
            if len(head) > self.max_header_bytes:
                raise asyncio.LimitOverrunError("header too large", len(head))
            method, target, version, headers = _parse_head(head)
            if method == "CONNECT":
                host, port = _split_authority(target, default_port=None)
            else:
                host, port, origin_form = _absolute_target(target)
        except asyncio.LimitOverrunError:
            return await _http_reply(writer, 431, "Request Header Fields Too Large",
                                     f"request head over {self.max_header_bytes} bytes")
        except _BadRequest as e:
            return await _http_reply(writer, 400, "Bad Request", str(e))
        out = await self._open("http-connect" if method == "CONNECT" else "http", host, port)
        if out.streams is None:
            assert out.failure is not None
            code, phrase = _HTTP_STATUS[out.failure]
            return await _http_reply(writer, code, phrase, out.decision.reason)
        up_reader, up_writer = out.streams
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            request_head = _origin_head(method, origin_form, version, headers, host, port)
            up_writer.write(request_head)
            self.stats.bytes_up += len(request_head)
        await self._relay(reader, writer, up_reader, up_writer)

    # --- SOCKS5 ---------------------------------------------------------------------------

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.handshake_timeout):
                host, port, cmd = await _socks5_handshake(reader, writer)
        except _BadRequest:
            return
        if cmd is not None:  # an unsupported command or address type: reply and stop
            writer.write(_socks_reply(cmd))
            await writer.drain()
            return
        out = await self._open("socks5", host, port)
        if out.streams is None:
            assert out.failure is not None
            writer.write(_socks_reply(_SOCKS_REPLY[out.failure]))
            await writer.drain()
            return
        writer.write(_socks_reply(0x00))
        await self._relay(reader, writer, *out.streams)

    # --- relay ----------------------------------------------------------------------------

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter,
                     up_r: asyncio.StreamReader, up_w: asyncio.StreamWriter) -> None:
        """Copy both ways until both sides are done; half-closes are passed on."""
        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    if up:
                        self.stats.bytes_up += len(data)
                    else:
                        self.stats.bytes_down += len(data)
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                down_w.close()
                up_w.close()
        try:
            await down_w.drain()
            await asyncio.gather(pump(down_r, up_w, True), pump(up_r, down_w, False))
        finally:
            await _close(up_w)


# --- helpers (pure where possible) ----------------------------------------------------------

def _rules(entries: Sequence[NetRule | str]) -> tuple[NetRule, ...]:
    if isinstance(entries, str):
        raise TypeError("rules must be a sequence of rule strings, not one string")
    return tuple(e if isinstance(e, NetRule) else parse_rules([e])[0] for e in entries)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """Request line and headers of an HTTP/1.x request head (bytes up to CRLFCRLF)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise _BadRequest("undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest("malformed request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            raise _BadRequest("malformed header line")
        headers.append((name, value.strip()))
    return parts[0], parts[1], parts[2], headers


def _split_authority(text: str, default_port: int | None) -> tuple[str, int]:
    """`host:port`, `[v6]:port` (port required unless `default_port`)."""
    try:
        if text.startswith("["):
            end = text.index("]")
            host, rest = text[1:end], text[end + 1:]
            port = parse_port(rest[1:]) if rest.startswith(":") else None
            if rest and port is None:
                raise _BadRequest(f"bad authority {text!r}")
        else:
            host, sep, p = text.rpartition(":")
            host, port = (host, parse_port(p)) if sep else (text, None)
    except (ValueError, RuleError):
        raise _BadRequest(f"bad authority {text!r}") from None
    port = port if port is not None else default_port
    if not host or port is None:
        raise _BadRequest(f"bad authority {text!r} (host:port expected)")
    return host, port


def _absolute_target(target: str) -> tuple[str, int, str]:
    """`http://host[:port]/path?q` → (host, port, "/path?q"). Only plain http is proxied
    this way; https goes through CONNECT."""
    url = urlsplit(target)
    if url.scheme.lower() != "http" or not url.netloc:
        raise _BadRequest("a proxy request needs an absolute http:// URL (use CONNECT for "
                          "https and anything else)")
    if "@" in url.netloc:
        raise _BadRequest("credentials in the URL are not supported")
    host, port = _split_authority(url.netloc, default_port=80)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return host, port, path


def _origin_head(method: str, path: str, version: str, headers: list[tuple[str, str]],
                 host: str, port: int) -> bytes:
    """The request as the origin server must see it: origin-form target, the URL's Host,
    hop-by-hop and proxy headers dropped, one request per connection."""
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == 80 else f"{shown}:{port}"
    lines = [f"{method} {path} {version}", f"Host: {authority}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _http_reply(writer: asyncio.StreamWriter, code: int, phrase: str, body: str) -> None:
    data = (body + "\n").encode("utf-8", "replace")
    writer.write(f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()


def _socks_reply(code: int) -> bytes:
    """VER REP RSV ATYP=IPv4 BND.ADDR=0.0.0.0 BND.PORT=0: the bound address of the
    supervisor's outbound socket is none of the kernel's business."""
    return bytes([0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0])


async def _socks5_handshake(reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> tuple[str, int, int | None]:
    """Method negotiation and the request (the 0x05 byte is already read). Returns
    (host, port, None) for a CONNECT, or ("", 0, reply code) for a request to refuse."""
    methods = await reader.readexactly((await reader.readexactly(1))[0])
    if 0x00 not in methods:
        writer.write(b"\x05\xff")
        await writer.drain()
        raise _BadRequest("no acceptable authentication method")
    writer.write(b"\x05\x00")
    await writer.drain()
    ver, cmd, _rsv, atyp = await reader.readexactly(4)
    if ver != 0x05:
        raise _BadRequest("bad SOCKS version")
    if atyp == 0x01:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif atyp == 0x04:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif atyp == 0x03:
        raw = await reader.readexactly((await reader.readexactly(1))[0])
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            return "", 0, 0x02  # not a DNS name: not allowed by any rule
    else:
        return "", 0, 0x08
    (port,) = struct.unpack("!H", await reader.readexactly(2))
    if cmd != 0x01:
        return "", 0, 0x07
    return host, port, None


# --- the listening socket inside another network namespace --------------------------------

def _setns(fd: int, nstype: int) -> None:
    """`os.setns` exists from Python 3.12; before that, libc's setns(2) through ctypes."""
    native = getattr(os, "setns", None)
    if native is not None:
        native(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _loopback_up() -> None:
    """Bring `lo` up in the current netns if it is down: a new netns starts with `lo` down,
    and a listener on 127.0.0.1 there is unreachable until it is up. Idempotent."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), siocgifflags, ifreq))[1]
        if not flags & iff_up:
            fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def _make_listener(ns_path: str, port: int) -> socket.socket:
    """Runs in a throwaway thread: join the netns (this thread only), listen, return."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)
    try:
        _loopback_up()
    except OSError as e:
        log.warning("netproxy netns=%s cannot bring lo up: %s", _q(ns_path), _q(e))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _listen_in_netns(ns_path: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:`port` in the netns at `ns_path`, made by a fresh
    OS thread that exits afterwards: `setns` changes the calling thread's namespace for good,
    so the thread must never run anything else (no executor thread can be borrowed)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[socket.socket] = loop.create_future()

    def settle(result: socket.socket | None, exc: BaseException | None) -> None:
        if fut.cancelled():
            if result is not None:
                result.close()
        elif exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            sock = _make_listener(ns_path, port)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, sock, None)

    thread = threading.Thread(target=run, name=f"netns-listener-{port}", daemon=True)
    thread.start()
    try:
        return await fut
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no such network namespace: {ns_path}") from None
