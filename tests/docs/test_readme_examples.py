"""Every ```python block of README.md runs as written, as a user would run it after the
quickstart.

Issue 16 item 7: the embedded example mounted /srv/data, which a fresh machine does not have
(`ProfileError: request:filesystem.root: no such directory`), and through the daemon it would
have been outside the default mount roots. Here each block is saved to a file of its own and
run by the venv's python, from an empty directory, with no KERNELD_* variable but
KERNELD_ADDRESS, which points at a real `kerneld serve` on its built-in configuration (what
`make run` starts: confined kernels, mount roots ["/srv/kerneld"]) on a temporary address.

A block passes when it exits 0 and every `print(...)  # TEXT` line's TEXT is in its output
(the README's comments say what the user will see).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration._daemon import PYTHON, Daemon

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SHOWN = re.compile(r"\bprint\(.*\)\s+#\s*(\S.*?)\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the opening fence, code) of every ```python block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text())


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2, "README.md lost its Python examples (embedded and daemon)"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """The daemon the quickstart's `make run` starts: the built-in configuration."""
    d = Daemon(config="")
    try:
        yield d.wait_ready(timeout=90)
    finally:
        d.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_python_block_runs_as_written(line: int, code: str, daemon: Daemon,
                                             tmp_path: Path) -> None:
    script = tmp_path / f"readme_{line}.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELD_")}
    env["KERNELD_ADDRESS"] = daemon.address
    proc = subprocess.run([PYTHON, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    where = f"README.md:{line}"
    assert proc.returncode == 0, (f"{where} exits {proc.returncode}:\n{proc.stderr}"
                                  f"\n--- stdout:\n{proc.stdout}\n--- daemon log:\n{daemon.log}")
    for shown in _shown(code):
        assert shown in proc.stdout, f"{where}: the comment says {shown!r}:\n{proc.stdout}"


def _shown(code: str) -> list[str]:
    """The TEXT of every `print(...)  # TEXT` line."""
    return [m.group(1) for line in code.splitlines() if (m := _SHOWN.search(line))]


def test_the_block_extractor() -> None:
    text = "x\n```python\nprint(1)  # 1\n```\n```sh\nls\n```\n```python\npass\n```\n"
    assert python_blocks(text) == [(2, "print(1)  # 1\n"), (8, "pass\n")]
    assert _shown("print(a, b)   # ok 42\nf()  # no\nprint(x)\n") == ["ok 42"]
