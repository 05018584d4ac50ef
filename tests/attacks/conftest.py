"""Fixtures of the attack suite: one real KernelManager for the whole session, host-side
targets (world-readable files, an HTTP server, a UDP server, pathname and abstract UNIX
listeners, a daemon-style ZeroMQ ipc socket), and control profiles that grant exactly what
an attack tries, so a refused attack cannot pass for the wrong reason.

Targets on the host are deliberately world-readable/-connectable: if the kernel cannot reach
them, it is the sandbox that stopped it, not file permissions.

Kernels are shared where that is safe: one kernel per profile (`lab.kernel(profile)`), created
on first use; destructive cases make their own (`lab.fresh(...)`) and destroy them.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _attack_support import Outcome, parse, stdout_of, wrap

from kerneld import KernelManager
from kerneld.config import ManagerConfig

SECRET_ENV = "KERNELD_ATTACK_SECRET"
SECRET_VALUE = "s3cr3t-" + os.urandom(6).hex()
SECRET_TEXT = "host secret " + os.urandom(6).hex()

# The suite's kernels get uids of their own, away from the default range other managers on
# this host (concurrent test runs, a daemon) hand out: RLIMIT_NPROC counts per uid host-wide,
# so sharing a uid with another manager's kernel would make the limits flaky here. That
# sharing is itself an isolation hole: test_process.py::test_two_managers_never_share_a_uid.
UID_FIRST = 400_000 + (os.getpid() % 900) * 100
UID_RANGE = (UID_FIRST, UID_FIRST + 99)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # http.server's API name
        body = b"hello from the host test server"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HostTargets:
    """Everything on the host that attacks aim at and controls are granted."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="kerneld-attack-")
        os.chmod(self.root, 0o755)
        # read target: world-readable, so only the sandbox can keep it from the kernel
        self.read_dir = self._dir("readable")
        self.secret = os.path.join(self.read_dir, "secret.txt")
        Path(self.secret).write_text(SECRET_TEXT)
        os.chmod(self.secret, 0o644)
        # write target: world-writable, so only the sandbox can keep the kernel from it
        self.write_dir = self._dir("writable", 0o777)
        self.victim = os.path.join(self.write_dir, "victim.txt")
        Path(self.victim).write_text("original")
        os.chmod(self.victim, 0o666)
        # a "daemon config" stand-in
        self.config_dir = self._dir("etc-kerneld")
        Path(self.config_dir, "kerneld.toml").write_text("[daemon]\ntoken = 'x'\n")
        os.chmod(os.path.join(self.config_dir, "kerneld.toml"), 0o644)
        # sockets
        self.sock_dir = self._dir("sockets")
        self.unix_path = os.path.join(self.sock_dir, "host.sock")
        self.unix_accepts: list[bytes] = []
        self.abstract_name = "\0kerneld-attack-" + os.urandom(4).hex()
        self.abstract_accepts = 0
        self.udp_received: list[bytes] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start_http()
        self._start_udp()
        self._start_unix()
        self._start_abstract()
        self.zmq_dir = self._dir("daemon")
        self.zmq_path = os.path.join(self.zmq_dir, "kerneld.sock")
        import zmq
        self._zctx = zmq.Context()
        self.zmq_sock = self._zctx.socket(zmq.ROUTER)
        self.zmq_sock.setsockopt(zmq.LINGER, 0)
        self.zmq_sock.bind(f"ipc://{self.zmq_path}")
        os.chmod(self.zmq_path, 0o777)

    def _dir(self, name: str, mode: int = 0o755) -> str:
        path = os.path.join(self.root, name)
        os.mkdir(path)
        os.chmod(path, mode)
        return path

    def _thread(self, target: Any) -> None:
        t = threading.Thread(target=target, daemon=True)
        t.start()
        self._threads.append(t)

    def _start_http(self) -> None:
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
        self.http_port = self.http.server_address[1]
        self._thread(self.http.serve_forever)
        # a port nothing listens on, and a second listener the profile does not grant
        self.other = socket.socket()
        self.other.bind(("127.0.0.1", 0))
        self.other.listen()
        self.other_port = self.other.getsockname()[1]

    def _start_udp(self) -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.udp_port = self.udp.getsockname()[1]

        def serve() -> None:
            while not self._stop.is_set():
                try:
                    data, _ = self.udp.recvfrom(65536)
                except (TimeoutError, OSError):
                    continue
                self.udp_received.append(data)
        self._thread(serve)

    def _start_unix(self) -> None:
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        os.chmod(self.unix_path, 0o777)
        self.unix.listen()
        self.unix.settimeout(0.2)

        def serve() -> None:
            while not self._stop.is_set():
                try:
                    conn, _ = self.unix.accept()
                except (TimeoutError, OSError):
                    continue
                with conn:
                    # hand the connecting process an fd of the host secret (SCM_RIGHTS)
                    fd = os.open(self.secret, os.O_RDONLY)
                    try:
                        socket.send_fds(conn, [b"fd"], [fd])
                    finally:
                        os.close(fd)
                    conn.settimeout(1)
                    try:
                        self.unix_accepts.append(conn.recv(100))
                    except OSError:
                        self.unix_accepts.append(b"")
        self._thread(serve)

    def _start_abstract(self) -> None:
        self.abstract = socket.socket(socket.AF_UNIX)
        self.abstract.bind(self.abstract_name)
        self.abstract.listen()
        self.abstract.settimeout(0.2)

        def serve() -> None:
            while not self._stop.is_set():
                try:
                    conn, _ = self.abstract.accept()
                except (TimeoutError, OSError):
                    continue
                self.abstract_accepts += 1
                conn.close()
        self._thread(serve)

    def close(self) -> None:
        self._stop.set()
        self.http.shutdown()
        self.http.server_close()
        for s in (self.other, self.udp, self.unix, self.abstract):
            s.close()
        self.zmq_sock.close(linger=0)
        self._zctx.term()
        for t in self._threads:
            t.join(timeout=2)
        shutil.rmtree(self.root, ignore_errors=True)


