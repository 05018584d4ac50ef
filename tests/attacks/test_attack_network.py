"""Attack class: NETWORK. With no `net` nothing leaves the kernel (no TCP/UDP/DNS, no raw,
packet, netlink, vsock, alg or bluetooth socket, no host UNIX socket, pathname or abstract);
with `net = ["127.0.0.1:PORT"]` only the proxy is reachable and it refuses everything but that
destination. Controls: the `trusted` profile (the host's network) for TCP/UDP, the proxy profile
for the allowed URL, a read grant for pathname sockets, root on the host for raw families.

Only loopback servers started by the suite are ever reached. Addresses outside loopback
(169.254.169.254, 192.0.2.1 from TEST-NET-1, 8.8.8.8, names under .invalid) appear only in
attacks that the sandbox refuses before anything leaves the kernel."""

from __future__ import annotations

import os
import time

import pytest
from _attack_support import HOST, Case, Err, Not, Ok, Outcome, ids

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = "hello from the host test server"


def net(lab) -> dict:
    t = lab.t
    return {"port": t.http_port, "other": t.other_port, "udp": t.udp_port,
            "unix": t.unix_path, "zmq": t.zmq_path, "abstract": t.abstract_name,
            "hub": lab.mgr.hub.socket_path, "tag": os.urandom(4).hex()}


def _udp_not_received(lab, out: Outcome, params: dict) -> None:
    time.sleep(0.3)
    assert not any(params["tag"].encode() in d for d in lab.t.udp_received), \
        "the datagram reached the host"


def _udp_received(lab, out: Outcome, params: dict) -> None:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if any(params["tag"].encode() in d for d in lab.t.udp_received):
            return
        time.sleep(0.02)
    raise AssertionError("control: the datagram never reached the host server")


def _no_unix_accept(lab, out: Outcome, params: dict) -> None:
    time.sleep(0.2)
    assert not any(params["tag"].encode() in d for d in lab.t.unix_accepts)


def _unix_accepted(lab, out: Outcome, params: dict) -> None:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if any(params["tag"].encode() in d for d in lab.t.unix_accepts):
            return
        time.sleep(0.02)
    raise AssertionError("control: the host listener never saw the kernel")


URLOPEN = "import urllib.request\nreturn urllib.request.urlopen({url}, timeout=10).read().decode()"
DNS_QUERY = ("q = bytes.fromhex('abcd01000001000000000000') + b'\\x07example\\x03com\\x00' "
             "+ bytes.fromhex('00010001') + P['tag'].encode()\n")

NEWROUTE = """
import struct
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)          # NETLINK_ROUTE
dst = socket.inet_aton('10.99.0.0')
rtmsg = struct.pack('BBBBBBBBI', socket.AF_INET, 16, 0, 0, 254, 3, 0, 6, 0)  # blackhole /16
attr = struct.pack('HH', 8, 1) + dst                               # RTA_DST
body = rtmsg + attr
hdr = struct.pack('IHHII', 16 + len(body), 24, 0x1 | 0x4 | 0x400 | 0x200, 1, 0)  # NEWROUTE
s.sendto(hdr + body, (0, 0))
ack = s.recv(4096)
return -struct.unpack('i', ack[16:20])[0]                          # 0 = the route was added
"""

# --- no `net`: the default profile ---------------------------------------------------------

