"""A kerneld kernelspec kernel's life through jupyter_client (`clients/lifecycle.py` under
.venv-clients): confinement from inside (uid, Seccomp 2, NoNewPrivs 1, no host file, no host
network) and the daemon's listing with the profile; SIGINT and control interrupts; restart;
shutdown; the adapter SIGKILLed, alone or with its process group (its kernel destroyed);
the heartbeat and kernel_info on control; the kernel SIGKILLed (the adapter
exits non-zero, as a dead ipykernel's process would, and a restart works); stdin; comms both
ways with binary buffers, widget metadata and updates from a thread between cells; messages signed with another key dropped; unknown
request types tolerated. And the adapter exits 1 when the daemon stops. Each outer test is one inner test by name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration._daemon import PYTHON, Daemon
from tests.jupyter.conftest import (
    CLIENT_PYTHON,
    CONFINED,
    InnerRun,
    JupyterKernel,
    client_env,
    run_inner,
)

INNER = [
    "test_confined_inside_and_listed_by_the_daemon", "test_sigint_interrupts_and_keeps_state",
    "test_interrupt_request_on_control", "test_restart_resets_state_and_replaces_the_kernel",
    "test_sigkilled_adapter_leaves_no_kernel", "test_killed_kernel_ends_the_adapter",
    "test_stdin_roundtrip", "test_comms_both_ways_with_buffers",
    "test_widget_metadata_and_updates_from_a_thread",
    "test_bad_signatures_are_dropped", "test_process_group_kill_leaves_no_kernel",
    "test_heartbeat_and_control_channel", "test_unknown_requests_get_busy_idle_only",
]


@pytest.fixture(scope="module")
def inner(jupyter_kernel: JupyterKernel) -> InnerRun:
    run = run_inner("lifecycle.py", jupyter_kernel, timeout=240)
    return run


def test_nothing_left_in_the_daemon(inner: InnerRun, jupyter_kernel: JupyterKernel) -> None:
    jupyter_kernel.expect_daemon_kernels(0)


def test_every_inner_test_is_listed(inner: InnerRun) -> None:
    assert sorted(inner.outcomes) == sorted(INNER), inner.output[-3000:]


@pytest.mark.parametrize("name", INNER)
def test_lifecycle(inner: InnerRun, name: str) -> None:
    inner.check(name)


DAEMON_GONE = """
import sys, time
from jupyter_client.manager import KernelManager
km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.client(); kc.start_channels(); kc.wait_for_ready(timeout=60)
print("ready", flush=True)
sys.stdin.readline()                      # the test stops the daemon here
deadline = time.monotonic() + 15
while km.is_alive() and time.monotonic() < deadline:
    time.sleep(0.1)
print("alive" if km.is_alive() else f"exited {km.provisioner.process.returncode}", flush=True)
kc.stop_channels(); km.cleanup_resources()
"""


def test_the_adapter_exits_when_the_daemon_goes(tmp_path: Path) -> None:
    """A daemon that stops (its kernels with it) ends the adapter with status 1, so the client
    sees a dead kernel instead of one that hangs."""
    daemon = Daemon(CONFINED)
    try:
        daemon.wait_ready()
        prefix = tmp_path / "prefix"
        done = subprocess.run([PYTHON, "-m", "kerneld", "--address", daemon.address, "jupyter",
                               "install", "--prefix", str(prefix), "--profile", "default"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        env = client_env(daemon, prefix, tmp_path)
        proc = subprocess.Popen([str(CLIENT_PYTHON), "-c", DAEMON_GONE, "kerneld-default"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        daemon.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert out.strip() == "exited 1", (out, err)
    finally:
        daemon.close()
