"""The fuzzers' side of the wire: a raw DEALER that keeps a ledger of every id it sent.

`Ledger` sends frames and reads everything the daemon sends back, checking the protocol's
promises as each frame arrives, not only for the requests a test waits on:

- every frame decodes as an `Event` or a `Reply` and carries an id this client sent;
- each request gets at most one terminal `Reply` (a second one is a violation, even for a
  request answered long ago); a message of several frames is answered at most once;
- `Event`s only come for `execute_stream` requests, before their reply, and for subscriptions
  (after their reply, until they are unsubscribed);
- errors are `{type, message}` with a type of the `kerneld.errors` tree.

Violations are collected in `problems` (with what was sent), so a test can report all of them.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from kerneld import errors
from kerneld import protocol as p

ERROR_TYPES = frozenset(errors._BY_NAME)


class _IdOnly(msgspec.Struct):
    id: str


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def readable_id(frame: bytes) -> str | None:
    """The request id the protocol says can be read from `frame` (a map with an `id` str)."""
    try:
        return _id_decoder.decode(frame).id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None


@dataclass
class Entry:
    """One request id: what was sent and what came back."""

    rid: str
    what: str                        # a summary of the request, for reports
    op: str | None = None            # None: a raw frame
    must_answer: bool = True         # False: zero or one reply allowed
    group: list[str] = field(default_factory=list)  # ids of one message: one reply in all
    events: list[p.KernelEvent] = field(default_factory=list)
    reply: p.Reply | None = None
    sent: float = field(default_factory=time.monotonic)
    subscribed: bool = False         # a subscribe answered ok and not yet unsubscribed

    def forget(self) -> None:
        """Drop what the reply carried (a long run keeps every id, not every value)."""
        if self.reply is not None:
            self.reply = p.Reply(self.reply.v, "", self.reply.ok, None,
                                 None if self.reply.ok else {"type": error_type(self.reply)})
        self.events = []


class Ledger:
    """A DEALER on `address` and the record of every id sent on it."""

    def __init__(self, address: str, prefix: str) -> None:
        self.address = address
        self.ctx = zmq.Context()
        self.sock = self._socket()
        self.prefix = prefix
        self._ids = itertools.count(1)
        self.entries: dict[str, Entry] = {}
        self.problems: list[str] = []
        self.received = 0

    def _socket(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, uuid.uuid4().bytes)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(self.address)
        return sock

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    # ------------------------------------------------------------------ ids

    def fresh_id(self) -> str:
        return f"{self.prefix}{next(self._ids)}"

    def unique(self, wanted: str | None) -> str:
        """`wanted` if this ledger never used it, else it with a fresh suffix."""
        if wanted is None:
            return self.fresh_id()
        rid = wanted
        while rid in self.entries:
            rid = f"{wanted}#{next(self._ids)}"
        return rid

    def ids(self) -> Any:
        """An iterator of fresh ids (for raw frames that embed them)."""
        while True:
            yield self.fresh_id()

    # ------------------------------------------------------------------ sending

    def register(self, entry: Entry) -> Entry:
        self.entries[entry.rid] = entry
        return entry

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames, copy=sum(map(len, frames)) < 65536)

    def send_request(self, rid: str, op: str, args: dict[str, Any], v: int = p.VERSION,
                     what: str | None = None) -> Entry:
        entry = self.register(Entry(rid, what or op, op))
        self.send([p.encode(p.Request(v, rid, op, args))])
        return entry

    def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0
             ) -> p.Reply:
        """A request of the test itself: its reply (any violation is still recorded)."""
        entry = self.send_request(self.fresh_id(), op, args or {})
        self.wait([entry.rid], timeout)
        reply = entry.reply
        if reply is None:
            raise AssertionError(f"no reply to {op}({args}) within {timeout} s")
        entry.forget()
        return reply

    # ------------------------------------------------------------------ receiving

    def pump(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for a message, then read all that are waiting."""
        n = 0
        if not self.sock.poll(timeout * 1000, zmq.POLLIN):
            return n
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return n
            n += 1
            self._on(frames)

    def drain(self, timeout: float) -> int:
        """Read everything that arrives within `timeout` seconds."""
        n = 0
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            n += self.pump(left)
        return n

    def wait(self, rids: list[str], timeout: float) -> list[str]:
        """Pump until every id in `rids` has its reply; those still without one."""
        deadline = time.monotonic() + timeout
        missing = [r for r in rids if self.entries[r].reply is None]
        while missing and time.monotonic() < deadline:
            self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
            missing = [r for r in missing if self.entries[r].reply is None]
        return missing

    def wait_any(self, rids: list[str], timeout: float) -> bool:
        """Pump until one of `rids` has its reply (the frames of one message); whether one has."""
        deadline = time.monotonic() + timeout
        while not any(self.entries[r].reply is not None for r in rids):
            if time.monotonic() >= deadline:
                return False
            self.pump(min(0.05, max(0.0, deadline - time.monotonic())))
        return True

    def _problem(self, text: str) -> None:
        self.problems.append(text)

    def _on(self, frames: list[bytes]) -> None:
        self.received += 1
        if len(frames) != 1:
            self._problem(f"a message of {len(frames)} frames from the daemon")
        try:
            msg = p.to_client_decoder.decode(frames[-1])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._problem(f"undecodable frame from the daemon ({exc}): {frames[-1][:200]!r}")
            return
        entry = self.entries.get(msg.id)
        if entry is None:
            self._problem(f"{type(msg).__name__} for id {msg.id!r:.80} that was never sent")
            return
        if msg.v != p.VERSION:
            self._problem(f"{entry.what}: frame with v={msg.v}")
        if isinstance(msg, p.Event):
            self._on_event(entry, msg)
        else:
            self._on_reply(entry, msg)

    def _on_event(self, entry: Entry, msg: p.Event) -> None:
        streaming = entry.op == "execute_stream" and entry.reply is None
        if streaming or (entry.op == "subscribe" and entry.subscribed):
            entry.events.append(msg.event)
        else:
            state = "after its reply" if entry.reply is not None else "before its reply"
            self._problem(f"{entry.what} [{entry.rid:.40}]: an Event {state} "
                          f"({msg.event.type} of {msg.event.kernel_id})")

    def _on_reply(self, entry: Entry, msg: p.Reply) -> None:
        if entry.reply is not None:
            self._problem(f"{entry.what} [{entry.rid:.40}]: a second terminal reply "
                          f"(first ok={entry.reply.ok}, then ok={msg.ok} {msg.error})")
            return
        for other in entry.group:
            if other != entry.rid and self.entries[other].reply is not None:
                self._problem(f"{entry.what}: one message answered twice (ids {other!r:.40} "
                              f"and {entry.rid!r:.40})")
        entry.reply = msg
        if msg.ok:
            if msg.error is not None:
                self._problem(f"{entry.what}: ok reply with an error {msg.error}")
            if entry.op == "subscribe":
                entry.subscribed = True
            return
        err = msg.error
        if (not isinstance(err, dict) or err.get("type") not in ERROR_TYPES
                or not isinstance(err.get("message"), str)):
            self._problem(f"{entry.what}: error reply that is not a kerneld error: {err!r:.300}")


def error_type(reply: p.Reply) -> str | None:
    return None if reply.ok else str((reply.error or {}).get("type"))
