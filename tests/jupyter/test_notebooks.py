"""nbclient and papermill execute notebooks on the kerneld kernelspec (`clients/notebooks.py`
under .venv-clients): prints, a matplotlib figure as image/png, a display updated by id, an
error cell with allow_errors (and the stop without it), ipywidgets state in the notebook's
metadata, a papermill parameters cell and papermill's error. Each outer test is one inner
test by name."""

from __future__ import annotations

import pytest

from tests.jupyter.conftest import InnerRun, JupyterKernel, run_inner

INNER = ["test_nbclient_runs_a_notebook", "test_nbclient_stops_at_an_error_without_allow_errors",
         "test_papermill_parameters", "test_papermill_reports_the_error"]


@pytest.fixture(scope="module")
def inner(jupyter_kernel: JupyterKernel) -> InnerRun:
    run = run_inner("notebooks.py", jupyter_kernel, timeout=240)
    return run


def test_nothing_left_in_the_daemon(inner: InnerRun, jupyter_kernel: JupyterKernel) -> None:
    jupyter_kernel.expect_daemon_kernels(0)


def test_every_inner_test_is_listed(inner: InnerRun) -> None:
    assert sorted(inner.outcomes) == sorted(INNER), inner.output[-3000:]


@pytest.mark.parametrize("name", INNER)
def test_notebooks(inner: InnerRun, name: str) -> None:
    inner.check(name)
