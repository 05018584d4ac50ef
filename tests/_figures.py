"""Figures that the fuzz and load suites measure, reported whatever pytest's `-s` says.

`record(section, key, value)` keeps a figure; the suites' conftests print every section in
pytest's terminal summary (`pytest_terminal_summary`, so it shows without `-s`, also when a
test fails), and, when `$KERNELD_FIGURES` names a file, merge them into that JSON file
(`{section: {key: value}}`, plus the date and commit), so a run's numbers can be quoted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES: dict[str, dict[str, Any]] = {}


def record(section: str, key: str, value: Any) -> None:
    FIGURES.setdefault(section, {})[key] = value


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "-"
    return str(value)


def summary(prefixes: tuple[str, ...]) -> list[str]:
    """Lines for the terminal summary: the sections whose names start with `prefixes`."""
    lines: list[str] = []
    for section, figures in FIGURES.items():
        if not section.startswith(prefixes):
            continue
        lines.append(f"{section}:")
        lines.extend(f"  {key}: {_fmt(value)}" for key, value in figures.items())
    return lines


def write(prefixes: tuple[str, ...]) -> str | None:
    """Merge the sections whose names start with `prefixes` into `$KERNELD_FIGURES`."""
    path = os.environ.get("KERNELD_FIGURES")
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        data = {}
    for section, figures in FIGURES.items():
        if section.startswith(prefixes):
            data[section] = figures
    data["_run"] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "commit": commit(), "cpus": os.cpu_count()}
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def terminal_summary(terminalreporter: Any, title: str, prefixes: tuple[str, ...]) -> None:
    """Print (and write) the figures of `prefixes` under a `title` rule."""
    lines = summary(prefixes)
    if not lines:
        return
    terminalreporter.write_sep("-", title)
    for line in lines:
        terminalreporter.write_line(line)
    path = write(prefixes)
    if path:
        terminalreporter.write_line(f"(figures written to {path})")
