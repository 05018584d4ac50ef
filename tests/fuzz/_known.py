"""Known defects of issue 11 that other changes are fixing, and how to recognise their inputs.

While an entry is listed here, the fuzzers set aside the inputs it matches (counted and shown
in the terminal summary as "set aside"), so that a run still judges everything else, and
`test_known_defect[<key>]` reproduces it as a strict xfail. When a fix lands, that test
XPASSes, which fails the run: delete the entry, and the fuzzers judge those inputs again.
`KERNELD_FUZZ_KNOWN=1` judges them now, entries or not (to see what is still broken).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Known:
    item: str
    reason: str
    where: str = "daemon"  # whose reproducer: test_fuzz_daemon's or test_fuzz_hub's


KNOWN: dict[str, Known] = {k.item: k for k in (
    Known("complete-cursor", "issue 11: `complete` with an out-of-range cursor_pos kills the "
                             "kernel, being fixed"),
    Known("deep-nesting", "issue 11: deeply nested msgpack (>= ~990 levels) escapes as "
                          "RecursionError with no reply, being fixed"),
    Known("info-log", "issue 11: malformed requests are logged at INFO once per request, "
                      "being fixed"),
    Known("newline-names", "issue 11: ids/namespaces ending in '\\n' are accepted, being fixed"),
    Known("long-profile", "issue 11: profile names longer than NAME_MAX answer InternalError, "
                          "being fixed"),
    Known("timeouts", "issue 11: NaN/inf/negative timeouts are accepted, being fixed"),
    # found by these fuzzers (reported with issue 11), not yet fixed
    Known("hub-deep-nesting", "found by the hub fuzzer: a worker message nested >= ~990 levels "
                              "raises RecursionError out of WorkerHub._drain (a traceback logged "
                              "per message) and the hub leaves every message queued behind it "
                              "unread until the next one arrives", "hub"),
    Known("notify-blocks", "found by the load run: the daemon's sd_notify sendto blocks, so a "
                           "NOTIFY_SOCKET nobody reads (max_dgram_qlen datagrams queued: ~50 s "
                           "of STATUS= lines) freezes the daemon's event loop for good"),
    Known("hub-log-flood", "found by the hub fuzzer: every malformed worker message is logged "
                           "at WARNING, without a rate limit (a kernel can flood the daemon's "
                           "log)", "hub"),
)}

JUDGE_ALL = os.environ.get("KERNELD_FUZZ_KNOWN", "") not in ("", "0")
DEEP = 900          # nesting from which the known RecursionError may strike
_NAME_NL = re.compile(r"[A-Za-z0-9._-]{1,128}\n")


def active(item: str) -> bool:
    """Whether inputs of `item` are set aside (listed, and not KERNELD_FUZZ_KNOWN=1)."""
    return item in KNOWN and not JUDGE_ALL


def _bad_seconds(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and (math.isnan(value) or math.isinf(value) or value < 0))


def request_defect(op: str, args: dict[str, Any]) -> str | None:
    """The known defect a (well-typed or not) request would hit, if any."""
    if op == "complete":
        code, pos = args.get("code"), args.get("cursor_pos")
        if (isinstance(code, str) and isinstance(pos, int) and not isinstance(pos, bool)
                and not 0 <= pos <= len(code)):
            return "complete-cursor"
    if op == "create_kernel":
        for name in ("id", "namespace"):
            if isinstance(args.get(name), str) and _NAME_NL.fullmatch(args[name]):
                return "newline-names"
        profile = args.get("profile")
        if isinstance(profile, str) and len(profile.encode("utf-8", "replace")) > 250:
            return "long-profile"
        if any(_bad_seconds(args.get(n)) for n in ("inactivity_timeout", "max_execution_time")):
            return "timeouts"
    if op == "set_inactivity_timeout" and _bad_seconds(args.get("timeout")):
        return "timeouts"
    return None


def raw_defect(depth: int, frames: list[bytes], readable: list[str | None]) -> str | None:
    """The known defect a raw message would hit: its nesting, or its frames' readable ids."""
    if depth >= DEEP:
        return "deep-nesting"
    if len(frames) > 1 and readable[-1] is None and any(readable):
        return "multi-frame"
    return None


def worker_defect(depths: list[int]) -> str | None:
    """The known defect a burst of worker messages would hit."""
    return "hub-deep-nesting" if max(depths, default=0) >= DEEP else None
