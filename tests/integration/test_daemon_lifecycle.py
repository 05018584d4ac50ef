"""Daemons that end: SIGTERM's shutdown ladder, SIGKILL without orphans, SIGHUP reloads,
sd_notify, refusing to start, and CURVE-authenticated tcp. Each test owns its daemon."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import zmq
import zmq.auth
from _daemon import DEV_CONFIG, PYTHON, Daemon, alive, cli, free_port, wait_gone

import kerneld
from kerneld import DaemonUnavailable, LimitExceeded


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(DEV_CONFIG.replace("shutdown_grace = 2", "shutdown_grace = 1"))
    try:
        yield d.wait_ready()
    finally:
        d.close()


def _cmdlines(procs: list[object]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(" ".join(proc.cmdline()))  # type: ignore[attr-defined]
        except psutil.Error:
            out.append("?")
    return out


# ---------------------------------------------------------------------- SIGTERM


def test_sigterm_ends_executions_and_leaves_nothing(daemon: Daemon) -> None:
    client = kerneld.connect(daemon.address)
    kids = [client.create_kernel() for _ in range(3)]
    tree = daemon.tree()
    assert len(tree) >= 5  # daemon, zygote, three workers
    assert any("kerneld.runtime.zygote" in c for c in _cmdlines(tree))
    box: dict[str, object] = {}

    def run_forever() -> None:
        stream = client.execute_stream(kids[0], "import time\nprint('started', flush=True)\n"
                                                "while True: time.sleep(0.01)")
        box["events"] = list(stream)
        box["result"] = stream.result

    t = threading.Thread(target=run_forever)
    t.start()
    deadline = time.monotonic() + 10
    while client.get_ongoing_execution_count(kids[0]) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.proc.wait(10)
    elapsed = time.monotonic() - start
    assert code == 0, daemon.log
    assert elapsed < 1 + 2, f"shutdown took {elapsed:.2f} s (grace 1 s)"
    t.join(5)
    result = box["result"]
    assert result is not None and result.error["ename"] == "DaemonShutdown", box  # type: ignore[attr-defined]
    assert not daemon.socket_path.exists()
    assert list(daemon.socket_path.parent.iterdir()) == []  # the manager's worker dir too
    left = wait_gone(tree, 1.0)
    assert not left, _cmdlines(left)
    assert "STOPPING=1" in daemon.messages or daemon.wait_for_notify("STOPPING=1", 1)
    with pytest.raises(DaemonUnavailable):
        client.get_kernel_ids()
    client.close()


def test_sigterm_lets_running_executions_finish_within_the_grace(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        kid = client.create_kernel()
        box: dict[str, object] = {}

        def run() -> None:
            box["result"] = client.execute(kid, "import time; time.sleep(0.5); 'finished'")

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.2)
        daemon.signal(signal.SIGTERM)
        time.sleep(0.1)
        with pytest.raises(DaemonUnavailable, match="shutting down"):
            client.create_kernel()  # no new work once shutting down
        t.join(5)
        result = box["result"]
        assert result.success and result.result["data"]["text/plain"] == "'finished'"  # type: ignore[attr-defined]
        assert daemon.proc.wait(5) == 0


def test_second_signal_skips_the_grace() -> None:
    d = Daemon(DEV_CONFIG.replace("shutdown_grace = 2", "shutdown_grace = 30")).wait_ready()
    try:
        with kerneld.connect(d.address) as client:
            kid = client.create_kernel()
            stream = client.execute_stream(kid, "import time\nwhile True: time.sleep(0.01)")
            it = iter(stream)
            t = threading.Thread(target=lambda: list(it))
            t.start()
            while client.get_ongoing_execution_count(kid) == 0:
                time.sleep(0.01)
            start = time.monotonic()
            d.signal(signal.SIGTERM)
            time.sleep(0.3)
            assert d.proc.poll() is None  # waiting for the execution
            d.signal(signal.SIGINT)
            assert d.proc.wait(5) == 0
            assert time.monotonic() - start < 3
            t.join(5)
            assert stream.result is not None and stream.result.error["ename"] == "DaemonShutdown"
    finally:
        d.close()


# ---------------------------------------------------------------------- SIGKILL


def test_sigkill_leaves_no_orphans(daemon: Daemon) -> None:
    client = kerneld.connect(daemon.address)
    kid = client.create_kernel()
    client.create_kernel()
    tree = daemon.tree()
    assert len(tree) >= 4
    box: dict[str, BaseException] = {}

    def in_flight() -> None:
        try:
            client.execute(kid, "import time; time.sleep(30)")
        except BaseException as exc:  # noqa: BLE001  (the test inspects it)
            box["error"] = exc

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.3)
    daemon.signal(signal.SIGKILL)
    daemon.proc.wait(5)
    left = wait_gone(tree[1:], 1.5)
    assert not left, _cmdlines(left)
    t.join(5)
    assert isinstance(box.get("error"), DaemonUnavailable)  # the client did not hang
    client.close()


# ---------------------------------------------------------------------- SIGHUP


def test_sighup_reloads_and_a_failed_reload_keeps_the_old_config(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        first = client.create_kernel()
        daemon.config_path.write_text(DEV_CONFIG + "max_kernels = 1\n")
        daemon.signal(signal.SIGHUP)
        _wait_log(daemon, "reloaded config=")
        with pytest.raises(LimitExceeded, match="max_kernels = 1"):
            client.create_kernel()
        assert client.execute(first, "1").success  # running kernels carry on

        daemon.config_path.write_text(DEV_CONFIG + "max_kernels = -5\n")
        daemon.signal(signal.SIGHUP)
        _wait_log(daemon, "reload failed, keeping the old config")
        assert "kernels.max_kernels" in daemon.log
        with pytest.raises(LimitExceeded):
            client.create_kernel()

        profiles = daemon.dir / "profiles"
        profiles.mkdir()
        (profiles / "broken.toml").write_text("colour = 'blue'\n")
        daemon.config_path.write_text(DEV_CONFIG + f"\n[profiles]\ndirs = ['{profiles}']\n")
        daemon.signal(signal.SIGHUP)
        _wait_log(daemon, "broken.toml:colour")
        with pytest.raises(LimitExceeded):  # still the old config
            client.create_kernel()
        assert client.status()["status"] == "running"


def _wait_log(daemon: Daemon, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.log:
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{daemon.log}"
        time.sleep(0.02)


# ---------------------------------------------------------------------- sd_notify, startup


def test_watchdog_and_status_notifications() -> None:
    d = Daemon(env={"WATCHDOG_USEC": "200000"}).wait_ready()
    try:
        ready = [m for m in d.messages if m.startswith("STATUS=")]
        assert ready and "kernels=0" in ready[0] and "pool" in ready[0]
        deadline = time.monotonic() + 3
        pings = 0
        while pings < 3 and time.monotonic() < deadline:
            pings += sum(m == "WATCHDOG=1" for m in d.read_notify(0.3))
        assert pings >= 3
    finally:
        d.close()


def test_status_reads_the_same_before_and_after_a_reload() -> None:
    """Issue 16 item 14: STATUS= said `pool off` before a reload and `pool default=0/0(+0)`
    after one; one format, and `kerneld status` shows the same pool line."""
    d = Daemon().wait_ready()
    try:
        before = d.wait_for_notify("STATUS=")
        d.signal(signal.SIGHUP)
        _wait_log(d, "reloaded config=")
        deadline = time.monotonic() + 10
        while sum(m.startswith("STATUS=") for m in d.messages) < 2:
            assert time.monotonic() < deadline, d.messages
            d.read_notify(0.2)
        after = [m for m in d.messages if m.startswith("STATUS=")][-1]
        assert before == after and after.endswith("; pool off"), (before, after)
        with kerneld.connect(d.address) as client:
            assert client.status()["pool"] == "pool off"
    finally:
        d.close()


def test_refuses_a_second_daemon_on_a_live_socket(daemon: Daemon) -> None:
    proc = subprocess.run([PYTHON, "-m", "kerneld", "serve", "--address", daemon.address],
                          check=False, capture_output=True, text=True, timeout=30,
                          env={"KERNELD_KERNELS_CONFINE": "false", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "another process already listens" in proc.stderr
    with kerneld.connect(daemon.address) as client:  # the first one is untouched
        assert client.get_kernel_ids() == []


def test_refuses_tcp_without_curve_keys() -> None:
    proc = cli("serve", "--address", f"tcp://127.0.0.1:{free_port()}")
    assert proc.returncode == 78
    assert proc.stderr.count("\n") == 1
    assert "command line:daemon.address: listening on tcp needs CURVE" in proc.stderr


def test_bad_config_file_is_one_line_naming_file_and_key(tmp_path: object) -> None:
    import pathlib
    path = pathlib.Path(str(tmp_path)) / "bad.toml"
    path.write_text("[pool]\nsize = 'many'\n")
    proc = cli("serve", "--config", str(path))
    assert proc.returncode == 78 and proc.stderr.count("\n") == 1
    assert f"{path}:pool.size: expected an integer" in proc.stderr


# ---------------------------------------------------------------------- CURVE over tcp


def test_curve_tcp_authenticated_clients_only(tmp_path: object) -> None:
    import pathlib
    keys = pathlib.Path(str(tmp_path))
    server_public, server_secret = zmq.auth.create_certificates(keys, "server")
    client_public, client_secret = zmq.auth.create_certificates(keys, "client")
    _, stranger_secret = zmq.auth.create_certificates(keys, "stranger")
    port = free_port()
    allowed = zmq.auth.load_certificate(client_public)[0].decode()
    config = DEV_CONFIG.replace("[daemon]", f"""[daemon]
