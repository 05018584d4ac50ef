"""Shared fixtures: real managers with real zygotes and confined workers (no mocks)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kerneld import KernelManager
from kerneld.config import ManagerConfig

ROOT = Path(__file__).resolve().parent.parent

# A profile for tests that need to spawn programs (subprocess output capture, !cmd).
RUN_PROFILE = """
description = "tests: the default profile plus running a few programs"
run = ["/usr/bin/echo", "/usr/bin/sh", "/bin/sh", "/usr/bin/sleep", "/usr/bin/cat"]
[limits]
memory = "512MiB"
"""


@pytest.fixture(scope="session")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("profiles")
    (d / "runner.toml").write_text(RUN_PROFILE)
    os.chmod(d, 0o755)
    return d


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager(profile_dir: Path) -> AsyncIterator[KernelManager]:
    """One confined manager per test module (the zygote costs ~1 s to start)."""
    async with KernelManager(ManagerConfig(profile_dirs=(str(profile_dir),))) as mgr:
        yield mgr
