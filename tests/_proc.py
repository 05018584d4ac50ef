"""Helpers shared by test directories: facts about host processes, read from /proc."""

from __future__ import annotations


def process_state(pid: int) -> str | None:
    """The state letter of `pid` in /proc (`R`, `S`, `Z`, …), or None once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # reaped, or reaped while we read
        return None


def gone_or_zombie(pid: int) -> bool:
    return process_state(pid) in (None, "Z")