tcp_address = "tcp://127.0.0.1:{port}"
curve_secret_key_file = "{server_secret}"
allowed_client_keys = ["{allowed}"]""")
    d = Daemon(config).wait_ready()
    try:
        server_key = zmq.auth.load_certificate(server_public)[0]
        pub, sec = zmq.auth.load_certificate(client_secret)
        with kerneld.connect(f"tcp://127.0.0.1:{port}", server_key=server_key,
                             public_key=pub, secret_key=sec) as client:
            kid = client.create_kernel()
            assert client.execute(kid, "print('over curve')").outputs[0].data["text"] == (
                "over curve\n")
            client.destroy_kernel(kid)
        spub, ssec = zmq.auth.load_certificate(stranger_secret)
        with pytest.raises(DaemonUnavailable, match="rejected"):
            kerneld.connect(f"tcp://127.0.0.1:{port}", server_key=server_key,
                            public_key=spub, secret_key=ssec, connect_timeout=1.0)
        with pytest.raises(DaemonUnavailable):
            kerneld.connect(f"tcp://127.0.0.1:{port}", connect_timeout=1.0)  # no CURVE
        with kerneld.connect(d.address) as local:  # the ipc endpoint needs no keys
            assert local.get_kernel_ids() == []
        assert "curve client rejected" in d.log
        # allow the stranger too: a reload applies to new connections
        d.config_path.write_text(config.replace(f'["{allowed}"]', f'["{allowed}", "{spub.decode()}"]'))
        d.signal(signal.SIGHUP)
        _wait_log(d, "allowed CURVE client keys reloaded count=2")
        with kerneld.connect(f"tcp://127.0.0.1:{port}", server_key=server_key,
                             public_key=spub, secret_key=ssec, connect_timeout=2.0) as client:
            assert client.get_kernel_ids() == []
    finally:
        d.close()
    assert not alive(d.tree())
