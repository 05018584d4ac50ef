"""Fixtures of the fuzz suite, and its figures in pytest's terminal summary.

Budget: `KERNELD_FUZZ_EXAMPLES` examples per fuzz test (default 150: the whole directory in
well under a minute on a 2-core machine); a long run from the command line:

    KERNELD_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/fuzz

Examples are derandomized (the same every run, as CI needs); `KERNELD_FUZZ_SEED=N` explores
other ones. `KERNELD_FUZZ_KNOWN=1` judges the inputs of known defects too (tests/fuzz/_known.py).
`KERNELD_FIGURES=path.json` also writes the figures to a file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests import _figures
from tests.fuzz._harness import FuzzDaemon


@pytest.fixture(scope="module")
def fz() -> Iterator[FuzzDaemon]:
    daemon = FuzzDaemon()
    try:
        yield daemon
    finally:
        daemon.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _figures.terminal_summary(terminalreporter, "kerneld fuzz figures", ("fuzz",))
