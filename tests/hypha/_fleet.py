"""A real Hypha server, real kerneld daemons and real `kerneld hypha` processes, for the Hypha
tests and the bench (HYPHA.md §1, §2, §7).

- `HyphaServer`: `python -m hypha.server` from the side environment `.venv-hypha` (built by
  scripts/setup-test-envs.sh, never in the daemon's .venv) on 127.0.0.1, its database and
  TMPDIR in a private directory, a strong random root token and JWT secret; ready when
  `/health/readiness` answers 200.
- `user_token(secret, name)`: a per-user token signed with the server's JWT secret, as the
  server's own `_generate_presigned_token` does (root-minted tokens inherit root's admin role,
  HYPHA.md pitfall 3, so they are no user identities); no email (the server rejects test
  domains).
- `AttachProcess`: `python -m kerneld hypha ...` against one daemon, its output in a log file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from _daemon import Daemon

ROOT = Path(__file__).resolve().parents[2]
HYPHA_PYTHON = ROOT / ".venv-hypha" / "bin" / "python"
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
FLEET = "kerneld-fleet"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def user_token(secret: str, user: str, expires_in: int = 3600) -> str:
    """An HS256 JWT for user `user` in its own workspace `ws-user-<user>`."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"iss": "https://amun.ai/", "aud": "https://amun-ai.eu.auth0.com/api/v2/",
               "sub": user, "iat": now, "exp": now + expires_in,
               "scope": f"ws:ws-user-{user}#a wid:ws-user-{user}",
               "gty": "client-credentials", "https://amun.ai/roles": []}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(sig)}"


