"""A kernel's input (and output) history, in memory and bounded: what Jupyter's
`history_request` asks of a kernel (tail, range, search), answered as ipykernel's `do_history`
answers it from IPython's HistoryManager.

Why not IPython's own history database: it is an sqlite file (or an `:memory:` database) that
every cell writes to. Kernels are forked from one zygote and confined, so nothing may touch a
file, and an sqlite connection inherited across a fork is not safe to use; an in-memory
database would also cost each kernel sqlite's page cache and an INSERT per cell. IPython
keeps each cell's source in its own lists anyway (`In`), so the history here is a bounded
deque of references to those very strings (and to the text reprs of the outputs that
IPython's display hook keeps): a few dozen bytes per cell, nothing per idle kernel.

Sessions: a kernel's history is that of its process, one session, numbered 1 (as IPython
numbers a fresh database's first session). `tail` and `search` report it as 1; `range` of the
current session reports session 0, as IPython's `get_range` does. Nothing outlives the process:
a restart starts an empty history (and so does `reset(new_session=True)`, which the zygote and
the warm pool use to hand each kernel a fresh shell: no warm-up cell shows up in a kernel's
history). Older sessions do not exist, so a `range` of any other session is empty.

Bound: the newest `HISTORY_LIMIT` cells are kept; older ones drop out of every query.
"""

from __future__ import annotations

import collections
import fnmatch
import re
from typing import Any

from IPython.core.history import HistoryManager

from kerneld.protocol import HISTORY_LIMIT

SESSION = 1  # the one session of a kernel process (see the module docstring)
ACCESS_TYPES = ("tail", "range", "search")


class KeptHistory(HistoryManager):
    """IPython's HistoryManager without its database (`enabled = False`), keeping the newest
    `limit` cells as [line, source, raw source, output text or None] entries."""

    def __init__(self, *args: Any, limit: int = HISTORY_LIMIT, **kwargs: Any) -> None:
        self.kept: collections.deque[list[Any]] = collections.deque(maxlen=limit)
        super().__init__(*args, **kwargs)

    def new_session(self, conn: Any = None) -> None:
        """IPython asks its database for a new session number; here a new session is an
        empty history (see the module docstring)."""
        self.session_number = SESSION
        self.kept.clear()
        self.output_hist_reprs.clear()  # IPython's reset leaves them: line 1 would get the
        #                                 old session's line 1 output

    def store_inputs(self, line_num: int, source: str, source_raw: str | None = None) -> None:
        stored = len(self.input_hist_raw)
        self.output_hist_reprs.pop(line_num, None)  # a stale one, were the count ever reset
        super().store_inputs(line_num, source, source_raw)
        # IPython queues every input for a database write that never comes with the database
        # disabled: that queue would grow by one entry per cell for the kernel's life
        with self.db_input_cache_lock:
            self.db_input_cache.clear()
        if len(self.input_hist_raw) > stored:  # not an `exit`, which IPython does not store
            self.kept.append([line_num, self.input_hist_parsed[-1], self.input_hist_raw[-1],
                              None])

    def store_output(self, line_num: int) -> None:
        super().store_output(line_num)
        if self.kept and self.kept[-1][0] == line_num:
            self.kept[-1][3] = self.output_hist_reprs.get(line_num)

    # -- queries: Jupyter's history_reply content ------------------------------------------

    def reply(self, hist_access_type: str = "tail", output: bool = False, raw: bool = True,
              session: int = 0, start: int = 0, stop: int | None = None, n: int | None = None,
              pattern: str | None = None, unique: bool = False) -> dict[str, Any]:
        """`{"status": "ok", "history": [[session, line, input], ...]}` (with `output`,
        `[session, line, [input, output]]`), oldest first, as ipykernel's `do_history`."""
        if hist_access_type == "tail":
            found = self._tail(n)
        elif hist_access_type == "range":
            found, session_shown = self._range(session, start, stop)
            return {"status": "ok",
                    "history": [self._row(e, raw, output, session_shown) for e in found]}
        elif hist_access_type == "search":
            found = self._search(pattern, n, unique)
        else:
            raise ValueError(f"unknown hist_access_type {hist_access_type!r} "
                             f"(one of {', '.join(ACCESS_TYPES)})")
        return {"status": "ok", "history": [self._row(e, raw, output, SESSION) for e in found]}

    @staticmethod
    def _row(entry: list[Any], raw: bool, output: bool, session: int) -> list[Any]:
        source = entry[2] if raw else entry[1]
        return [session, entry[0], [source, entry[3]] if output else source]

    def _tail(self, n: int | None) -> list[list[Any]]:
        """The last `n` cells (all of them for None or a negative n, as sqlite's LIMIT)."""
        kept = list(self.kept)
        if n is None or n < 0:
            return kept
        return kept[len(kept) - n:] if n else []

    def _range(self, session: int, start: int, stop: int | None) -> tuple[list[list[Any]], int]:
        """Lines `start` ≤ line < `stop` of the current session (negative numbers count from
        the end, a missing or 0 `stop` is the end), as IPython's `_get_range_session`."""
        if session <= 0:
            session += SESSION
        if session != SESSION or not self.kept:
            return [], 0
        end = self.kept[-1][0] + 1  # IPython's len(input_hist): one past the last line
        if start < 0:
            start += end
        if not stop or stop > end:
            stop = end
        elif stop < 0:
            stop += end
        return [e for e in self.kept if start <= e[0] < stop], 0

    def _search(self, pattern: str | None, n: int | None, unique: bool) -> list[list[Any]]:
        """Cells whose raw source matches the glob `pattern` (sqlite's GLOB, as IPython's
        search: `*`, `?`, `[...]`, `[^...]`, case-sensitive, across lines); `unique` keeps
        the newest of equal sources; `n` the last n matches."""
        match = glob(pattern if pattern is not None else "*")
        found = [e for e in self.kept if match(e[2])]
        if unique:
            newest: dict[str, list[Any]] = {}
            for entry in found:
                newest.pop(entry[2], None)  # re-inserted: dicts keep insertion order
                newest[entry[2]] = entry
            found = list(newest.values())
        if n is not None and n >= 0:
            found = found[len(found) - n:] if n else []
        return found


def glob(pattern: str) -> Any:
    """A matcher for an sqlite GLOB pattern (fnmatch's syntax, but `[^...]` negates too)."""
    translated = fnmatch.translate(re.sub(r"\[\^", "[!", pattern))
    return re.compile(translated).match
