"""Fixtures for the sandbox tier (helpers and skip markers live in `_support`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _support import Driver


@pytest.fixture(scope="session")
def driver() -> Iterator[Driver]:
    d = Driver()
    yield d
    d.close()


_uids = iter(range(64100, 64900))


@pytest.fixture
def uid() -> int:
    """A fresh unprivileged uid per test (RLIMIT_NPROC and /proc visibility are per uid)."""
    return next(_uids)


