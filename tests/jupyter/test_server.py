"""Jupyter Server 2.21 and Kernel Gateway 3.0 drive a kerneld kernel over REST and WebSocket.

This is kerneld's HTTP + WebSocket API for anyone who wants one: a stock Jupyter Server (or
Kernel Gateway) started on 127.0.0.1 with a token, JUPYTER_PATH pointing at the installed
`kerneld-default` kernelspec, nothing patched. Each server runs from `.venv-clients` (the
side environment of the Jupyter clients) as a real process; the test speaks plain HTTP to its
REST API and the Jupyter WebSocket protocol (JSON text frames, the default when no
subprotocol is asked for) to `/api/kernels/<id>/channels`, as JupyterLab's frontend does.

What must hold, for both servers: the kernel starts over REST (and the daemon lists one
kernel with the `default` profile), executes over the WebSocket (stream and result), a REST
interrupt ends `time.sleep(30)` with KeyboardInterrupt in under 2 s and keeps the state, a
REST restart resets the state (seen from a new WebSocket, as JupyterLab reconnects after a
restart, and from the WebSocket of before the restart once its IOPub is live again), and
DELETE leaves no kernel in the daemon and no kernel process (the adapters of before and
after the restart). The WebSocket client is tornado's (a dependency of jupyter_client and
ipykernel in the daemon's dev environment), so the test itself runs in `.venv`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / ".venv-clients" / "bin"

pytestmark = [pytest.mark.timeout(120)]


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Channels:
    """One kernel WebSocket (`/api/kernels/<id>/channels`), used synchronously: the Jupyter
    messages of the legacy JSON framing, each with its `channel`."""

    def __init__(self, url: str, token: str) -> None:
        self.loop = asyncio.new_event_loop()
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
        self.conn: WebSocketClientConnection = self._run(lambda: websocket_connect(request), 15)
        self.session = uuid.uuid4().hex
        self.seen: list[dict[str, Any]] = []   # every message received, for failure messages

    def send(self, msg_type: str, content: dict[str, Any], channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": self.session,
                  "username": "test", "version": "5.3",
                  "date": dt.datetime.now(dt.UTC).isoformat()}
        frame = json.dumps({"header": header, "parent_header": {}, "metadata": {},
                            "content": content, "buffers": [], "channel": channel})
        self._run(lambda: self.conn.write_message(frame), 15)
        return msg_id

    def _run(self, make: Callable[[], Any], timeout: float) -> Any:
        """Await what `make()` returns, calling it inside this object's own loop (tornado
        binds its futures to the loop that is running when they are made)."""
        async def wait() -> Any:
            return await asyncio.wait_for(make(), timeout)
        return self.loop.run_until_complete(wait())

    def recv(self, timeout: float) -> dict[str, Any]:
        raw = self._run(self.conn.read_message, timeout)
        assert raw is not None, f"the server closed the WebSocket; seen: {self.seen[-5:]}"
        msg: dict[str, Any] = json.loads(raw)
        self.seen.append(msg)
        return msg

    def until(self, msg_id: str, done: Callable[[list[dict[str, Any]]], bool],
              timeout: float = 30.0) -> list[dict[str, Any]]:
        """Messages whose parent is `msg_id`, until `done(those so far)`."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while not done(got):
            left = deadline - time.monotonic()
            try:
                assert left > 0
                msg = self.recv(left)
            except (AssertionError, TimeoutError):
                raise AssertionError(
                    f"no end to {msg_id} in {timeout} s; its messages: {_brief(got)}; the last "
                    f"ones on the WebSocket: {_brief(self.seen[-12:])}") from None
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                got.append(msg)
        return got

    def nudge(self, timeout: float = 15.0) -> None:
        """What Jupyter Server does for a new connection: kernel_info_request until one's
        IOPub (busy/idle) arrives. After a restart the server's subscription to the new
        kernel's IOPub reconnects on its own, some time after the kernel answers on shell."""
        deadline = time.monotonic() + timeout
        while True:
            msg_id = self.send("kernel_info_request", {})
            try:
                self.until(msg_id, lambda got: any(m["channel"] == "iopub" for m in got), 0.5)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def execute(self, code: str, timeout: float = 30.0) -> tuple[dict[str, Any],
                                                                  list[dict[str, Any]]]:
        """(execute_reply content, the IOPub messages up to idle) of one execution."""
        msg_id = self.send("execute_request", {"code": code, "silent": False,
                                               "store_history": True, "user_expressions": {},
                                               "allow_stdin": False, "stop_on_error": True})
        got = self.until(msg_id, _reply_and_idle, timeout)
        reply = next(m for m in got if m["msg_type"] == "execute_reply")
        return reply["content"], [m for m in got if m["channel"] == "iopub"]

    def close(self) -> None:
        self.conn.close()
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()


