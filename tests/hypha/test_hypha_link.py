"""The attach process against a daemon or a Hypha server that stops answering: a frozen
(SIGSTOPped) real daemon fails the requests waiting on it as soon as the link is marked down,
even while a slow registration callback runs; a `kerneld hypha` whose Hypha server accepts
the connection and never answers still stops at once on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from _daemon import Daemon
from _fleet import CONFINED, PYTHON, ROOT

from kerneld.errors import DaemonUnavailable
from kerneld.hypha import link as link_module
from kerneld.hypha.link import DaemonLink


async def test_a_frozen_daemon_fails_pending_requests_once_marked_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "STATUS_DEADLINE", 0.3)   # 3 strikes in ~1.2 s
    daemon = Daemon(CONFINED).wait_ready()
    link = DaemonLink(daemon.address, "frozen-host", interval=0.1)
    told: list[bool] = []

    async def slow_registration(up: bool) -> None:   # a Hypha server that takes its time
        told.append(up)
        await asyncio.sleep(30)

    try:
        await link.start()
        assert link.up
        link.on_change = slow_registration
        daemon.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        pending = asyncio.ensure_future(link.client.list_kernels())
        with pytest.raises(DaemonUnavailable):
            await asyncio.wait_for(pending, 6.0)   # not the client's 30 s request deadline
        took = time.monotonic() - t0
        assert not link.up and told == [False] and took < 6.0, (took, told)
        assert "frozen-host" in str(link.unavailable())
    finally:
        daemon.signal(signal.SIGCONT)
        await link.close()
        daemon.close()


def test_sigterm_while_connecting_to_a_silent_hypha_server_stops_at_once(
        tmp_path: Path) -> None:
    with socket.socket() as silent:    # accepts TCP connections, never answers a handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        log = tmp_path / "attach.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", "kerneld", "hypha", "--server-url", url, "--workspace", "fleet",
                 "--token", "t", "--client-id", "silent-host",
                 "--address", f"ipc://{tmp_path / 'none.sock'}"],
                stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
            try:
                deadline = time.monotonic() + 30
                while "daemon not answering" not in log.read_text():   # then it connects
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.05)
                time.sleep(1.0)                        # inside connect_to_server by now
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                assert proc.wait(5) == 0, log.read_text()
                assert time.monotonic() - t0 < 5
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
