"""Figures in the docs that would go stale: counts of tests, and the attack suite's table.

Issue 16 item 14: sandbox.md said the attack suite had 246 tests (it had 248) and
test_attack_filesystem.py 50 (52). Counts of tests are not written down at all (pytest
`--collect-only -q` gives them); the table of attack files must name exactly the files there are.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
_COUNT = re.compile(r"\b\d[\d,]*\s+(?:tests?|test cases|cases)\b", re.IGNORECASE)
_COUNT_COLUMN = re.compile(r"^\|.*\|\s*(?:tests|cases)\s*\|\s*$", re.IGNORECASE | re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_states_how_many_tests_there_are(doc: Path) -> None:
    text = doc.read_text()
    found = _COUNT.findall(text) + _COUNT_COLUMN.findall(text)
    assert not found, f"{doc.name} states test counts, which go stale: {found}"


def test_the_attack_table_names_every_attack_file() -> None:
    text = (ROOT / "docs" / "sandbox.md").read_text()
    section = text.split("## The attack suite", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(test_\w+\.py)` \|", section, re.MULTILINE))
    files = {f.name for f in (ROOT / "tests" / "attacks").glob("test_*.py")}
    assert listed == files, (f"not in docs/sandbox.md: {sorted(files - listed)}; "
                             f"listed but gone: {sorted(listed - files)}")
