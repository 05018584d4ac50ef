"""Network confinement in real children: netns + seccomp socket filter + Landlock TCP rules.
Positive control: the same operations in "host" mode reach a listener on the host."""

from __future__ import annotations

import errno
import socket
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _support import Driver, confined, needs_landlock_net, result

pytestmark = [pytest.mark.sandbox, *confined, needs_landlock_net]

PROXY_PORT = 3128
AF_VSOCK, AF_ALG, AF_PACKET, AF_NETLINK, AF_BLUETOOTH = 40, 38, 17, 16, 31


def pol(uid: int, mode: str, **kw: Any) -> dict[str, Any]:
    return {"uid": uid, "gid": uid, "limits": {"cpu_shares": None},
            "net": {"mode": mode, "proxy_port": PROXY_PORT}, **kw}


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's loopback (stands for the daemon or any local service)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


PROBE = textwrap.dedent("""
    def sock(*a):
        try:
            socket.socket(*a).close()
            return 0
        except OSError as e:
            return e.errno
    def connect(host, port, fam=socket.AF_INET):
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as e:
            return ("socket", e.errno)
        s.settimeout(2)
        try:
            return ("connect", s.connect_ex((host, port)))
        finally:
            s.close()
    def udp_send():
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"x", ("127.0.0.1", 53))
            return 0
        except OSError as e:
            return e.errno
    def tcp_bind():
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            return 0
        except OSError as e:
            return e.errno
    def fastopen():
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            return e.errno
        try:
            s.sendto(b"GET /", 0x20000000, ("127.0.0.1", PORT))
            return 0
        except OSError as e:
            return e.errno
    result = {
        "unix": sock(socket.AF_UNIX, socket.SOCK_STREAM),
        "pair": errno_of(socket.socketpair),
        "netlink": sock(16, socket.SOCK_RAW, 0), "packet": sock(17, socket.SOCK_RAW, 0),
        "vsock": sock(40, socket.SOCK_STREAM, 0), "alg": sock(38, socket.SOCK_SEQPACKET, 0),
        "raw": sock(socket.AF_INET, socket.SOCK_RAW, 1),
        "mptcp": sock(socket.AF_INET, socket.SOCK_STREAM, 262),
        "udp": udp_send(), "bind": tcp_bind(), "fastopen": fastopen(),
        "host_port": connect("127.0.0.1", PORT),
        "host_port6": connect("::1", PORT, socket.AF_INET6),
        "metadata": connect("169.254.169.254", 80),
        "proxy_port": connect("127.0.0.1", PROXY_PORT),
    }
""")


def probe(driver: Driver, policy: dict[str, Any], port: int) -> dict[str, Any]:
    code = f"PORT = {port}\nPROXY_PORT = {PROXY_PORT}\n" + PROBE
    res: dict[str, Any] = result(driver.run(policy, code))
    return res


def test_no_network_at_all_in_none_mode(driver: Driver, uid: int, host_listener: int) -> None:
    r = probe(driver, pol(uid, "none"), host_listener)
    assert r["unix"] == 0 and r["pair"] == 0
    for k in ("netlink", "packet", "vsock", "alg", "raw", "mptcp", "udp", "bind", "fastopen"):
        assert r[k] == errno.EPERM, k
    for k in ("host_port", "host_port6", "metadata", "proxy_port"):
        assert r[k] == ["socket", errno.EPERM], k


def test_proxy_mode_reaches_only_the_proxy_port(driver: Driver, uid: int,
                                                host_listener: int) -> None:
    r = probe(driver, pol(uid, "proxy"), host_listener)
    for k in ("netlink", "packet", "vsock", "alg", "raw", "mptcp", "udp", "fastopen"):
        assert r[k] == errno.EPERM, k
    assert r["bind"] == errno.EACCES                          # Landlock: no TCP bind
    assert r["host_port"] == ["connect", errno.EACCES]        # Landlock: not the proxy port
    assert r["host_port6"] == ["connect", errno.EACCES]
    assert r["metadata"] == ["connect", errno.EACCES]
    # allowed by Landlock; nobody listens inside the kernel's netns (lo is up: not ENETUNREACH)
    assert r["proxy_port"] == ["connect", errno.ECONNREFUSED]


def test_host_mode_is_the_positive_control(driver: Driver, uid: int,
                                           host_listener: int) -> None:
    r = probe(driver, pol(uid, "host"), host_listener)
    assert r["host_port"] == ["connect", 0]                   # the same connect succeeds
    assert r["udp"] == 0 and r["bind"] == 0
    for k in ("netlink", "packet", "vsock", "alg"):
        assert r[k] == errno.EPERM, k                          # never, even with host network