class HyphaServer:
    def __init__(self) -> None:
        if not HYPHA_PYTHON.exists():
            raise RuntimeError(f"{HYPHA_PYTHON} is missing: run scripts/setup-test-envs.sh")
        self.dir = Path(tempfile.mkdtemp(prefix="kd-hypha-"))
        (self.dir / "tmp").mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root_token = secrets.token_hex(32)
        self.jwt_secret = secrets.token_hex(32)
        self._log = open(self.dir / "server.log", "a+")  # noqa: SIM115
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "TMPDIR": str(self.dir / "tmp"), "HYPHA_LOGLEVEL": "WARNING",
               "HYPHA_JWT_SECRET": self.jwt_secret, "HYPHA_ROOT_TOKEN": self.root_token}
        return subprocess.Popen(
            [str(HYPHA_PYTHON), "-m", "hypha.server", "--host=127.0.0.1",
             f"--port={self.port}", "--from-env",
             f"--database-uri=sqlite+aiosqlite:///{self.dir / 'hypha.db'}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(self.dir))

    def wait_ready(self, timeout: float = 60.0) -> HyphaServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hypha server exited:\n{self.log}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/readiness", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"hypha server not ready in {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        return (self.dir / "server.log").read_text()

    def token(self, user: str) -> str:
        return user_token(self.jwt_secret, user)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> HyphaServer:
        """Stop and start again on the same port, secrets and database."""
        self.stop()
        self.proc = self._start()
        return self.wait_ready()

    def close(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


OPERATOR = "kerneld-ops"   # the fleet workspace's non-admin owner, as docs/hypha.md deploys


async def fleet_token(server: HyphaServer) -> str:
    """docs/hypha.md's recipe: root creates the fleet's workspace owned by a non-admin
    operator, who mints the hosts' read_write token (a root-minted one would carry root's
    admin role, HYPHA.md pitfall 3)."""
    from hypha_rpc import connect_to_server
    root = await connect_to_server({"server_url": server.url, "token": server.root_token})
    try:
        await root.create_workspace({"id": FLEET, "name": FLEET, "persistent": True,
                                     "owners": [OPERATOR], "description": "kerneld hosts"},
                                    overwrite=True)
    finally:
        await root.disconnect()
    operator = await connect_to_server({"server_url": server.url,
                                        "token": server.token(OPERATOR)})
    try:
        return str(await operator.generate_token({"workspace": FLEET,
                                                  "permission": "read_write",
                                                  "expires_in": 3600 * 4}))
    finally:
        await operator.disconnect()


class AttachProcess:
    """`kerneld hypha` for one daemon (`address`) as client `client_id`."""

    def __init__(self, server: HyphaServer, token: str, address: str, client_id: str,
                 env: dict[str, str] | None = None) -> None:
        self.client_id = client_id
        self.dir = Path(tempfile.mkdtemp(prefix="kd-attach-"))
        self.log_path = self.dir / "attach.log"
        self._log = open(self.log_path, "w+")  # noqa: SIM115
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELD_")}
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "kerneld", "hypha", "--server-url", server.url,
             "--workspace", FLEET, "--token", token, "--client-id", client_id,
             "--address", address],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT))

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"kerneld hypha exited {self.proc.returncode}:\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} from kerneld hypha in {timeout} s:\n{self.log}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def error_text(exc: BaseException) -> str:
    """The `Type: message` lines of a RemoteException (HYPHA.md §3: the type is lost)."""
    return str(exc)


def http_call(url: str, token: str, body: dict[str, Any] | None = None,
              timeout: float = 30.0) -> tuple[int, Any]:
    """POST a JSON body to a Hypha HTTP service endpoint; (status, decoded JSON)."""
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# ====================================================================== the fleet of the tests

CONFINED = """
[daemon]
shutdown_grace = 1

[runtime]
preload = []
"""
# short enough for the tests to see them act
ATTACH_ENV = {"KERNELD_HYPHA_STREAM_IDLE_TIMEOUT": "2",
              "KERNELD_HYPHA_MAX_KERNELS_PER_WORKSPACE": "3",
              "KERNELD_HYPHA_MAX_EXECUTIONS_PER_WORKSPACE": "3",
              "KERNELD_HYPHA_MAX_KERNELS": "5",
              "KERNELD_HYPHA_RESULTS_TTL": "30"}



@dataclass
class Fleet:
    server: HyphaServer
    token: str
    daemons: dict[str, Daemon] = field(default_factory=dict)
    attached: dict[str, AttachProcess] = field(default_factory=dict)
    retired: list[Daemon] = field(default_factory=list)   # closed last (their dirs hold
                                                          # the sockets of their successors)

    def attach(self, name: str) -> AttachProcess:
        proc = AttachProcess(self.server, self.token, self.daemons[name].address, name,
                             env=ATTACH_ENV)
        self.attached[name] = proc
        return proc

    @contextlib.asynccontextmanager
    async def user(self, name: str) -> AsyncIterator[Any]:
        from hypha_rpc import connect_to_server
        server = await connect_to_server({"server_url": self.server.url,
                                          "token": self.server.token(name),
                                          "method_timeout": 10})
        try:
            yield server
        finally:
            with contextlib.suppress(Exception):
                await server.disconnect()

    async def instances(self, user: Any) -> list[str]:
        services = await user.list_services({"workspace": FLEET, "service_id": "kerneld"})
        return sorted(s["id"] for s in services)

    async def wait_instances(self, user: Any, expected: list[str], timeout: float) -> float:
        """Seconds until the listing is `expected`."""
        t0 = time.monotonic()
        while True:
            seen = await self.instances(user)
            if seen == sorted(expected):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                logs = "\n".join(f"--- {name}:\n{proc.log[-3000:]}"
                                 for name, proc in self.attached.items())
                raise AssertionError(f"instances {seen}, expected {expected}\n{logs}")
            await asyncio.sleep(0.1)


def instance(name: str) -> str:
    return f"{FLEET}/{name}:kerneld"


def skip_unconfined() -> pytest.MarkDecorator:
    from tests._host import sandbox_missing
    return pytest.mark.skipif(sandbox_missing() is not None, reason=str(sandbox_missing()))