def control_profiles(t: HostTargets) -> dict[str, str]:
    """Profiles granting exactly what the attacks try (positive controls)."""
    return {
        "ctl-read": f'read = ["{t.read_dir}", "/etc", "{t.config_dir}"]\n',
        "ctl-write": f'write = ["{t.write_dir}"]\n',
        # the world-writable dir granted read-only: only the read-only bind stands in the way
        "ro-write-dir": f'read = ["{t.write_dir}"]\n',
        "ctl-run": 'run = ["/usr/bin/id", "/usr/bin/mount", "/usr/bin/true"]\n',
        "ctl-net": f'net = ["127.0.0.1:{t.http_port}"]\n',
        "ctl-sock": f'read = ["{t.sock_dir}", "{t.zmq_dir}"]\n',
        "ctl-sys": 'sys = ["osRelease", "meminfo", "cpus", "hostname", "loadavg", "uptime"]\n',
        "ctl-env": f'env = ["{SECRET_ENV}"]\n',
        "ctl-stall": ('description = "default with a wall limit that interrupts"\n'
                      'on_stall = "interrupt"\n[limits]\nwall_seconds = 1\n'),
    }


class Lab:
    """The session's manager, host targets and shared kernels."""

    def __init__(self, mgr: KernelManager, targets: HostTargets, profile_dir: str) -> None:
        self.mgr = mgr
        self.t = targets
        self.profile_dir = profile_dir
        self._kernels: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def kernel(self, profile: str) -> str:
        """The shared kernel of `profile` (created on first use; re-created if it died)."""
        lock = self._locks.setdefault(profile, asyncio.Lock())
        async with lock:
            kid = self._kernels.get(profile)
            if kid is not None and self._status(kid) not in ("dead", "gone"):
                return kid
            kid = await self.mgr.create_kernel(profile=profile)
            self._kernels[profile] = kid
            return kid

    def _status(self, kid: str) -> str:
        for info in self.mgr.list_kernels():
            if info["id"] == kid:
                return str(info["status"])
        return "gone"

    async def fresh(self, profile: str = "default", **options: Any) -> str:
        return await self.mgr.create_kernel(profile=profile, **options)

    async def execute(self, kid: str, body: str, params: dict[str, Any] | None = None,
                      timeout: float = 60) -> Outcome:
        res = await asyncio.wait_for(self.mgr.execute(kid, wrap(body, params)), timeout)
        return parse(stdout_of(res), res.error)

    async def run(self, profile: str, body: str, params: dict[str, Any] | None = None,
                  timeout: float = 60) -> Outcome:
        return await self.execute(await self.kernel(profile), body, params, timeout)

    def info(self, kid: str) -> dict[str, Any]:
        (info,) = [i for i in self.mgr.list_kernels() if i["id"] == kid]
        return info


@pytest.fixture(scope="session")
def host_targets() -> Iterator[HostTargets]:
    targets = HostTargets()
    yield targets
    targets.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def lab(host_targets: HostTargets,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    profile_dir = tmp_path_factory.mktemp("attack-profiles")
    for name, text in control_profiles(host_targets).items():
        (profile_dir / f"{name}.toml").write_text(text)
    os.environ[SECRET_ENV] = SECRET_VALUE  # a daemon variable no default kernel may see
    config = ManagerConfig(profile_dirs=(str(profile_dir),), uid_range=UID_RANGE)
    try:
        async with KernelManager(config) as mgr:
            await mgr.start()
            yield Lab(mgr, host_targets, str(profile_dir))
    finally:
        os.environ.pop(SECRET_ENV, None)
