"""No frame of kerneld's own code in a traceback the user reads (issue 16 item 13: an
interrupt showed `kerneld/worker.py:411 in _on_sigint` with the checkout's full path)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kerneld import KernelManager
from kerneld.config import ManagerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")
OWN = str(Path(__file__).resolve().parents[2] / "kerneld")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager() -> AsyncIterator[KernelManager]:
    async with KernelManager(ManagerConfig(preload=())) as mgr:
        yield mgr


async def test_interrupts_and_refused_input_show_the_users_frames_only(
        manager: KernelManager) -> None:
    kid = await manager.create_kernel()
    running = asyncio.ensure_future(manager.execute(
        kid, "import time\ndef nap():\n    time.sleep(30)\nnap()"))
    await asyncio.sleep(0.5)
    assert manager.interrupt_kernel(kid)
    interrupted = await asyncio.wait_for(running, 10)
    no_input = await manager.execute(kid, "input('name? ')")
    for result, ename, users in ((interrupted, "KeyboardInterrupt", "time.sleep(30)"),
                                 (no_input, "StdinNotImplementedError", "input('name? ')")):
        text = "\n".join(result.error["traceback"])
        assert result.error["ename"] == ename and users in text, text
        assert OWN not in text and "kerneld/" not in text and "_on_sigint" not in text, text
    await manager.destroy_kernel(kid)
