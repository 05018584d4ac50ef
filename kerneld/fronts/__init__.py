"""Fronts: the ways into the daemon, each a small adapter over one `kerneld.service.Service`.

A front owns its transport: it listens, reads its framing, refuses what it cannot parse (and
what its own limits forbid) in its own words, and hands every request to `Service.handle`
with a `kerneld.service.Peer` of its own making; it reports lost connections with
`Service.peer_gone`. The daemon (`kerneld.daemon`) builds the fronts, and drives them all
through the same few calls (`Front`), so the shutdown ladder runs once for every front.

Today there is one, `kerneld.fronts.zmq` (the ROUTER socket of docs/protocol.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kerneld.config import DaemonConfig


class Front(Protocol):
    """What the daemon asks of a front."""

    def open(self) -> None:
        """Start listening (and handling requests). Raises ConfigError or OSError, then
        `close()` is called."""

    def reconfigure(self, config: DaemonConfig) -> None:
        """A reload: take what may change while running (restart-only settings are kept)."""

    def tick(self) -> None:
        """Periodic housekeeping, from the daemon's status loop (pending warnings)."""

    def waiting(self) -> int:
        """Replies waiting for clients that do not read (`status`)."""

    async def flush(self, deadline: float) -> None:
        """At shutdown: send what waits until `deadline` (time.monotonic())."""

    def close(self) -> None:
        """Stop listening and release everything; safe to call twice or after a failed open."""


__all__ = ["Front"]
