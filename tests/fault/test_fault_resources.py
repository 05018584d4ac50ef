"""Kernels that sabotage or exhaust what they run on: their own stdout/stderr, their disk,
their memory. The kernel fails with a clear error (or is reported dead with the reason); the
daemon and the other kernels carry on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from _daemon import Daemon
from _fault import CONFINED, confined, wait_until

import kerneld

pytestmark = confined


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(CONFINED)
    try:
        yield d.wait_ready()
    finally:
        d.close()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[kerneld.client.Client]:
    # every call is bounded: a kernel that hung would fail the test, not stall it
    with kerneld.connect(daemon.address, timeout=20) as c:
        yield c


def _text(res: object) -> str:
    return "".join(e.data.get("text", "") for e in res.outputs  # type: ignore[attr-defined]
                   if e.type == "stream")


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_closed_stdout_and_stderr_neither_hang_nor_spin(client: kerneld.client.Client) -> None:
    kid = client.create_kernel()
    pid = client.get_kernel(kid).info["pid"]
    res = client.execute(kid, "import os, sys\nos.close(1); os.close(2)\nprint('buffered')\n7")
    assert res.success and res.result["data"]["text/plain"] == "7"
    assert _text(res) == "buffered\n"  # written once the cell ended and fd 1 was put back
    # idle afterwards: the output pump does not spin on the closed pipes
    before = _cpu_seconds(pid)
    time.sleep(0.5)
    idle = _cpu_seconds(pid) - before
    # a write to a closed fd within the cell is a clear error (stderr is line-buffered)
    res = client.execute(kid, "os.close(2)\nprint('to stderr', file=sys.stderr)")
    assert not res.success and res.error["ename"] == "OSError"
    assert "Bad file descriptor" in res.error["evalue"]
    res = client.execute(kid, "print('back'); print('err', file=sys.stderr); 8")
    assert res.success and "back\n" in _text(res) and "err\n" in _text(res)
    assert client.execute(kid, "f = open('/tmp/f', 'w'); f.fileno() > 2").result[
        "data"]["text/plain"] == "True"  # fd 1 and 2 are taken again, by the pipes
    # positive control for the idle measurement: a busy cell does show up
    before = _cpu_seconds(pid)
    res = client.execute(kid, "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass")
    assert res.success
    busy = _cpu_seconds(pid) - before
    assert idle < 0.05 and busy >= 0.25, (idle, busy)
    client.destroy_kernel(kid)


def test_a_full_disk_is_an_oserror_in_the_cell(client: kerneld.client.Client) -> None:
    kid = client.create_kernel(limits={"disk": "4MiB"})  # its /tmp: a 4 MiB tmpfs
    other = client.create_kernel()
    ok = client.execute(kid, "open('/tmp/small', 'wb').write(b'x' * (1 << 20))")
    assert ok.success and ok.result["data"]["text/plain"] == str(1 << 20)  # positive control
    res = client.execute(kid, "with open('/tmp/big', 'wb') as f:\n    f.write(b'x' * (8 << 20))")
    assert not res.success and res.error["ename"] == "OSError"
    assert "No space left on device" in res.error["evalue"]
    res = client.execute(kid, "import os; os.remove('/tmp/big'); os.path.getsize('/tmp/small')")
    assert res.success and res.result["data"]["text/plain"] == str(1 << 20)
    assert client.execute(other, "1+1").success
    assert client.status()["status"] == "running"
    client.destroy_kernel(kid)
    client.destroy_kernel(other)


def test_out_of_memory_kills_that_kernel_with_the_reason(client: kerneld.client.Client) -> None:
    kid = client.create_kernel(limits={"memory": "128MiB"})
    other = client.create_kernel()
    assert client.execute(other, "y = 2").success
    died: list[object] = []
    client.on_kernel_event(kid, "kernel_died", died.append)
    ok = client.execute(kid, "a = b'x' * (32 << 20); len(a)")  # positive control: fits
    assert ok.success and ok.result["data"]["text/plain"] == str(32 << 20)
    res = client.execute(kid, "b = b'x' * (512 << 20)")
    assert not res.success and res.error["ename"] == "KernelDied"
    assert "out-of-memory" in res.error["evalue"]
    wait_until(lambda: died, 5)
    assert "out-of-memory" in died[0].data["reason"]  # type: ignore[attr-defined]
    assert {k["id"]: k["status"] for k in client.list_kernels()}[kid] == "dead"
    assert client.execute(other, "y * 21").result["data"]["text/plain"] == "42"
    assert client.status()["status"] == "running"
    client.destroy_kernel(kid)
    client.destroy_kernel(other)
