"""Killing the daemon's processes: a worker, the zygote, the daemon itself (SIGKILL, SIGTERM).

A kernel lives as long as the daemon, not as long as the zygote that forked it: kerneld-init
watches a pidfd of the daemon, and the daemon (a child subreaper) adopts and reaps what a dead
zygote leaves. Counts are strict: a process is gone once reaped or a zombie.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
from _daemon import Daemon
from _fault import (
    CONFINED,
    POOLED,
    confined,
    init_of,
    parent_of,
    running,
    trials,
    wait_until,
    zombies,
    zygote_of,
)

import kerneld
from tests._proc import process_state

pytestmark = confined


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(CONFINED)
    try:
        yield d.wait_ready()
    finally:
        d.close()


def _in_background(client: kerneld.client.Client, kid: str, code: str) -> dict[str, object]:
    """Run `code` on `kid` from a thread; returns the box its result (or error) lands in, once
    the execution is running."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = client.execute(kid, code)
        except Exception as exc:  # noqa: BLE001  (the test looks at it)
            box["error"] = exc

    box["thread"] = thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: client.get_ongoing_execution_count(kid) == 1 or len(box) > 1, 5)
    return box


def _kernel_pids(client: kerneld.client.Client, kid: str) -> tuple[int, int]:
    worker = client.get_kernel(kid).info["pid"]
    return worker, init_of(worker)


def test_worker_sigkill_reports_that_kernel_dead_only(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address, timeout=30) as client:
        victim, other = client.create_kernel(), client.create_kernel()
        assert client.execute(other, "x = 41").success
        worker, init = _kernel_pids(client, victim)
        died: list[object] = []
        client.on_kernel_event(victim, "kernel_died", died.append)
        box = _in_background(client, victim, "import time; time.sleep(30)")
        os.kill(worker, signal.SIGKILL)
        box["thread"].join(10)  # type: ignore[attr-defined]
        error = box["result"].error  # type: ignore[attr-defined]
        assert error["ename"] == "KernelDied" and "killed by SIGKILL" in error["evalue"]
        wait_until(lambda: died, 5)
        data = died[0].data  # type: ignore[attr-defined]
        assert (data["kernel_id"], data["signal"]) == (victim, 9)
        # its init (the namespace) goes too, reaped by the zygote: no zombie either
        wait_until(lambda: process_state(init) is None and process_state(worker) is None, 2)
        states = {k["id"]: k["status"] for k in client.list_kernels()}
        assert states == {victim: "dead", other: "idle"}
        # positive control: the other kernel kept its state and runs
        res = client.execute(other, "x + 1")
        assert res.success and res.result["data"]["text/plain"] == "42"
        assert client.status()["status"] == "running"


