"""The daemon with its default configuration (confine = true), and crashes under it.

Kernels here are real confined workers (own uid, namespaces, Landlock, seccomp), so these tests
need root and the sandbox features; they are skipped, by probing, where the host lacks them.
"""

from __future__ import annotations

import ast
import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from _daemon import Daemon, wait_gone

import kerneld
from tests._host import sandbox_missing

CONFINED = """
[daemon]
shutdown_grace = 1

[runtime]
preload = []
"""


pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(sandbox_missing() is not None,
                                 reason=str(sandbox_missing()))]


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(CONFINED)
    try:
        yield d.wait_ready()
    finally:
        d.close()


def test_confined_kernels_through_the_daemon(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        assert client.status()["confine"] is True
        kid = client.create_kernel(env={"ONLY": "this"})
        res = client.execute(kid, "import os; (os.getuid(), os.environ.get('ONLY'), "
                                  "os.path.exists('/etc/shadow'))")
        assert res.success, res.error
        uid, only, shadow = ast.literal_eval(res.result["data"]["text/plain"])
        assert uid != 0 and only == "this" and shadow is False
        client.destroy_kernel(kid)


def test_worker_and_zygote_crashes_do_not_take_the_daemon_down(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        kid = client.create_kernel()
        pid = client.get_kernel(kid).info["pid"]
        died = []
        client.on_kernel_event(kid, "kernel_died", died.append)
        stream = client.execute_stream(kid, "import time; time.sleep(30)")
        events = iter(stream)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        list(events)
        assert stream.result is not None and stream.result.error["ename"] == "KernelDied"
        deadline = time.monotonic() + 5
        while not died and time.monotonic() < deadline:
            time.sleep(0.01)
        assert died and died[0].data["kernel_id"] == kid

        zygote = next(p for p in psutil.Process(daemon.pid).children()
                      if "kerneld.runtime.zygote" in " ".join(p.cmdline()))
        zygote.kill()
        zygote.wait(5)
        time.sleep(0.2)
        fresh = client.create_kernel()  # a new zygote is started on demand
        assert client.execute(fresh, "1+1").success
        assert client.status()["status"] == "running"


def test_sigterm_leaves_no_confined_process(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        kid = client.create_kernel()
        client.create_kernel()
        assert client.execute(kid, "1").success
    tree = daemon.tree()
    assert len(tree) >= 4
    start = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(5) == 0
    assert time.monotonic() - start < 3
    assert not wait_gone(tree, 1.0)
    assert not daemon.socket_path.exists()


def test_sigkill_leaves_no_confined_orphans(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        for _ in range(2):
            client.create_kernel()
    tree = daemon.tree()
    assert len(tree) >= 4
    daemon.signal(signal.SIGKILL)
    daemon.proc.wait(5)
    assert not wait_gone(tree[1:], 1.5)