CASES = [
    Case("tcp-to-host-loopback-server",
         "socket.create_connection(('127.0.0.1', P['port']), 2).close(); return 1",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=1), params=net),
    Case("tcp-socket-by-raw-syscall", "return syscall(41, 2, 1, 0) >= 0",  # socket(INET, STREAM)
         Err("EPERM", "PermissionError"), "trusted", Ok(value=True)),
    Case("tcp6-to-host-loopback", "s = socket.socket(socket.AF_INET6)\n"
         "s.settimeout(2)\ns.connect(('::ffff:127.0.0.1', P['port'])); s.close(); return 1",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=1), params=net),
    Case("urllib-to-host-server", URLOPEN.format(url="f\"http://127.0.0.1:{P['port']}/\""),
         Err(None, "URLError", msg="[Errno 1] Operation not permitted"), "ctl-net",
         Ok(value=BODY), params=net),
    Case("udp-to-host-server",
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.sendto(P['tag'].encode(), ('127.0.0.1', P['udp'])); return 1",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=1), params=net,
         host_check=_udp_not_received, control_check=_udp_received),
    Case("udp-dns-query-to-8.8.8.8",
         DNS_QUERY + "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.sendto(q, ('8.8.8.8', 53)); return 1",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=1), params=net,
         control_body=DNS_QUERY + "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                                  "s.sendto(q, ('127.0.0.1', P['udp'])); return 1",
         host_check=_udp_not_received, control_check=_udp_received),
    Case("dns-resolution", "return sorted({a[4][0] for a in socket.getaddrinfo('localhost', 80)})",
         Err(None, "gaierror", msg="Temporary failure in name resolution"), "trusted",
         Ok(pred=lambda v: "127.0.0.1" in v)),
    Case("cloud-metadata-169.254.169.254",
         "socket.create_connection(('169.254.169.254', 80), 2).close(); return 1",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=1), params=net,
         control_body="socket.create_connection(('127.0.0.1', P['port']), 2).close(); return 1"),
    Case("bind-and-listen-for-inbound",
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
         "return s.getsockname()[1] > 0",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=True)),
    Case("raw-icmp-socket", "socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close(); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("raw-ipv6-socket",
         "socket.socket(socket.AF_INET6, socket.SOCK_RAW, 58).close(); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("packet-socket", "return syscall(41, 17, 3, 0x0300) >= 0",  # AF_PACKET, ETH_P_ALL
         Err("EPERM", "PermissionError"), HOST, Ok(value=True)),
    Case("netlink-route-socket",
         "s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE\n"
         "s.bind((0, 0)); s.close(); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("netlink-rtm-newroute", NEWROUTE, Err("EPERM", "PermissionError"), HOST, Ok(value=0),
         # the control adds its route in a network namespace of its own, never the host's
         control_body="syscall(272, 0x40000000)  # unshare(CLONE_NEWNET)\n" + NEWROUTE),
    Case("netlink-uevent-socket", "return syscall(41, 16, 2, 15) >= 0",  # KOBJECT_UEVENT
         Err("EPERM", "PermissionError"), HOST, Ok(value=True)),
    Case("vsock-to-hypervisor", "return syscall(41, 40, 1, 0) >= 0",  # AF_VSOCK
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),
    Case("af-alg-crypto-socket",
         "s = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET)\n"
         "s.bind(('hash', 'sha256')); s.close(); return 1",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),  # no AF_ALG in this VM
    Case("bluetooth-socket", "return syscall(41, 31, 3, 1) >= 0",  # AF_BLUETOOTH HCI
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),
    Case("sctp-socket", "return syscall(41, 2, 5, 132) >= 0",  # AF_INET SEQPACKET SCTP
         Err("EPERM", "PermissionError"), "trusted", Not("EPERM")),
    Case("host-pathname-unix-socket",
         "s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(P['unix'])\n"
         "s.recv(2); s.sendall(P['tag'].encode()); s.close(); return 1",
         Err("ENOENT", "FileNotFoundError"), "ctl-sock", Ok(value=1), params=net,
         host_check=_no_unix_accept, control_check=_unix_accepted),
    Case("fd-passing-from-host-socket",
         "s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(P['unix'])\n"
         "msg, fds, _, _ = socket.recv_fds(s, 10, 4)\ns.sendall(P['tag'].encode())\n"
         "return os.read(fds[0], 100).decode()",
         Err("ENOENT", "FileNotFoundError"), "ctl-sock",
         Ok(pred=lambda v: v.startswith("host secret"), desc="the host handed an fd over"),
         params=net),
    Case("daemon-style-zmq-ipc-socket",
         "s = socket.socket(socket.AF_UNIX); s.connect(P['zmq']); s.close(); return 1",
         Err("ENOENT", "FileNotFoundError"), "ctl-sock", Ok(value=1), params=net),
    Case("system-daemon-socket-paths",
         "return [os.path.lexists(p) for p in ('/run/kerneld', '/run/dbus', "
         "'/run/systemd', '/var/run', '/run/postgresql')]",
         Ok(value=[False] * 5), HOST, Ok(pred=lambda v: v[1] and v[4])),
    Case("manager-worker-hub-host-path",
         "s = socket.socket(socket.AF_UNIX); s.connect(P['hub']); s.close(); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1), params=net),
    Case("host-abstract-unix-socket",
         "s = socket.socket(socket.AF_UNIX); s.connect(P['abstract']); s.close(); return 1",
         Err("ECONNREFUSED", "ConnectionRefusedError"), HOST, Ok(value=1), params=net),
]

