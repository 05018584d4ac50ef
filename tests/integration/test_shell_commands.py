"""`!cmd`, `%%bash` and `subprocess` in confined kernels (issue 16 item 3): they work where the
profile's `run` permission allows the program, and where it does not, say so in one line that
names `run` (IPython's own `!` needed a pty, which a kernel does not have: every `!cmd` failed
with "out of pty devices" after a 40-line traceback)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kerneld import KernelManager
from kerneld.config import ManagerConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager() -> AsyncIterator[KernelManager]:
    async with KernelManager(ManagerConfig(preload=())) as mgr:
        yield mgr


@pytest.fixture(scope="module")
def sh_and_ls(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default profile with `run = ["sh", "ls"]`."""
    text = (Path(__file__).resolve().parents[2] / "kerneld/data/profiles/default.toml").read_text()
    text = re.sub(r"(?m)^run = .*$", 'run = ["sh", "ls"]', text)
    path = tmp_path_factory.mktemp("profiles") / "sh-ls.toml"
    path.write_text(text)
    return str(path)


async def run(manager: KernelManager, kid: str, code: str) -> tuple[str, str, str]:
    r = await manager.execute(kid, code)
    out = "".join(e.data.get("text", "") for e in r.outputs if e.type == "stream")
    return r.status, out, (r.error or {}).get("evalue", "")


async def test_bang_commands_and_bash_cells_run_where_run_allows(manager: KernelManager) -> None:
    kid = await manager.create_kernel(profile="trusted")
    assert await run(manager, kid, "x = 'there'\n!echo hi $x; ls -d /usr") == (
        "ok", "hi there\n/usr\n", "")
    assert (await run(manager, kid, "!exit 3"))[0] == "ok"
    r = await manager.execute(kid, "_exit_code")
    assert r.result["data"]["text/plain"] == "3"
    assert await run(manager, kid, "%%bash\necho from bash >&2") == ("ok", "from bash\n", "")
    status, out, _ = await run(manager, kid, "import subprocess\n"
                                             "print(subprocess.run(['ls', '-d', '/etc'], "
                                             "capture_output=True, text=True).stdout)")
    assert (status, out) == ("ok", "/etc\n\n")
    await manager.destroy_kernel(kid)


async def test_a_program_list_allows_those_programs_only(manager: KernelManager,
                                                        sh_and_ls: str) -> None:
    kid = await manager.create_kernel(profile=sh_and_ls)
    assert await run(manager, kid, "!ls -d /usr") == ("ok", "/usr\n", "")
    status, out, _ = await run(manager, kid, "!uname")
    assert status == "ok" and out.splitlines()[-1] == (
        "kerneld: a program was refused (exit status 126): the kernel profile's `run` "
        "permission does not allow it"), out
    await manager.destroy_kernel(kid)


async def test_without_run_each_way_fails_in_one_line_naming_run(manager: KernelManager) -> None:
    kid = await manager.create_kernel(profile="default")
    refused = ("kerneld: !cmd needs /bin/sh, and the kernel profile's `run` permission does "
               "not allow running it\n")
    assert await run(manager, kid, "!ls") == ("ok", refused, "")
    for code in ("%%bash\necho hi", "import subprocess; subprocess.run(['ls'])"):
        status, _, evalue = await run(manager, kid, code)
        assert status == "error" and "`run` permission" in evalue, evalue
    await manager.destroy_kernel(kid)
