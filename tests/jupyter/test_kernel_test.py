"""jupyter_kernel_test's `KernelTests` (every sample) and `IopubWelcomeTests` against the
installed `kerneld-default` kernelspec: real jupyter_client, real confined kernels.

The suite runs once under .venv-clients (`clients/kernel_tests.py`); each outer test below is
one inner test by name and fails with it (and when it did not run at all).
"""

from __future__ import annotations

import pytest

from tests.jupyter.conftest import InnerRun, JupyterKernel, run_inner

INNER = [
    "test_kernel_info", "test_execute_stdout", "test_execute_stderr", "test_completion",
    "test_is_complete", "test_pager", "test_error", "test_execute_result",
    "test_display_data", "test_history", "test_inspect", "test_clear_output",
    "test_recv_iopub_welcome_msg",
]


@pytest.fixture(scope="module")
def inner(jupyter_kernel: JupyterKernel) -> InnerRun:
    run = run_inner("kernel_tests.py", jupyter_kernel, timeout=240)
    return run


def test_nothing_left_in_the_daemon(inner: InnerRun, jupyter_kernel: JupyterKernel) -> None:
    jupyter_kernel.expect_daemon_kernels(0)


def test_every_inner_test_is_listed(inner: InnerRun) -> None:
    assert sorted(inner.outcomes) == sorted(INNER), inner.output[-3000:]


@pytest.mark.parametrize("name", INNER)
def test_kernel_tests(inner: InnerRun, name: str) -> None:
    inner.check(name)
