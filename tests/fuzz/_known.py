"""Known defects, not yet fixed, and how to recognise the inputs that hit them.

While an entry is listed here, the fuzzers set aside the inputs its matchers recognise
(counted, and shown in the terminal summary as "set aside"), so that a run still judges
everything else, and `test_known_defect[<item>]` reproduces it as a strict xfail. When a fix
lands, that test XPASSes, which fails the run: delete the entry, and the fuzzers judge those
inputs again while the reproducer stays on as a plain regression test.
`KERNELD_FUZZ_KNOWN=1` judges everything now, entries or not (to see what is still broken).

Retired (fixed; their reproducers stay as regression tests): issue 11's complete-cursor,
deep-nesting, info-log, newline-names, long-profile, timeouts and multi-frame
(test_fuzz_daemon.py), and hub-deep-nesting (test_fuzz_hub.py), which these fuzzers found;
then the defects the long runs found: restart-destroy-orphan, question-oom, notify-blocks
(test_fuzz_daemon.py) and hub-log-flood (test_fuzz_hub.py); processes-floor and
multi-frame-oversize.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEEP = 900  # nesting from which msgspec's recursion limit may strike (~990 levels)


@dataclass(frozen=True)
class Known:
    item: str
    reason: str
    where: str = "daemon"  # whose reproducer: test_fuzz_daemon's or test_fuzz_hub's
    request: Callable[[str, dict[str, Any]], bool] | None = None  # (op, args)
    raw: Callable[[int, list[bytes], list[str | None]], bool] | None = None  # depth, frames, ids
    worker: Callable[[list[int]], bool] | None = None  # the nesting depth of each message
    example: Callable[[list[tuple[str, dict[str, Any]]]], bool] | None = None  # its requests


KNOWN: dict[str, Known] = {k.item: k for k in (
    # found by these fuzzers and the load runs: none listed now
)}

JUDGE_ALL = os.environ.get("KERNELD_FUZZ_KNOWN", "") not in ("", "0")


def active(item: str) -> bool:
    """Whether inputs of `item` are set aside (listed, and not KERNELD_FUZZ_KNOWN=1)."""
    return item in KNOWN and not JUDGE_ALL


def request_defect(op: str, args: dict[str, Any]) -> str | None:
    """The listed defect a request would hit, if any."""
    return next((k.item for k in KNOWN.values() if k.request and k.request(op, args)), None)


def raw_defect(depth: int, frames: list[bytes], readable: list[str | None]) -> str | None:
    """The listed defect a raw message would hit: by its nesting or its frames' ids."""
    return next((k.item for k in KNOWN.values() if k.raw and k.raw(depth, frames, readable)),
                None)


def example_defect(reqs: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The listed defect a whole example (its requests together) would hit."""
    return next((k.item for k in KNOWN.values() if k.example and k.example(reqs)), None)


def worker_defect(depths: list[int]) -> str | None:
    """The listed defect a burst of worker messages would hit."""
    return next((k.item for k in KNOWN.values() if k.worker and k.worker(depths)), None)
