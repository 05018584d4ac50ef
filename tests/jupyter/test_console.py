"""`jupyter console --kernel kerneld-default` in a real terminal (tmux), typed at like a user.

jupyter_console 6.6 (from `.venv-clients`) launches the kernelspec's argv itself, so this
is the whole path of a terminal user: the banner comes from kernel_info, the continuation
prompts of a block from is_complete, Ctrl-C is the console's own KeyboardInterrupt turned
into SIGINT to the adapter (`interrupt_mode: signal`), and Ctrl-D + "y" shuts the kernel
down. tmux gives the console a real pty (prompt_toolkit refuses to run without one) on a
private tmux server of this test (`-S` socket in the test's directory), ended afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / ".venv-clients" / "bin"

pytestmark = [pytest.mark.timeout(120)]


class Tmux:
    """One detached tmux session running `cmd` in a 200×60 pty, on a private server."""

    def __init__(self, cmd: list[str], env: dict[str, str], workdir: Path) -> None:
        self.sock = str(workdir / "tmux.sock")
        # a fresh server takes its global environment from this client: `env` is the command's
        subprocess.run(["tmux", "-S", self.sock, "-f", "/dev/null", "new-session", "-d",
                        "-s", "kd", "-x", "200", "-y", "60", shlex.join(cmd)],
                       env=env, cwd=workdir, check=True, timeout=30)
        self.pane_pid = int(self._tmux("display-message", "-p", "-t", "kd", "#{pane_pid}"))

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-S", self.sock, "has-session", "-t", "kd"],
                              capture_output=True, timeout=30, check=False).returncode == 0

    def screen(self) -> str:
        """The pane with its scrollback, wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "kd")

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "kd", "-l", text)

    def key(self, *names: str) -> None:
        self._tmux("send-keys", "-t", "kd", *names)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """The screen once `pattern` (a regex) is on it."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise AssertionError(f"the console ended while waiting for {pattern!r}")
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on the screen in {timeout} s:\n{screen}")
            time.sleep(0.02)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True,
                       timeout=30, check=False)


def _kernel_banner(env: dict[str, str], name: str) -> str:
    """The banner of the kernelspec's kernel_info_reply, asked by jupyter_client directly."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    dirs = [os.path.join(p, "kernels") for p in env.get("JUPYTER_PATH", "").split(os.pathsep)
            if p]
    ksm = KernelSpecManager(kernel_dirs=dirs) if dirs else KernelSpecManager()
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    km.start_kernel()
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        return str(kc.kernel_info(reply=True, timeout=30)["content"]["banner"])
    finally:
        kc.stop_channels()
        km.shutdown_kernel()


@pytest.fixture
def console(jupyter_kernel: Any, tmp_path: Path) -> Iterator[Tmux]:
    env = {**jupyter_kernel.env, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "IPYTHONDIR": str(tmp_path / "ipy")}
    t = Tmux([str(CLIENTS / "jupyter"), "console", "--kernel", jupyter_kernel.name], env,
             tmp_path)
    try:
        yield t
    finally:
        t.close()


def test_console_banner_block_ctrl_c_and_exit(console: Tmux, jupyter_kernel: Any) -> None:
    screen = console.wait_for(r"In \[1\]:", 60)
    banner = _kernel_banner(jupyter_kernel.env, jupyter_kernel.name)
    first = next(line for line in banner.splitlines() if line.strip())
    assert "Jupyter console 6.6.3" in screen
    assert first.strip() in screen, f"banner line {first!r} not on the screen:\n{screen}"
    jupyter_kernel.expect_daemon_kernels(1)
    launched = psutil.Process(console.pane_pid).children(recursive=True)
    assert launched, "the console launched no kernel process"

    # a multi-line block: is_complete gives the continuation prompt and the indent
    console.type("for i in range(3):")
    console.key("Enter")
    console.wait_for(r"\.\.\.:")
    console.type("print('row', i * 7)")
    console.key("Enter")
    console.key("Enter")
    screen = console.wait_for(r"In \[2\]:")
    assert re.search(r"row 0\nrow 7\nrow 14\n", screen), screen

    # Ctrl-C interrupts time.sleep(30) in under 2 s
    console.type("import time; time.sleep(30)")
    console.key("Enter")
    console.wait_for(r"In \[2\]: import time; time\.sleep\(30\)")
    time.sleep(0.7)   # Enter processed, the sleep has begun
    assert "In [3]:" not in console.screen()
    t0 = time.monotonic()
    console.key("C-c")
    screen = console.wait_for(r"KeyboardInterrupt[\s\S]*In \[3\]:", 10)
    took = time.monotonic() - t0
    print(f"Ctrl-C → KeyboardInterrupt and the next prompt: {took:.3f} s")
    assert took < 2.0, f"Ctrl-C took {took:.2f} s to interrupt the kernel:\n{screen}"

    # the kernel kept its state
    console.type("print('after', 6 * 7, i)")
    console.key("Enter")
    console.wait_for(r"after 42 2\n[\s\S]*In \[4\]:")

    # Ctrl-D, "y": the console shuts its kernel down and nothing is left
    console.key("C-d")
    console.wait_for(r"(?i)exit")
    console.type("y")
    console.key("Enter")
    deadline = time.monotonic() + 20
    while console.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not console.alive(), f"the console did not exit:\n{console.screen()}"
    _, alive = psutil.wait_procs(launched, timeout=10)
    assert not alive, f"processes the console launched still run: {alive}"
    jupyter_kernel.expect_daemon_kernels(0)
