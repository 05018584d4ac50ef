"""ipykernel 7's own message-spec tests (tests/test_message_spec.py, adapted in
`clients/message_spec.py`: attribution and every change listed there) against the installed
kerneld kernelspec. Out of scope: `test_subshell` (no kernel subshells: one FIFO per kernel).

Each outer test is one inner test by name and fails with it.
"""

from __future__ import annotations

import pytest

from tests.jupyter.conftest import InnerRun, JupyterKernel, run_inner

INNER = [
    "test_execute", "test_execute_silent", "test_execute_error", "test_execute_inc",
    "test_execute_stop_on_error", "test_non_execute_stop_on_error", "test_user_expressions",
    "test_user_expressions_fail", "test_oinfo", "test_oinfo_found", "test_oinfo_detail",
    "test_oinfo_not_found", "test_complete", "test_kernel_info_request",
    "test_connect_request", "test_comm_info_request", "test_single_payload",
    "test_is_complete", "test_history_range", "test_history_tail", "test_history_search",
    "test_stream", "test_display_data",
]


@pytest.fixture(scope="module")
def inner(jupyter_kernel: JupyterKernel) -> InnerRun:
    run = run_inner("message_spec.py", jupyter_kernel, timeout=240)
    return run


def test_nothing_left_in_the_daemon(inner: InnerRun, jupyter_kernel: JupyterKernel) -> None:
    jupyter_kernel.expect_daemon_kernels(0)


def test_every_inner_test_is_listed(inner: InnerRun) -> None:
    assert sorted(inner.outcomes) == sorted(INNER), inner.output[-3000:]


@pytest.mark.parametrize("name", INNER)
def test_message_spec(inner: InnerRun, name: str) -> None:
    inner.check(name)