def _stale_ipython_dirs() -> tuple[str, str]:
    """One IPYTHONDIR named after a pid that is gone (to be swept) and one after a live pid
    (this test's: to be kept, the positive control)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"/tmp/kerneld-ipython-{dead.pid}-faulttest"
    live = f"/tmp/kerneld-ipython-{os.getpid()}-faulttest"
    for path in (stale, live):
        os.makedirs(path, exist_ok=True)
    return stale, live


def test_zygote_sigkill_spares_kernels_and_the_pool_refills() -> None:
    d = Daemon(POOLED)
    stale, live = _stale_ipython_dirs()
    try:
        d.wait_ready()
        with kerneld.connect(d.address, timeout=30) as client:
            wait_until(lambda: client.get_pool_stats()["default"]["idle"] == 2, 30, 0.05)
            pooled = client.create_kernel()  # from the pool
            fresh = client.create_kernel(limits={"memory": "256MiB"})  # forked for it
            kernels = {kid: _kernel_pids(client, kid) for kid in (pooled, fresh)}
            for n, kid in enumerate(kernels):
                assert client.execute(kid, f"x = {40 + n}").success
            boxes = {kid: _in_background(client, kid, "import time; time.sleep(1.0); x + 1")
                     for kid in kernels}
            zygote = zygote_of(d)
            zygote.kill()
            zygote.wait(5)
            # the cells that were running finished, with their kernels' state
            for n, kid in enumerate(kernels):
                boxes[kid]["thread"].join(10)  # type: ignore[attr-defined]
                res = boxes[kid]["result"]
                assert res.success, res.error  # type: ignore[attr-defined]
                assert res.result["data"]["text/plain"] == str(41 + n)  # type: ignore[attr-defined]
                assert client.execute(kid, "x").result["data"]["text/plain"] == str(40 + n)
            # adopted: the daemon (a child subreaper) is now the parent of workers and inits
            for worker, init in kernels.values():
                assert parent_of(worker) == d.pid and parent_of(init) == d.pid
            # creates work (from the pool: its idle workers outlived the zygote too), and the
            # pool refills through a new zygote
            new = client.create_kernel()
            assert client.execute(new, "1+1").result["data"]["text/plain"] == "2"
            assert client.get_pool_stats()["default"]["served"] == 2
            wait_until(lambda: client.get_pool_stats()["default"]["idle"] == 2, 30, 0.05)
            assert zygote_of(d).pid != zygote.pid
            # the dead zygotes' IPYTHONDIRs are swept, a live pid's is kept
            assert not os.path.exists(stale) and os.path.isdir(live)
            # an adopted kernel that dies is reported with its real exit status
            died: list[object] = []
            client.on_kernel_event(fresh, "kernel_died", died.append)
            os.kill(kernels[fresh][0], signal.SIGKILL)
            wait_until(lambda: died, 5)
            assert died[0].data["signal"] == 9  # type: ignore[attr-defined]
            assert died[0].data["reason"] == "killed by SIGKILL"  # type: ignore[attr-defined]
            # destroying an adopted kernel leaves neither process nor zombie
            client.destroy_kernel(pooled)
            everything = [pid for pair in kernels.values() for pid in pair]
            wait_until(lambda: all(process_state(pid) is None for pid in everything), 2)
            assert client.status()["status"] == "running"
    finally:
        d.close()
        os.rmdir(live)


def test_a_zygote_killed_while_warming_up_leaves_its_ipython_dir_to_the_next() -> None:
    d = Daemon(CONFINED)
    try:
        d.wait_ready()
        with kerneld.connect(d.address, timeout=30) as client:
            first = zygote_of(d)
            first.kill()
            first.wait(5)
            creating = threading.Thread(target=lambda: _create_ignoring_errors(client))
            creating.start()  # starts the next zygote
            found: list[str] = []

            def warming() -> bool:
                try:
                    pid = zygote_of(d).pid
                except (AssertionError, psutil.Error):
                    return False
                found[:] = glob.glob(f"/tmp/kerneld-ipython-{pid}-*")
                return pid != first.pid and bool(found)

            wait_until(warming, 10, 0.001)
            zygote_of(d).kill()
            creating.join(30)
            assert os.path.isdir(found[0])  # positive control: a real leftover
            kid = client.create_kernel()  # the third zygote sweeps it before it starts
            assert client.execute(kid, "1+1").success
            assert not os.path.exists(found[0])
    finally:
        d.close()


def _create_ignoring_errors(client: kerneld.client.Client) -> None:
    try:
        client.create_kernel()
    except kerneld.KernelError:
        pass  # its zygote was killed under it


def _start_kernels(client: kerneld.client.Client) -> tuple[list[str], list[int]]:
    """Two kernels, the first busy: their ids, and their workers' and inits' pids."""
    kids = [client.create_kernel(), client.create_kernel()]
    _in_background(client, kids[0], "import time; time.sleep(30)")
    return kids, [pid for kid in kids for pid in _kernel_pids(client, kid)]


def _sigkill_trial(kill_zygote_first: bool) -> tuple[float, int, list[str]]:
    """(seconds until no worker or init runs, zombies among them after 500 ms, their names)."""
    d = Daemon(CONFINED)
    try:
        d.wait_ready()
        with kerneld.connect(d.address, timeout=30) as client:
            kids, pids = _start_kernels(client)
            assert len(running(pids)) == 4  # positive control: all four run
            if kill_zygote_first:
                zygote = zygote_of(d)
                zygote.kill()
                zygote.wait(5)
                assert client.execute(kids[1], "1+1").success  # the kernels outlived it
                assert len(running(pids)) == 4
            d.signal(signal.SIGKILL)
            d.proc.wait(5)
            gone = wait_until(lambda: not running(pids), 5, 0.002)
            time.sleep(max(0.0, 0.5 - gone))
            left = zombies(pids)
            names = [psutil.Process(pid).name() for pid in left if process_state(pid)]
            return gone, len(left), names
    finally:
        d.close()


def test_daemon_sigkill_leaves_no_kernel_process() -> None:
    """The zygote, on its manager's death, SIGKILLs and reaps every worker and init: none
    waits for the host's PID 1 (which reaps late on some hosts: 1.2-2 s measured here)."""
    figures = [_sigkill_trial(kill_zygote_first=False) for _ in range(trials(3))]
    print("daemon SIGKILL: seconds until no worker/init ran:",
          [round(g, 3) for g, _, _ in figures], "zombies after 500 ms:",
          [z for _, z, _ in figures])
    assert all(gone < 0.5 for gone, _, _ in figures), figures
    assert all(z == 0 for _, z, _ in figures), figures  # the zygote reaped them all


def test_daemon_sigkill_after_a_zygote_death_still_ends_the_kernels() -> None:
    """Kernels adopted from a dead zygote: their inits see the daemon's pidfd and exit, which
    ends each namespace. Their last exit is then the host PID 1's to reap (zombies here)."""
    figures = [_sigkill_trial(kill_zygote_first=True) for _ in range(trials(1))]
    print("daemon SIGKILL after a zygote kill: seconds until no worker/init ran:",
          [round(g, 3) for g, _, _ in figures], "zombies after 500 ms:",
          [(z, names) for _, z, names in figures])
    assert all(gone < 2.5 for gone, _, _ in figures), figures


def test_daemon_sigterm_exits_cleanly_and_leaves_no_process(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address, timeout=30) as client:
        _, pids = _start_kernels(client)
    tree = [proc.pid for proc in daemon.tree()[1:]]
    assert len(running(pids)) == 4 and len(tree) >= 5  # positive control
    start = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(5) == 0
    assert time.monotonic() - start < 1 + 2
    # strict: everything was reaped (the zygote by the daemon, the rest by the zygote)
    wait_until(lambda: all(process_state(pid) is None for pid in tree), 1)
    assert not daemon.socket_path.exists()
    assert "Traceback" not in daemon.log
