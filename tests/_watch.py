"""A bystander client: pings a daemon from its own process while a test hammers it.

`Watch(address, pid)` starts `python tests/_watch.py ADDRESS PID INTERVAL` in a separate
process (so the test process's own work and GIL do not count in the latencies it measures). It
connects its own DEALER socket, sends `ping` every INTERVAL seconds and times each round trip;
every 10th ping it also reads the daemon's RSS and open file descriptors from /proc. When its
stdin closes it prints one JSON line of figures and exits: `Watch.stop()` returns them.

Latencies are wall-clock round trips, measured with `time.perf_counter`: slow pings keep their
wall-clock time (`time.time()`), so a test can say what it was doing then.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable
REPLY_TIMEOUT = 5.0


def daemon_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def daemon_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class NotifyDrain(threading.Thread):
    """Reads a test daemon's NOTIFY_SOCKET for as long as it lives, as systemd would.

    The daemon's sd_notify `sendto` blocks once the socket holds
    /proc/sys/net/unix/max_dgram_qlen unread datagrams (10 here): a daemon whose notify
    socket nobody reads freezes after ~10 STATUS= lines, i.e. ~50 s (tests/integration's
    `Daemon` reads it only while a test waits for a line)."""

    def __init__(self, daemon: Any) -> None:
        super().__init__(name="notify-drain", daemon=True)
        self.target, self.running = daemon, True
        self.start()

    def run(self) -> None:
        while self.running and self.target.proc.poll() is None:
            try:
                self.target.read_notify(0.2)
            except OSError:
                return

    def stop(self) -> None:
        self.running = False
        self.join(2)


class Watch:
    """The pinger process; `stop()` ends it and returns its figures."""

    def __init__(self, address: str, pid: int, *, interval: float = 0.01,
                 limit_ms: float = 100.0) -> None:
        self.limit_ms = limit_ms
        self.proc = subprocess.Popen(
            [PYTHON, __file__, address, str(pid), str(interval), str(limit_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()  # its first ping answered
        if ready.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"the pinger did not start: {ready!r}")
        self.figures: dict[str, Any] | None = None

    def stop(self) -> dict[str, Any]:
        if self.figures is None:
            out, _ = self.proc.communicate(input="", timeout=30)
            lines = out.strip().splitlines()
            self.figures = json.loads(lines[-1]) if lines else {"error": "no output"}
        return self.figures


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main(address: str, pid: int, interval: float, limit_ms: float) -> None:
    import zmq

    from kerneld import protocol as p

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    rtts: list[float] = []
    slow: list[tuple[float, float]] = []
    timeouts = 0
    rss: list[int] = []
    fds: list[int] = []
    n = 0
    started = False
    while True:
        if (started and select.select([sys.stdin], [], [], interval)[0]
                and not sys.stdin.read(1)):
            break
        n += 1
        rid = f"watch-{n}"
        wall, t0 = time.time(), time.perf_counter()
        sock.send(p.encode(p.Request(p.VERSION, rid, "ping", {})))
        answered = False
        while not answered:
            left = REPLY_TIMEOUT - (time.perf_counter() - t0)
            if left <= 0 or not poller.poll(left * 1000):
                break
            msg = p.to_client_decoder.decode(sock.recv())
            answered = isinstance(msg, p.Reply) and msg.id == rid  # else a late reply
        ms = (time.perf_counter() - t0) * 1000
        if not answered:
            timeouts += 1
            slow.append((wall, ms))
        elif started:
            rtts.append(ms)
            if ms > limit_ms:
                slow.append((wall, ms))
        if not started:
            if not answered:
                continue
            started = True
            print("ready", flush=True)
        if n % 10 == 1:
            r, f = daemon_rss(pid), daemon_fds(pid)
            if r is not None:
                rss.append(r)
            if f is not None:
                fds.append(f)
    rtts.sort()
    slow.sort(key=lambda s: -s[1])
    print(json.dumps({
        "pings": len(rtts), "timeouts": timeouts, "limit_ms": limit_ms,
        "over_limit": sum(1 for ms in rtts if ms > limit_ms),
        "max_ms": round(rtts[-1], 3) if rtts else None,
        "p50_ms": round(_percentile(rtts, 0.5), 3), "p99_ms": round(_percentile(rtts, 0.99), 3),
        "p999_ms": round(_percentile(rtts, 0.999), 3),
        "slow": [[round(w, 3), round(ms, 1)] for w, ms in slow[:20]],
        "rss_first": rss[0] if rss else None, "rss_max": max(rss) if rss else None,
        "rss_last": rss[-1] if rss else None,
        "fds_first": fds[0] if fds else None, "fds_max": max(fds) if fds else None,
    }), flush=True)
    sock.close()
    ctx.term()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
