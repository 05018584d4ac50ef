"""Fixtures of the load suite, and its figures in pytest's terminal summary.

One real daemon for the module (confined when the host can confine, as in production), with
room for `KERNELD_LOAD_KERNELS` idle kernels (default 300; the measured run holds 2,000):

    KERNELD_LOAD_KERNELS=2000 .venv/bin/python -m pytest tests/load

`KERNELD_FIGURES=path.json` also writes the figures to a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests import _figures
from tests._watch import NotifyDrain
from tests.fuzz._harness import sandbox_missing
from tests.integration._daemon import Daemon

HELD_KERNELS = int(os.environ.get("KERNELD_LOAD_KERNELS", "300"))


def config(confine: bool) -> str:
    return f"""
[daemon]
shutdown_grace = 1

[runtime]
preload = []

[kernels]
confine = {"true" if confine else "false"}
max_kernels = {max(2000, HELD_KERNELS + 100)}
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(config(sandbox_missing() is None))
    drain = None
    try:
        d.wait_ready()
        drain = NotifyDrain(d)
        yield d
    finally:
        if drain is not None:
            drain.stop()
        d.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    _figures.terminal_summary(terminalreporter, "kerneld load figures", ("load",))
