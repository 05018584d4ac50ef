"""Known defects, not yet fixed, and how to recognise the inputs that hit them.

While an entry is listed here, the fuzzers set aside the inputs its matchers recognise
(counted, and shown in the terminal summary as "set aside"), so that a run still judges
everything else, and `test_known_defect[<item>]` reproduces it as a strict xfail. When a fix
lands, that test XPASSes, which fails the run: delete the entry, and the fuzzers judge those
inputs again while the reproducer stays on as a plain regression test.
`KERNELD_FUZZ_KNOWN=1` judges everything now, entries or not (to see what is still broken).

Retired (fixed; their reproducers stay as regression tests): issue 11's complete-cursor,
deep-nesting, info-log, newline-names, long-profile, timeouts and multi-frame
(test_fuzz_daemon.py), and hub-deep-nesting (test_fuzz_hub.py), which these fuzzers found.
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


_REMOVERS = ("destroy_kernel", "destroy_all", "force_terminate_kernel")


def _restart_and_remove(reqs: list[tuple[str, dict[str, Any]]]) -> bool:
    ops = {op for op, _ in reqs}
    return "restart_kernel" in ops and bool(ops.intersection(_REMOVERS))


KNOWN: dict[str, Known] = {k.item: k for k in (
    # found by these fuzzers and the load run (reported with issue 11), not yet fixed
    Known("hub-log-flood", "found by the hub fuzzer: every malformed worker message is logged "
                           "at WARNING, without a rate limit (a kernel can flood the daemon's "
                           "log)", "hub"),
    Known("restart-destroy-orphan", "found by the daemon fuzzer: a destroy_kernel or destroy_all "
                                    "that arrives while restart_kernel starts the new worker "
                                    "leaves that worker running, owned by no kernel (4-9 trials "
                                    "in 10); the restart answers True",
          example=_restart_and_remove),
    Known("question-oom", "found by the daemon fuzzer: is_complete on ~1 MiB of code in ~260,000 "
                          "short lines drives the worker past the default 512 MiB limit: the "
                          "out-of-memory killer ends the kernel and its state (a question, not "
                          "user code)",
          request=lambda op, args: op == "is_complete" and isinstance(args.get("code"), str)
          and args["code"].count("\n") >= 150_000),
    Known("notify-blocks", "found by the load run: the daemon's sd_notify sendto blocks, so a "
                           "NOTIFY_SOCKET nobody reads (max_dgram_qlen datagrams queued: ~50 s "
                           "of STATUS= lines) freezes the daemon's event loop for good"),
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