# --- `net = ["127.0.0.1:PORT"]`: the proxy profile ------------------------------------------

ALLOWED = URLOPEN.format(url="f\"http://127.0.0.1:{P['port']}/\"")
REFUSED = Err(None, "HTTPError", msg="HTTP Error 403")


def proxy_case(id: str, url: str) -> Case:
    return Case(id, URLOPEN.format(url=url), REFUSED, "ctl-net", Ok(value=BODY),
                control_body=ALLOWED, params=net, attack_profile="ctl-net")


SOCKS5 = """
import struct
s = socket.create_connection(('127.0.0.1', 3128), 5)
s.sendall(b'\\x05\\x01\\x00')
assert s.recv(2) == b'\\x05\\x00'
s.sendall(b'\\x05\\x01\\x00\\x01' + socket.inet_aton('127.0.0.1') + struct.pack('>H', P[{key!r}]))
reply = s.recv(10)
s.close()
return reply[1]
"""

TUNNEL = """
import http.client
c = http.client.HTTPConnection('127.0.0.1', 3128, timeout=5)
c.set_tunnel('127.0.0.1', P[{key!r}])
c.request('GET', '/')
return c.getresponse().read().decode()
"""

PROXY_CASES = [
    proxy_case("proxy-other-port-same-host", "f\"http://127.0.0.1:{P['other']}/\""),
    proxy_case("proxy-localhost-name", "f\"http://localhost:{P['port']}/\""),
    proxy_case("proxy-loopback-alias-127.1", "f\"http://127.1:{P['port']}/\""),
    proxy_case("proxy-decimal-ip", "f\"http://2130706433:{P['port']}/\""),
    proxy_case("proxy-ipv6-loopback", "f\"http://[::1]:{P['port']}/\""),
    proxy_case("proxy-v4-mapped-other-port", "f\"http://[::ffff:127.0.0.1]:{P['other']}/\""),
    proxy_case("proxy-other-loopback-address", "f\"http://127.0.0.2:{P['port']}/\""),
    proxy_case("proxy-cloud-metadata", "'http://169.254.169.254/latest/meta-data/'"),
    proxy_case("proxy-other-host-ip", "'http://192.0.2.1/'"),
    proxy_case("proxy-other-host-name", "'http://kerneld-attack.invalid/'"),
    Case("proxy-connect-tunnel-other-port", TUNNEL.format(key="other"),
         Err(None, "OSError", msg="Tunnel connection failed: 403"), "ctl-net", Ok(value=BODY),
         control_body=TUNNEL.format(key="port"), params=net, attack_profile="ctl-net"),
    Case("proxy-socks5-other-port", SOCKS5.format(key="other"),
         Ok(value=2, desc="SOCKS5 reply 0x02: not allowed by ruleset"), "ctl-net",
         Ok(value=0, desc="SOCKS5 reply 0x00: granted"), control_body=SOCKS5.format(key="port"),
         params=net, attack_profile="ctl-net"),
    Case("proxy-bypass-direct-tcp-allowed-port",
         "socket.create_connection(('127.0.0.1', P['port']), 2).close(); return 1",
         Err("EACCES", "PermissionError"), "trusted", Ok(value=1), params=net,
         attack_profile="ctl-net"),
    Case("proxy-bypass-direct-tcp-outside",
         "socket.create_connection(('192.0.2.1', 80), 2).close(); return 1",
         Err("EACCES", "PermissionError"), "trusted", Ok(value=1), params=net,
         control_body="socket.create_connection(('127.0.0.1', P['port']), 2).close(); return 1",
         attack_profile="ctl-net"),
    Case("proxy-udp-socket",
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.sendto(P['tag'].encode(), ('127.0.0.1', P['udp'])); return 1",
         Err("EPERM", "PermissionError"), "trusted", Ok(value=1), params=net,
         host_check=_udp_not_received, control_check=_udp_received, attack_profile="ctl-net"),
    Case("proxy-dns-resolution",
         "return sorted({a[4][0] for a in socket.getaddrinfo('localhost', 80)})",
         Err(None, "gaierror", msg="name resolution"), "trusted",
         Ok(pred=lambda v: "127.0.0.1" in v), attack_profile="ctl-net"),
    Case("proxy-mptcp-socket", "socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()\n"
         "return 1", Err("EPERM", "PermissionError"), "trusted", Ok(value=1),
         attack_profile="ctl-net"),
    Case("proxy-tcp-fast-open",
         "s = socket.socket()\n"
         "return s.sendto(b'GET / HTTP/1.0\\r\\n\\r\\n', 0x20000000, ('127.0.0.1', P['port']))",
         Err("EPERM", "PermissionError"), HOST, Ok(pred=lambda v: v > 0), params=net,
         attack_profile="ctl-net"),
    Case("proxy-bind-and-listen",
         "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); return 1",
         Err("EACCES", "PermissionError"), "trusted", Ok(value=1), attack_profile="ctl-net"),
    Case("proxy-raw-socket", "return syscall(41, 2, 3, 6) >= 0",
         Err("EPERM", "PermissionError"), HOST, Ok(value=True), attack_profile="ctl-net"),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_network_attack_without_net(lab, case: Case) -> None:
    await case.run(lab)


@pytest.mark.parametrize("case", PROXY_CASES, ids=ids(PROXY_CASES))
async def test_network_attack_through_the_proxy(lab, case: Case) -> None:
    await case.run(lab)


async def test_forged_worker_hub_messages_change_nothing(lab) -> None:
    """The worker hub is the one endpoint a kernel must reach (bound in at
    /run/kerneld-worker.sock). Talking to it with another identity, garbage and a flood changes
    nothing: the manager and another kernel keep answering, and the kernel itself is fine."""
    witness = await lab.kernel("default")
    kid = await lab.fresh()
    try:
        body = """
        import zmq
        ctx = zmq.Context()
        sent = 0
        for i in range(20):
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.IDENTITY, os.urandom(16))
            d.setsockopt(zmq.LINGER, 0)
            d.connect('ipc:///run/kerneld-worker.sock')
            for _ in range(200):
                d.send(os.urandom(64)); sent += 1
            d.close()
        raw = socket.socket(socket.AF_UNIX); raw.connect('/run/kerneld-worker.sock')
        raw.sendall(os.urandom(4096)); raw.close()
        ctx.term()
        return sent
        """
        out = await lab.execute(kid, body)
        Ok(value=4000).check(out, "flooding the hub from a kernel")
        again = await lab.execute(kid, "return 6 * 7")
        Ok(value=42).check(again, "the attacking kernel still answers")
        other = await lab.execute(witness, "return 'alive'")
        Ok(value="alive").check(other, "another kernel answers")
        assert lab.mgr.ping_kernel(witness)
    finally:
        await lab.mgr.destroy_kernel(kid)
