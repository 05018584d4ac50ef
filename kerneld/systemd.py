"""What the daemon needs from systemd and the journal, without extra libraries: sd_notify(3)
datagrams, log lines journald understands, and warnings that hostile input cannot multiply.

`Notifier.from_env()` takes NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID out of the
environment (nothing started later, kernels included, inherits them) and sends
`READY=1`, `STATUS=...`, `WATCHDOG=1`, `RELOADING=1`, `STOPPING=1` (abstract `@` sockets too).
`setup_logging(level)` writes `LEVEL logger: message key=value` lines on stderr, prefixed with
`<N>` syslog priorities when stderr is the journal ($JOURNAL_STREAM), so journald records the
real level.
`Tally` counts one kind of bad input (a malformed request, a worker's garbage, a dropped
event) so that a flood of it makes a few WARNING lines, not one each: the front, the service,
the worker hub and the notifier itself use it.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import ClassVar

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET (abstract '@' too)."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._dropped = Tally(log, "sd_notify message dropped (the service manager's queue is "
                                   "full)")

    @classmethod
    def from_env(cls) -> Notifier:
        # Taken out of the environment so nothing started later (kernels) can inherit them.
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec = os.environ.pop("WATCHDOG_USEC", None)
        pid = os.environ.pop("WATCHDOG_PID", None)
        watchdog = int(usec) if usec and usec.isdigit() else None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            watchdog = None
        return cls(address, watchdog)

    def send(self, message: str) -> bool:
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                # non-blocking: a manager that stopped reading (its queue full) must not
                # freeze the daemon's event loop; the message is dropped instead
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                           | socket.SOCK_NONBLOCK)
            self._sock.sendto(message.encode(), target)
            return True
        except BlockingIOError:
            self._dropped.note(f"address={self.address} message={message.split(chr(10))[0]!r}")
            return False
        except OSError as exc:
            log.warning("sd_notify failed address=%s error=%s", self.address, exc)
            return False


class Tally:
    """One kind of bad input, counted: a DEBUG line for each occurrence, a WARNING for the
    first `first`, then at most one WARNING per `interval` seconds carrying the count since the
    last one (`flush`, from the status loop, writes out a count left pending)."""

    def __init__(self, logger: logging.Logger, what: str, *, first: int = 3,
                 interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.what, self.first, self.interval, self.clock = what, first, interval, clock
        self.total = 0
        self.pending = 0
        self.last_warning = -math.inf
        self.last_detail = ""

    def note(self, detail: str) -> None:
        self.total += 1
        self.pending += 1
        self.last_detail = detail
        self.log.debug("%s %s", self.what, detail)
        if self.total <= self.first or self.clock() - self.last_warning >= self.interval:
            self._warn()

    def flush(self) -> None:
        if self.pending and self.clock() - self.last_warning >= self.interval:
            self._warn()

    def _warn(self) -> None:
        self.log.warning("%s count=%d total=%d last: %s", self.what, self.pending, self.total,
                    self.last_detail)
        self.pending = 0
        self.last_warning = self.clock()


class _Formatter(logging.Formatter):
    """`LEVEL logger: message key=value` — with a `<N>` syslog priority prefix when stderr
    is the journal (journald then records the real level)."""

    _PRIORITY: ClassVar[dict[str, int]] = {
        "DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}

    def __init__(self, journal: bool) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prio = self._PRIORITY.get(record.levelname, 6)
            text = "\n".join(f"<{prio}>{line}" for line in text.split("\n"))
        return text


def setup_logging(level: str = "info") -> None:
    """Plain stderr lines for journald (or a terminal)."""
    journal = False
    stream = os.environ.get("JOURNAL_STREAM", "")
    if stream:
        try:
            dev, ino = (int(x) for x in stream.split(":"))
            st = os.fstat(sys.stderr.fileno())
            journal = (st.st_dev, st.st_ino) == (dev, ino)
        except (ValueError, OSError):
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


__all__ = ["Notifier", "Tally", "setup_logging"]
