"""The Jupyter framing and signing (`kerneld.jupyter.wire`) against jupyter_client's own
`Session` (in .venv through the dev extra): each side reads what the other writes."""

from __future__ import annotations

import pytest
from jupyter_client.session import Session

from kerneld.jupyter.wire import DELIM, BadMessage, Signer

KEY = b"0123456789abcdef"


def test_jupyter_client_reads_what_we_write() -> None:
    ours, theirs = Signer(KEY), Session(key=KEY)
    parent = theirs.msg("execute_request", {"code": "1"})
    frames = ours.serialize("stream", {"name": "stdout", "text": "hi"}, parent["header"],
                            idents=[b"topic"], buffers=[b"\x00raw"])
    idents, rest = theirs.feed_identities(frames)
    msg = theirs.deserialize(rest)
    assert idents == [b"topic"]
    assert msg["msg_type"] == "stream" and msg["content"] == {"name": "stdout", "text": "hi"}
    assert msg["parent_header"]["msg_id"] == parent["header"]["msg_id"]
    assert msg["header"]["version"] == "5.3" and msg["header"]["session"] == ours.session
    assert msg["header"]["date"].tzinfo is not None  # an ISO date with its zone, parsed
    assert [bytes(b) for b in msg["buffers"]] == [b"\x00raw"]


def test_we_read_what_jupyter_client_writes_and_refuse_replays() -> None:
    ours, theirs = Signer(KEY), Session(key=KEY)
    msg = theirs.msg("comm_msg", {"comm_id": "c", "data": {}})
    frames = [b"id1", *theirs.serialize(msg)] + [b"buf"]
    parsed = ours.parse(frames)
    assert parsed.idents == [b"id1"] and parsed.msg_type == "comm_msg"
    assert parsed.content == {"comm_id": "c", "data": {}} and parsed.buffers == [b"buf"]
    with pytest.raises(BadMessage, match="replayed"):
        ours.parse(frames)


def test_bad_messages_are_refused_with_the_reason() -> None:
    ours = Signer(KEY)
    forged = Session(key=b"another key")
    with pytest.raises(BadMessage, match="bad signature"):
        ours.parse(forged.serialize(forged.msg("kernel_info_request")))
    with pytest.raises(BadMessage, match="delimiter"):
        ours.parse([b"a", b"b"])
    with pytest.raises(BadMessage, match="frames after"):
        ours.parse([DELIM, b"sig", b"{}"])
    unsigned = Signer(b"")
    with pytest.raises(BadMessage, match="JSON object"):
        unsigned.parse([DELIM, b"", b"[]", b"{}", b"{}", b"{}"])


def test_unsupported_signature_schemes_are_named() -> None:
    with pytest.raises(ValueError, match="hmac-nosuchhash"):
        Signer(KEY, "hmac-nosuchhash")
    with pytest.raises(ValueError, match="rsa"):
        Signer(KEY, "rsa")
