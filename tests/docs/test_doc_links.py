"""The docs a user gets stand alone: every link and file reference stays inside the repository.

Issue 16 item 8: docs/profiles.md, benchmarks.md, internals.md, sandbox.md and protocol.md sent
readers to design notes outside the repository (`../shared/docs/SANDBOX.md`, `SPEC.md`, ...).
Checked, in README.md, docs/*.md and bench/README.md:

- markdown links `[text](target)` (outside code): a relative target must be a file or directory
  of the repository, and its `#anchor` (or a bare `#anchor`) a heading of that markdown file;
  absolute paths and `file:` URLs leave the repository; web URLs are left alone;
- bare references anywhere, code included: a `NAME.md`, a relative `dir/file.ext` or a `../`
  path must name a file of the repository (relative to the doc, or to the repository root; a
  `NAME.md` also in docs/). Absolute host paths (`/etc/kerneld/kerneld.toml`) are not files of
  the repository and are not checked.

The files kerneld ships for users to read (etc/kerneld.toml, the profiles, the systemd unit)
get the bare-reference check too, and README.md links every page of docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
SHIPPED = [ROOT / "etc" / "kerneld.toml", *sorted((ROOT / "kerneld" / "data" / "profiles")
                                                  .glob("*.toml")),
           ROOT / "systemd" / "kerneld.service"]

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^()\s>]*)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
_EXT = r"(?:md|py|toml|sh|service|c|txt|json|cfg|ini|yml|yaml)"
_BARE = [  # (pattern, what): group 1 is the reference
    (re.compile(r"(?<![\w./~*$<>-])(\.\.(?:/[\w.*-]+)+)"), "a path above the doc"),
    (re.compile(rf"(?<![\w./~*$<>:-])([\w.-]+(?:/[\w.-]+)+\.{_EXT})(?![\w/*-])"), "a file"),
    (re.compile(r"(?<![\w./~*$<>:-])([\w-]+\.md)(?![\w/-])"), "a markdown file"),
]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans (blanked, lines kept)."""
    text = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other than `-`
    and `_` removed, spaces → `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown text's headings (a repeated heading gets `-1`, `-2`, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_FENCE.sub("", text)):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return True


def link_problem(doc: Path, text: str, target: str) -> str | None:
    """Why the link `target` of `doc` (whose text is `text`) fails, or None."""
    if re.match(r"(?i)(https?|mailto):", target):
        return None
    if re.match(r"(?i)[a-z][a-z0-9+.-]*:", target):
        return "a URL that is not a web page (it leaves the repository)"
    path_part, _, anchor = target.partition("#")
    if path_part.startswith(("/", "~")):
        return "an absolute path: it leaves the repository"
    if not path_part:
        return None if not anchor or anchor in anchors(text) else f"no heading #{anchor} here"
    dest = doc.parent / path_part
    if not _inside(dest):
        return "it leaves the repository"
    if not dest.exists():
        return f"{_rel(dest.resolve())} is not in the repository"
    if (anchor and dest.is_file() and dest.suffix == ".md"
            and anchor not in anchors(dest.read_text())):
        return f"{_rel(dest.resolve())} has no heading #{anchor}"
    return None


def bare_problem(doc: Path, ref: str) -> str | None:
    """Why the bare reference `ref` in `doc` names nothing of the repository, or None."""
    bases = [doc.parent, ROOT] + ([ROOT / "docs"] if "/" not in ref else [])
    candidates = [base / ref for base in bases]
    if ref.startswith(".."):
        candidates = candidates[:1]  # `../x` only means something relative to the doc
    if any("*" in str(c) and _inside(c) and list(ROOT.glob(_rel(c.resolve())))
           or _inside(c) and c.exists() for c in candidates):
        return None
    if not any(_inside(c) for c in candidates):
        return "it leaves the repository"
    return "no such file in the repository"


def problems(doc: Path, text: str | None = None, *, markdown: bool = True) -> list[str]:
    """Every link and reference of `doc` (or of `text`, as if it were at `doc`) that fails."""
    text = doc.read_text() if text is None else text
    found: dict[tuple[int, str], str] = {}  # (line, reference) → the first reason found
    if markdown:
        prose = _prose(text)
        for m in [*_LINK.finditer(prose), *_REF_DEF.finditer(prose)]:
            why = link_problem(doc, text, m.group(1))
            if why:
                line = prose.count("\n", 0, m.start()) + 1
                found[line, m.group(1).partition("#")[0]] = f"link {m.group(1)!r}: {why}"
    for pattern, what in _BARE:
        for m in pattern.finditer(text):
            ref = m.group(1).rstrip(".")
            why = bare_problem(doc, ref)
            line = text.count("\n", 0, m.start()) + 1
            if why and not any(k[0] == line and k[1].endswith(ref) for k in found):
                found[line, ref] = f"{what} {ref!r}: {why}"
    out = [f"{_rel(doc)}:{line}: {why}" for (line, _), why in sorted(found.items())]
    if "shared/docs" in text:
        out.append(f"{_rel(doc)}: names shared/docs, which users do not get")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_doc_links_stay_inside_the_repository(doc: Path) -> None:
    found = problems(doc)
    assert not found, "links and references that lead nowhere a user has:\n" + "\n".join(found)


@pytest.mark.parametrize("path", SHIPPED, ids=_rel)
def test_shipped_files_refer_to_docs_in_the_repository(path: Path) -> None:
    found = problems(path, markdown=False)
    assert not found, "references that lead nowhere a user has:\n" + "\n".join(found)


def test_every_doc_is_listed_in_the_readme() -> None:
    """A page of docs/ that README.md does not link is one no user finds."""
    readme = _prose((ROOT / "README.md").read_text())
    linked = {m.group(1).partition("#")[0] for m in _LINK.finditer(readme)}
    missing = [f"docs/{d.name}" for d in sorted((ROOT / "docs").glob("*.md"))
               if f"docs/{d.name}" not in linked]
    assert not missing, f"README.md's Documentation list lacks {missing}"


# ---------------------------------------------------------------------- the checker itself

def test_the_checker_catches_what_issue_16_found() -> None:
    doc = ROOT / "docs" / "profiles.md"  # checked as if written there
    cases = {
        "see `../shared/docs/SANDBOX.md` for the layers": "no such file in the repository",
        "see `../../shared/docs/SANDBOX.md` for the layers": "leaves the repository",
        "Arguments are named as in `KernelManager` (SPEC.md)": "no such file",
        "[design](../../shared/docs/DESIGN.md)": "leaves the repository",
        "[gone](nowhere.md)": "not in the repository",
        "[bad anchor](api.md#no-such-heading)": "has no heading",
        "[bad local anchor](#no-such-heading)": "no heading",
        "[host](/etc/passwd)": "absolute path",
        "[local](file:///etc/passwd)": "not a web page",
        "`kerneld/no_such_module.py`": "no such file",
    }
    for text, why in cases.items():
        found = problems(doc, text + "\n")
        assert any(why in p for p in found), (text, found)
    fine = ("# Top\n[api](api.md#events) [top](#top) [web](https://deno.com) "
            "`kerneld/net/proxy.py` `/etc/kerneld/kerneld.toml` `p.toml` [readme](../README.md)"
            " `etc/profiles/*.toml` sandbox.md [dir](../tests/attacks)\n"
            "```python\nd[k](x)\n```\n")
    assert problems(doc, fine) == []


def test_slugs_are_githubs() -> None:
    assert slug("What it costs (measured here)") == "what-it-costs-measured-here"
    assert slug("`[limits]`") == "limits"
    assert slug("sandbox/ API (pure library; never imports kerneld, zmq, tomllib)") == \
        "sandbox-api-pure-library-never-imports-kerneld-zmq-tomllib"
    assert slug("Semantics (Deno's, with the differences noted)") == \
        "semantics-denos-with-the-differences-noted"
