"""The Jupyter messaging protocol's framing and signing (5.3), for the adapter's sockets.

One message on a ROUTER/PUB socket, as jupyter_client's `Session` writes it:

    [ident, ..., b"<IDS|MSG>", signature, header, parent_header, metadata, content, buffer, ...]

- `ident`s: ROUTER routing ids (a reply carries the request's), or an IOPub topic.
- `signature`: hex HMAC of the four JSON frames after it, with the connection file's `key`
  and `signature_scheme` (`hmac-sha256`; any `hmac-<hashlib name>` works); an empty key means
  no signing (signature `b""`), as jupyter_client allows.
- header: `msg_id`, `msg_type`, `session`, `username`, `date` (ISO 8601, UTC, "Z"), `version`.
- JSON is UTF-8; binary buffers travel as raw frames after the content.

Pure: no sockets. Everything received is untrusted: `parse` raises `BadMessage` (with why) on
a missing delimiter, a wrong signature, a replayed signature, or frames that are not JSON
objects; the adapter logs and drops such messages, as ipykernel does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = ["DELIM", "PROTOCOL_VERSION", "BadMessage", "Message", "Signer", "now_iso"]

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
_REPLAY_MEMORY = 4096  # signatures remembered to refuse replays (jupyter_client keeps more)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class BadMessage(ValueError):
    """A message that is dropped (not signed with our key, malformed, replayed)."""


def now_iso() -> str:
    """The header's `date`: nbclient's `record_timing` parses it; jupyter_client writes "Z"."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Message(msgspec.Struct):
    """One parsed message: routing ids, the four dicts, and binary buffers."""

    idents: list[bytes]
    header: dict[str, Any]
    parent: dict[str, Any]
    metadata: dict[str, Any]
    content: dict[str, Any]
    buffers: list[bytes]

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))


class Signer:
    """Signs what the kernel sends and checks what it receives, for one connection file.

    Also the kernel's session: every header it writes names `session` (one id per adapter
    process, as an ipykernel process has one) and a fresh `msg_id`.
    """

    def __init__(self, key: bytes, scheme: str = "hmac-sha256") -> None:
        if not scheme.startswith("hmac-"):
            raise ValueError(f"signature_scheme {scheme!r} is not supported (want hmac-<hash>, "
                             "e.g. hmac-sha256)")
        digest = scheme[len("hmac-"):]
        try:
            hashlib.new(digest)
        except ValueError:
            raise ValueError(f"signature_scheme {scheme!r}: unknown hash {digest!r}") from None
        self._key, self._digest = key, digest
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.session = uuid.uuid4().hex
        self._prefix = f"{self.session[:8]}_{os.getpid()}_"
        self._count = 0

    def sign(self, parts: list[bytes]) -> bytes:
        if not self._key:
            return b""
        mac = hmac.new(self._key, digestmod=self._digest)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode("ascii")

    # ------------------------------------------------------------------ sending

    def header(self, msg_type: str) -> dict[str, Any]:
        self._count += 1
        return {"msg_id": f"{self._prefix}{self._count}", "msg_type": msg_type,
                "session": self.session, "username": "kerneld", "date": now_iso(),
                "version": PROTOCOL_VERSION}

    def serialize(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None,
                  *, idents: list[bytes] | None = None, metadata: dict[str, Any] | None = None,
                  buffers: list[bytes] | None = None) -> list[bytes]:
        """The frames of one new message (its header made here)."""
        parts = [_encode(self.header(msg_type)), _encode(parent or {}),
                 _encode(metadata or {}), _encode(content)]
        return [*(idents or []), DELIM, self.sign(parts), *parts, *(buffers or [])]

    # ------------------------------------------------------------------ receiving

    def parse(self, frames: list[bytes]) -> Message:
        """Check and decode one received message; `BadMessage` says why it is dropped."""
        try:
            at = frames.index(DELIM)
        except ValueError:
            raise BadMessage("no <IDS|MSG> delimiter") from None
        if len(frames) < at + 6:
            raise BadMessage(f"{len(frames) - at - 1} frames after the delimiter (want ≥ 5)")
        signature, parts = frames[at + 1], frames[at + 2:at + 6]
        if self._key:
            if not hmac.compare_digest(signature, self.sign(parts)):
                raise BadMessage("bad signature")
            if signature in self._seen:
                raise BadMessage("replayed signature")
            self._seen[signature] = None
            if len(self._seen) > _REPLAY_MEMORY:
                self._seen.popitem(last=False)
        try:
            header, parent, metadata, content = (_decode(part) for part in parts)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadMessage(f"a frame is not a JSON object: {exc}") from None
        return Message(frames[:at], header, parent, metadata, content, frames[at + 6:])
