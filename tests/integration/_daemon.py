"""Real `kerneld serve` processes on temporary endpoints, for the daemon's integration tests.

A `Daemon` runs `python -m kerneld serve --config FILE --address ipc://TMP/run/kerneld.sock`
with an abstract-namespace NOTIFY_SOCKET (as systemd would pass), so tests see READY=1, STATUS=,
WATCHDOG=1 and STOPPING=1 exactly as systemd would. The sandbox is being finished separately,
so the test config turns confinement off (`[kernels] confine = false`, a key documented as
"only for development/tests of the daemon itself").
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable

# The test daemons' only mount root: a directory of root's own (kernels mount directories made
# under it with tempfile.mkdtemp(dir=MOUNT_ROOT); /tmp itself is refused as a mount root's
# content would be world-writable and sticky).
MOUNT_ROOT = "/tmp/kerneld-test-mounts"
os.makedirs(MOUNT_ROOT, mode=0o755, exist_ok=True)

DEV_CONFIG = f"""
[daemon]
shutdown_grace = 2

[runtime]
preload = []

[kernels]
confine = false   # only for development/tests of the daemon itself
mount_roots = ["{MOUNT_ROOT}"]
"""


class Daemon:
    """One daemon process; `close()` always leaves nothing behind."""

    def __init__(self, config: str = DEV_CONFIG, *, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, address: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kd-"))
        self.socket_path = self.dir / "run" / "kerneld.sock"
        self.address = address or f"ipc://{self.socket_path}"
        self.config_path = self.dir / "kerneld.toml"
        self.config_path.write_text(config)
        self.log_path = self.dir / "daemon.log"
        self.notify_name = f"@kerneld-test-{uuid.uuid4().hex}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind("\0" + self.notify_name[1:])
        self.messages: list[str] = []
        self.seen: dict[int, psutil.Process] = {}  # every process tree() ever returned
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELD_")}
        full_env.update({"NOTIFY_SOCKET": self.notify_name, "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self._log = open(self.log_path, "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "kerneld", "serve", "--config", str(self.config_path),
             "--address", self.address, *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT))
        self.pid = self.proc.pid

    # ------------------------------------------------------------------ observation

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def read_notify(self, timeout: float) -> list[str]:
        self.notify.settimeout(timeout)
        try:
            data = self.notify.recv(65536).decode()
        except TimeoutError:
            return []
        new = data.split("\n")
        self.messages.extend(new)
        return new

    def wait_for_notify(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.messages:
            if line.startswith(prefix):
                return line
        while time.monotonic() < deadline:
            exited = self.proc.poll() is not None
            new = self.read_notify(0.01 if exited else 0.2)
            for line in new:
                if line.startswith(prefix):
                    return line
            if exited and not new:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log}")
        raise AssertionError(f"no {prefix} from the daemon in {timeout} s:\n{self.log}")

    def wait_ready(self, timeout: float = 60.0) -> Daemon:
        self.wait_for_notify("READY=1", timeout)
        return self

    def tree(self) -> list[psutil.Process]:
        """The daemon and every process under it (zygote, workers)."""
        try:
            me = psutil.Process(self.pid)
            tree = [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen.update((proc.pid, proc) for proc in tree)
        return tree

    # ------------------------------------------------------------------ ending

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def close(self) -> None:
        """Stop the daemon; then kill anything it ever had under it that is still alive
        (so a failing test never leaves orphans on the machine)."""
        self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for proc in alive(list(self.seen.values())):
            try:
                proc.kill()  # psutil checks the process identity (pid + start time)
            except psutil.Error:
                pass
        self.notify.close()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running. Dead but unreaped processes count as gone: zombies, and a kernel's
    init that has exited and waits in the kernel for its namespace's zombies to be reaped
    (it has no memory left: /proc/PID/statm reads all zeros). This machine's PID 1 does not
    reap orphans promptly; under systemd both vanish at once."""
    out = []
    for proc in processes:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{proc.pid}/statm") as f:
                if f.read().split()[0] == "0":
                    continue  # exited: its address space is gone
            out.append(proc)
        except (psutil.Error, OSError):
            pass
    return out


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = alive(processes)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = alive(left)
    return left


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, address: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m kerneld ARGS` and capture its output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELD_")}
    if address is not None:
        full_env["KERNELD_ADDRESS"] = address
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "kerneld", *args], check=False, capture_output=True, text=True,
                          env=full_env, cwd=str(ROOT), timeout=timeout, input=stdin)
