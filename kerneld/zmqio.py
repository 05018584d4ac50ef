"""Edge-triggered draining of a plain ZeroMQ socket on an asyncio event loop.

kerneld's busy sockets — the daemon's ROUTER front, the client's DEALER, the supervisor's
worker hub — are plain (non-asyncio) pyzmq sockets whose notification fd is watched with
`loop.add_reader`. A wake-up receives every waiting message and hands each to a handler at
once: no pyzmq future and no task per message, which saves about 50 µs a round trip
(measured) and a task switch per request.

ZeroMQ's fd is edge-triggered: it says that the socket's state changed, not that a message
waits, and a send on the socket can consume the edge that announced an arrival. Hence the
rules `Drain` keeps:
- a wake-up reads until `zmq.Again` (never blocking: NOBLOCK); after `batch` messages (or
  `batch_bytes` of them) it yields to the loop and goes on from a `call_soon`, so one busy
  peer cannot starve the rest and nothing already waiting is left for an edge that will not
  come;
- after every send on the socket its owner calls `after_send()`, which re-checks ZMQ_EVENTS
  and schedules a drain when input waits.

Only zmq and asyncio are imported: the client uses this module and must not load the daemon.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["Drain"]

_QUIET = (zmq.ETERM, zmq.ENOTSOCK)  # the socket or its context was closed: nothing to say


class Drain:
    """Watch `sock` on `loop` and call `handle(message)` for every message it receives.

    multipart: receive with `recv_multipart` (a list of frames) instead of `recv`.
    copy: False gives `zmq.Frame`s (their properties carry a peer's credentials).
    batch / batch_bytes: messages (None: no limit) / bytes of each message's last frame
        (None: no limit) handled before yielding to the loop.
    on_error: called with a receive error other than a closed socket's (None: ignored); the
        drain then waits for the next edge.
    `handle` deals with its own exceptions: one that escapes stops this wake-up's drain
    (the loop's exception handler reports it) and the next edge resumes it.
    """

    __slots__ = ("_batch", "_batch_bytes", "_closed", "_fd", "_handle", "_loop", "_on_error",
                 "_recv", "_scheduled", "_sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket[Any],
                 handle: Callable[[Any], object], *, multipart: bool = True, copy: bool = True,
                 batch: int | None = 256, batch_bytes: int | None = None,
                 on_error: Callable[[zmq.ZMQError], object] | None = None) -> None:
        self._loop, self._sock, self._handle = loop, sock, handle
        receive = sock.recv_multipart if multipart else sock.recv
        self._recv = functools.partial(receive, zmq.NOBLOCK, copy=copy)
        self._batch, self._batch_bytes, self._on_error = batch, batch_bytes, on_error
        self._fd = int(sock.getsockopt(zmq.FD))
        self._scheduled = False
        self._closed = False
        loop.add_reader(self._fd, self._run)
        self._schedule()  # anything that arrived before the registration

    def after_send(self) -> None:
        """Call after each send on the socket: the send may have consumed the fd's edge."""
        if (not self._scheduled and not self._closed
                and int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN):
            self._schedule()

    def close(self) -> None:
        """Stop watching (before the socket is closed: its fd number may be reused)."""
        if not self._closed:
            self._closed = True
            if not self._loop.is_closed():
                self._loop.remove_reader(self._fd)

    def _schedule(self) -> None:
        self._scheduled = True
        self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        recv, handle, budget = self._recv, self._handle, self._batch_bytes
        for _ in range(self._batch) if self._batch is not None else itertools.count():
            try:
                message = recv()
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                if exc.errno not in _QUIET and self._on_error is not None:
                    self._on_error(exc)
                return
            handle(message)
            if self._closed:
                return
            if budget is not None:
                budget -= len(message[-1] if isinstance(message, list) else message)
                if budget <= 0:
                    break
        if not self._scheduled:
            self._schedule()