def _brief(msgs: list[dict[str, Any]]) -> list[tuple[str, str, str, Any]]:
    """(channel, msg_type, parent msg_id, state or status) of each message, for failures."""
    return [(m.get("channel", ""), m.get("msg_type", ""),
             str(m.get("parent_header", {}).get("msg_id", ""))[:8],
             m.get("content", {}).get("execution_state") or m.get("content", {}).get("status"))
            for m in msgs]


def _reply_and_idle(got: list[dict[str, Any]]) -> bool:
    return any(m["msg_type"] == "execute_reply" for m in got) and any(
        m["msg_type"] == "status" and m["content"]["execution_state"] == "idle" for m in got)


def _text(outputs: list[dict[str, Any]], kind: str) -> str:
    if kind == "stream":
        return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
    return "".join(m["content"]["data"].get("text/plain", "") for m in outputs
                   if m["msg_type"] == kind)


class Server:
    """A `jupyter server`, `jupyter lab` or `jupyter kernelgateway` process of a test, on 127.0.0.1 with
    a token; `close()` ends it (and anything it left running)."""

    def __init__(self, kind: str, env: dict[str, str], kernel: str, workdir: Path) -> None:
        self.kind, self.port, self.token = kind, free_port(), secrets.token_hex(16)
        self.log_path = workdir / f"{kind}.log"
        extra_env: dict[str, str] = {}
        if kind in ("jupyter-server", "jupyter-lab"):  # JupyterLab is a Jupyter Server app
            root = workdir / "notebooks" if kind == "jupyter-lab" else workdir
            cmd = [str(CLIENTS / "jupyter"), kind.split("-")[1], "--no-browser",
                   "--allow-root", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}"]
            if kind == "jupyter-lab":
                extra_env = {"JUPYTERLAB_SETTINGS_DIR": str(workdir / "lab-settings"),
                             "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "lab-workspaces")}
        else:
            cmd = [str(CLIENTS / "jupyter"), "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1",
                   f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.port_retries=0",
                   f"--KernelGatewayApp.auth_token={self.token}",
                   f"--KernelGatewayApp.default_kernel_name={kernel}"]
        env = {**env, "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
               "JUPYTER_CONFIG_DIR": str(workdir / "config"), **extra_env}  # no ~/.jupyter
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url(path), data=data, method=method, headers={
            "Authorization": f"token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.kind} exited:\n{self.log}"
            try:
                if self.request("GET", "/api")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.kind} not answering in {timeout} s:\n{self.log}")

    def channels(self, kernel_id: str) -> Channels:
        return Channels(self.url(f"/api/kernels/{kernel_id}/channels", "ws"), self.token)

    def kernel_processes(self) -> list[psutil.Process]:
        """The kernel processes the server launched (the kerneld adapter, or ipykernel)."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update((p.pid, p) for p in kids)
        return kids

    def close(self) -> None:
        self.kernel_processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for proc in self.seen.values():
            try:
                proc.kill()   # psutil checks the identity (pid + start time)
            except psutil.Error:
                pass
        self._log.close()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["jupyter-server", "kernel-gateway"])
def server(request: pytest.FixtureRequest, jupyter_kernel: Any,
           tmp_path: Path) -> Iterator[Server]:
    s = Server(request.param, jupyter_kernel.env, jupyter_kernel.name, tmp_path)
    try:
        yield s.wait_ready()
    finally:
        s.close()
        # shown by pytest only when the test failed: what the server and the adapter logged
        print(f"--- {s.kind} log (warnings, errors, kerneld lines):")
        print("\n".join(line for line in s.log.splitlines()
                        if not line.startswith("[I ") or "kerneld" in line)[-6000:])
        print("--- daemon log (tail):\n" + jupyter_kernel.daemon.log[-4000:])


# ----------------------------------------------------------------------------- the test


def test_rest_start_websocket_execute_interrupt_restart_delete(
        server: Server, jupyter_kernel: Any) -> None:
    status, specs = server.request("GET", "/api/kernelspecs")
    assert status == 200, specs
    assert jupyter_kernel.name in specs["kernelspecs"], specs
    # Kernel Gateway starts its default_kernel_name for an empty body
    body = {"name": jupyter_kernel.name} if server.kind == "jupyter-server" else {}
    status, model = server.request("POST", "/api/kernels", body)
    assert status == 201, (status, model, server.log)
    kid = model["id"]
    assert model["name"] == jupyter_kernel.name
    jupyter_kernel.expect_daemon_kernels(1)
    adapters = server.kernel_processes()
    assert len(adapters) >= 1

    ch = server.channels(kid)
    try:
        reply, out = ch.execute("x = 41\nprint('hello from', 'the kernel')\nx + 1")
        assert reply["status"] == "ok", reply
        assert _text(out, "stream") == "hello from the kernel\n"
        assert _text(out, "execute_result") == "42"
        assert [m["content"]["execution_state"] for m in out
                if m["msg_type"] == "status"] == ["busy", "idle"]
        status, model = server.request("GET", f"/api/kernels/{kid}")
        assert status == 200 and model["execution_state"] == "idle", model

        # interrupt over REST while `time.sleep(30)` runs
        msg_id = ch.send("execute_request", {"code": "import time; time.sleep(30)",
                                             "silent": False, "store_history": True,
                                             "user_expressions": {}, "allow_stdin": False,
                                             "stop_on_error": True})
        ch.until(msg_id, lambda got: any(m["msg_type"] == "execute_input" for m in got), 15)
        time.sleep(0.3)   # the sleep has begun
        t0 = time.monotonic()
        status, _ = server.request("POST", f"/api/kernels/{kid}/interrupt")
        assert status == 204, (status, server.log)
        got = ch.until(msg_id, _reply_and_idle, 10)
        took = time.monotonic() - t0
        reply = next(m for m in got if m["msg_type"] == "execute_reply")["content"]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        print(f"{server.kind}: REST interrupt → execute_reply + idle: {took:.3f} s")
        assert took < 2.0, f"the interrupt took {took:.2f} s"
        reply, out = ch.execute("x")
        assert _text(out, "execute_result") == "41", (reply, out)   # state kept

        # restart over REST: the state is reset. JupyterLab then reconnects its WebSocket
        # (KernelConnection.restart → reconnect), so the server nudges the new kernel until
        # its IOPub is live; a new WebSocket does the same here.
        status, model = server.request("POST", f"/api/kernels/{kid}/restart")
        assert status == 200, (status, model, server.log)
        again = server.channels(kid)
        try:
            reply, out = again.execute("'x' in globals(), 6 * 7")
            assert reply["status"] == "ok", reply
            assert _text(out, "execute_result") == "(False, 42)", out
        finally:
            again.close()
        jupyter_kernel.expect_daemon_kernels(1)
        adapters += [p for p in server.kernel_processes() if p not in adapters]
        # the WebSocket of before the restart works too, once its IOPub is live again
        ch.nudge()
        reply, out = ch.execute("y = 5\ny * 2")
        assert reply["status"] == "ok" and _text(out, "execute_result") == "10", (reply, out)
    finally:
        ch.close()

    # delete: gone from the server, from the daemon, and its process has ended
    status, _ = server.request("DELETE", f"/api/kernels/{kid}")
    assert status == 204, (status, server.log)
    status, _ = server.request("GET", f"/api/kernels/{kid}")
    assert status == 404, status
    if server.kind == "jupyter-server":   # Kernel Gateway forbids listing unless configured
        status, models = server.request("GET", "/api/kernels")
        assert status == 200 and models == [], models
    jupyter_kernel.expect_daemon_kernels(0)
    _, alive = psutil.wait_procs(adapters, timeout=10)
    assert not alive, f"kernel processes still running after DELETE: {alive}"


