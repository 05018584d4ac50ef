"""An in-process kernel's output reaches the kernel even when the embedding program replaced
sys.stdout after the kernel started (contextlib.redirect_stdout; pytest's capture did this
between tests, and the second test's kernel printed into the test runner instead)."""

from __future__ import annotations

import contextlib
import io

import pytest

from kerneld import KernelManager, KernelMode
from kerneld.config import ManagerConfig


@pytest.mark.asyncio
async def test_output_follows_the_kernel_after_the_program_swaps_sys_stdout() -> None:
    async with KernelManager(ManagerConfig(preload=())) as manager:
        kid = await manager.create_kernel(mode=KernelMode.IN_PROCESS)
        first = await manager.execute(kid, "print('one')")
        program = io.StringIO()
        with contextlib.redirect_stdout(program):
            second = await manager.execute(kid, "print('two')")
            print("the program's own")
        for result, text in ((first, "one\n"), (second, "two\n")):
            assert "".join(e.data["text"] for e in result.outputs if e.type == "stream") == text
        assert program.getvalue() == "the program's own\n"
