"""A kerneld kernelspec kernel's life through jupyter_client (`clients/lifecycle.py` under
.venv-clients): confinement from inside (uid, Seccomp 2, NoNewPrivs 1, no host file, no host
network) and the daemon's listing with the profile; SIGINT and control interrupts; restart;
shutdown; the adapter SIGKILLed (its kernel destroyed); the kernel SIGKILLed (the adapter
exits non-zero, as a dead ipykernel's process would, and a restart works); stdin; comms both
ways with binary buffers; messages signed with another key dropped. Each outer test is one inner test by name."""

from __future__ import annotations

import pytest

from tests.jupyter.conftest import InnerRun, JupyterKernel, run_inner

INNER = [
    "test_confined_inside_and_listed_by_the_daemon", "test_sigint_interrupts_and_keeps_state",
    "test_interrupt_request_on_control", "test_restart_resets_state_and_replaces_the_kernel",
    "test_sigkilled_adapter_leaves_no_kernel", "test_killed_kernel_ends_the_adapter",
    "test_stdin_roundtrip", "test_comms_both_ways_with_buffers",
    "test_bad_signatures_are_dropped",
]


@pytest.fixture(scope="module")
def inner(jupyter_kernel: JupyterKernel) -> InnerRun:
    run = run_inner("lifecycle.py", jupyter_kernel, timeout=240)
    jupyter_kernel.expect_daemon_kernels(0)
    return run


def test_every_inner_test_is_listed(inner: InnerRun) -> None:
    assert sorted(inner.outcomes) == sorted(INNER), inner.output[-3000:]


@pytest.mark.parametrize("name", INNER)
def test_lifecycle(inner: InnerRun, name: str) -> None:
    inner.check(name)
