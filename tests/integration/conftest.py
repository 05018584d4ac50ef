"""Fixtures shared by the daemon tests: a real `kerneld serve` on a temporary endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _daemon import Daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One daemon per test module on its dev config; modules that need another config
    (confined, shorter grace) define their own `daemon` fixture, which takes precedence."""
    d = Daemon()
    try:
        yield d.wait_ready()
    finally:
        d.close()
