"""The per-kernel proxy with real sockets, on loopback only (nothing here contacts any other
address: refusals are decided before any connect, and resolvers are faked where a test needs
a name to resolve somewhere else).

Each refusal has a positive control next to it (same proxy or same request shape succeeding),
so "everything fails" cannot pass for the wrong reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kerneld.net.match import IPAddress
from kerneld.net.proxy import KernelProxy


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "host": self.headers.get("Host"),
                           "proxy": self.headers.get("Proxy-Connection")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin() -> Iterator[int]:
    """A host HTTP server on 127.0.0.1; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def _proxy(rules: Sequence[str] | str, deny: Sequence[str] = (), **kw: object
                 ) -> KernelProxy:
    proxy = KernelProxy("test-kernel", rules, deny, **kw)  # type: ignore[arg-type]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    await proxy.start_on(sock)
    return proxy


@pytest.fixture
async def make_proxy() -> AsyncIterator[object]:
    made: list[KernelProxy] = []

    async def make(rules: Sequence[str] | str, deny: Sequence[str] = (),
                   **kw: object) -> KernelProxy:
        made.append(await _proxy(rules, deny, **kw))
        return made[-1]
    yield make
    for p in made:
        await p.close()


def _urllib_get(proxy_port: int, url: str) -> tuple[int, bytes]:
    """GET through the proxy the way user code does with HTTP_PROXY set."""
    handler = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"})
    try:
        with urllib.request.build_opener(handler).open(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def _get(proxy: KernelProxy, url: str) -> tuple[int, bytes]:
    assert proxy.address is not None
    return await asyncio.to_thread(_urllib_get, proxy.address[1], url)


async def _connect_tunnel(proxy: KernelProxy, target: str) -> tuple[bytes, bytes]:
    """CONNECT target, then (if 200) a plain GET through the tunnel; (status line, body)."""
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    status = head.split(b"\r\n")[0]
    body = b""
    if b" 200 " in status:
        w.write(b"GET /tunnel HTTP/1.0\r\n\r\n")
        body = await asyncio.wait_for(r.read(), 10)
    w.close()
    return status, body


async def _socks(proxy: KernelProxy, atyp: int, addr: bytes, port: int, cmd: int = 1
                 ) -> tuple[int, bytes]:
    """Raw SOCKS5 handshake; returns (reply code, bytes read after a GET if it succeeded)."""
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(b"\x05\x01\x00")
    assert await r.readexactly(2) == b"\x05\x00"
    w.write(bytes([5, cmd, 0, atyp]) + addr + struct.pack("!H", port))
    reply = await asyncio.wait_for(r.readexactly(10), 10)
    assert reply[0] == 5
    body = b""
    if reply[1] == 0:
        w.write(b"GET /socks HTTP/1.0\r\n\r\n")
        body = await asyncio.wait_for(r.read(), 10)
    w.close()
    return reply[1], body


def _v4(ip: str) -> bytes:
    return socket.inet_aton(ip)


def _name(host: str) -> bytes:
    return bytes([len(host)]) + host.encode()


# --- plain HTTP -----------------------------------------------------------------------------

async def test_plain_http_get_through_urllib(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    status, body = await _get(proxy, f"http://127.0.0.1:{origin}/a/b?c=1")
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/a/b?c=1"  # rewritten to origin-form
    assert seen["host"] == f"127.0.0.1:{origin}"
    assert seen["proxy"] is None  # proxy headers are not forwarded
    assert proxy.stats.bytes_down > len(body) and proxy.stats.bytes_up > 0


async def test_plain_http_other_port_refused(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    status, body = await _get(proxy, f"http://127.0.0.1:{origin + 1}/")
    assert status == 403
    assert b"not named by an IP/CIDR rule" in body
    assert (await _get(proxy, f"http://127.0.0.1:{origin}/"))[0] == 200  # control
    assert proxy.stats.refused == 1


async def test_https_url_without_connect_is_bad_request(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(f"GET https://127.0.0.1:{origin}/ HTTP/1.1\r\n\r\n".encode())
    assert (await r.readline()).startswith(b"HTTP/1.1 400")
    w.close()


async def test_oversized_header_431(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"], max_header_bytes=1024)
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(f"GET http://127.0.0.1:{origin}/ HTTP/1.1\r\nX: {'a' * 4000}\r\n\r\n".encode())
    assert (await r.readline()).startswith(b"HTTP/1.1 431")
    w.close()


# --- CONNECT --------------------------------------------------------------------------------

async def test_connect_tunnel(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    status, body = await _connect_tunnel(proxy, f"127.0.0.1:{origin}")
    assert b" 200 " in status
    assert b'"path": "/tunnel"' in body


async def test_connect_other_port_403(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    status, _ = await _connect_tunnel(proxy, f"127.0.0.1:{origin + 1}")
    assert status.startswith(b"HTTP/1.1 403")


async def test_empty_rules_refuse_everything(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([])
    assert (await _connect_tunnel(proxy, f"127.0.0.1:{origin}"))[0].startswith(b"HTTP/1.1 403")
    assert (await _get(proxy, f"http://127.0.0.1:{origin}/"))[0] == 403


# --- SOCKS5 ---------------------------------------------------------------------------------

async def test_socks5_ipv4(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    code, body = await _socks(proxy, 1, _v4("127.0.0.1"), origin)
    assert code == 0 and b'"path": "/socks"' in body
    assert (await _socks(proxy, 1, _v4("127.0.0.1"), origin + 1))[0] == 0x02


async def test_socks5_domain_with_ip_literal(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    assert (await _socks(proxy, 3, _name("127.0.0.1"), origin))[0] == 0


async def test_socks5_unsupported_command(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    assert (await _socks(proxy, 1, _v4("127.0.0.1"), origin, cmd=2))[0] == 0x07  # BIND
    assert (await _socks(proxy, 1, _v4("127.0.0.1"), origin, cmd=3))[0] == 0x07  # UDP


async def test_socks5_requires_no_auth_method(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(b"\x05\x01\x02")  # username/password only
    assert await r.readexactly(2) == b"\x05\xff"
    w.close()


async def test_socks5_connection_refused(make_proxy):  # type: ignore[no-untyped-def]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    proxy = await make_proxy([f"127.0.0.1:{port}"])
    assert (await _socks(proxy, 1, _v4("127.0.0.1"), port))[0] == 0x05


# --- rule semantics over the wire -----------------------------------------------------------

async def test_localhost_rule_refused_because_it_resolves_to_loopback(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"localhost:{origin}"])
    status, body = await _get(proxy, f"http://localhost:{origin}/")
    assert status == 403 and b"loopback" in body
    assert (await _socks(proxy, 3, _name("localhost"), origin))[0] == 0x02
    # positive control: naming the address as well lets the same request through
    both = await make_proxy([f"localhost:{origin}", f"127.0.0.1:{origin}"])
    assert (await _get(both, f"http://localhost:{origin}/"))[0] == 200


async def test_ip_rule_does_not_authorise_localhost_name(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"])
    assert (await _get(proxy, f"http://localhost:{origin}/"))[0] == 403
    assert (await _socks(proxy, 3, _name("localhost"), origin))[0] == 0x02


async def test_hostname_rule_does_not_authorise_its_ip(make_proxy, origin):  # type: ignore[no-untyped-def]
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]
    proxy = await make_proxy([f"origin.test:{origin}", f"127.0.0.0/8:{origin}"],
                             resolver=resolver)
    assert (await _get(proxy, f"http://origin.test:{origin}/"))[0] == 200  # control
    hostname_only = await make_proxy([f"origin.test:{origin}"], resolver=resolver)
    assert (await _get(hostname_only, f"http://127.0.0.1:{origin}/"))[0] == 403


async def test_cidr_rule(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy(["127.0.0.0/8"])
    assert (await _get(proxy, f"http://127.0.0.1:{origin}/"))[0] == 200
    assert (await _socks(proxy, 1, _v4("127.0.0.1"), origin))[0] == 0
    with_port = await make_proxy([f"127.0.0.0/8:{origin + 1}"])
    assert (await _get(with_port, f"http://127.0.0.1:{origin}/"))[0] == 403


async def test_wide_cidr_does_not_unlock_loopback(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy(["0.0.0.0/0"])
    assert (await _get(proxy, f"http://127.0.0.1:{origin}/"))[0] == 403


async def test_deny_beats_allow(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy(["127.0.0.0/8"], [f"127.0.0.1:{origin}"])
    status, body = await _get(proxy, f"http://127.0.0.1:{origin}/")
    assert status == 403 and b"denied by rule" in body
    assert (await _socks(proxy, 1, _v4("127.0.0.1"), origin))[0] == 0x02


async def test_deny_ip_applies_after_resolution(make_proxy, origin):  # type: ignore[no-untyped-def]
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]
    proxy = await make_proxy([f"origin.test:{origin}", "127.0.0.0/8"], ["127.0.0.1"],
                             resolver=resolver)
    assert (await _get(proxy, f"http://origin.test:{origin}/"))[0] == 403


@pytest.mark.parametrize("address", ["169.254.169.254", "10.1.2.3", "100.64.0.1", "0.0.0.0",
                                     "fd00:ec2::254", "::ffff:127.0.0.1"])
async def test_name_resolving_to_special_address_refused(make_proxy, address):  # type: ignore[no-untyped-def]
    """Refused before any connect is attempted (the resolver is fake, nothing leaves)."""
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(address)]
    proxy = await make_proxy(["*.example.test"], resolver=resolver)
    status, body = await _get(proxy, "http://api.example.test/")
    assert status == 403, body


async def test_connects_only_to_checked_address(make_proxy, origin):  # type: ignore[no-untyped-def]
    """A name resolving to a refused address and an allowed one: only the allowed one is
    used, and the name is resolved once (no second lookup a rebinding DNS could answer)."""
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("127.0.0.1")]
    proxy = await make_proxy([f"origin.test:{origin}", f"127.0.0.1:{origin}"],
                             resolver=resolver)
    assert (await _get(proxy, f"http://origin.test:{origin}/"))[0] == 200
    assert calls == ["origin.test"]


async def test_connection_cap(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"], max_connections=1)
    assert proxy.address is not None
    _r1, w1 = await asyncio.open_connection(*proxy.address)  # holds the only slot
    w1.write(b"\x05")
    await asyncio.sleep(0.05)
    r2, w2 = await asyncio.open_connection(*proxy.address)
    assert await asyncio.wait_for(r2.read(), 5) == b""  # closed at once
    w1.close()
    w2.close()


async def test_handshake_timeout(make_proxy, origin):  # type: ignore[no-untyped-def]
    proxy = await make_proxy([f"127.0.0.1:{origin}"], handshake_timeout=0.2)
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(b"GET http://127.0.0.1/ HTTP/1.1\r\n")  # never finishes the head
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()


async def test_close_cancels_open_tunnels(origin):  # type: ignore[no-untyped-def]
    proxy = await _proxy([f"127.0.0.1:{origin}"])
    assert proxy.address is not None
    r, w = await asyncio.open_connection(*proxy.address)
    w.write(f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\n\r\n".encode())
    await r.readuntil(b"\r\n\r\n")
    await asyncio.wait_for(proxy.close(), 5)
    assert await asyncio.wait_for(r.read(), 5) == b""
    assert proxy.address is None
    await proxy.close()  # idempotent
    w.close()


# --- inside a real network namespace --------------------------------------------------------

_CHILD = textwrap.dedent("""
    import ctypes, json, os, socket, subprocess, sys, urllib.request
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        print("unshare failed", ctypes.get_errno(), flush=True); sys.exit(1)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    print("ready", flush=True)
    origin = int(sys.stdin.readline())
    out = {}
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", origin)); out["direct"] = "connected"
    except OSError as e:
        out["direct"] = e.errno
    proxy = urllib.request.ProxyHandler({"http": "http://127.0.0.1:3128"})
    with urllib.request.build_opener(proxy).open(f"http://127.0.0.1:{origin}/ns", timeout=10) as r:
        out["via_proxy"] = [r.status, r.read().decode()]
    print(json.dumps(out), flush=True)
""")


def _can_unshare_net() -> bool:
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare_net(), reason="needs root and network namespaces")
async def test_proxy_listener_inside_network_namespace(origin):  # type: ignore[no-untyped-def]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    proxy = KernelProxy("netns-kernel", [f"127.0.0.1:{origin}"])
    try:
        assert (await asyncio.wait_for(child.stdout.readline(), 20)).strip() == b"ready"
        await proxy.start_in_netns(child.pid, 3128)
        assert proxy.address == ("127.0.0.1", 3128)
        child.stdin.write(f"{origin}\n".encode())
        await child.stdin.drain()
        result = json.loads(await asyncio.wait_for(child.stdout.readline(), 30))
    finally:
        await proxy.close()
        if child.returncode is None:
            child.kill()
        await child.wait()
    assert result["direct"] == 111  # ECONNREFUSED: the host's server is not in that netns
    status, body = result["via_proxy"]
    assert status == 200 and json.loads(body)["path"] == "/ns"
    # the listener is not in the test's own netns: nothing answers on host 127.0.0.1:3128
    # unless something unrelated happens to listen there, so only check the proxy's socket
    assert proxy.stats.connections == 1


async def test_start_in_netns_of_missing_process():  # type: ignore[no-untyped-def]
    proxy = KernelProxy("gone", [])
    with pytest.raises(ProcessLookupError):
        await proxy.start_in_netns(2**22 + 12345, 3128)
