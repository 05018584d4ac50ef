"""The wire, spoken badly on purpose: raw DEALER sockets against a real daemon.

Malformed, oversized, wrong-version, unknown-op and wrong-argument messages get an error reply
when their request id can be read, are otherwise dropped, and never disturb the daemon or its
other clients.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
import zmq
from _daemon import Daemon

import kerneld
from kerneld import protocol as p


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(daemon.address)
    yield sock
    sock.close()
    ctx.term()


def _reply(sock: zmq.Socket[bytes]) -> p.Reply:
    msg = p.to_client_decoder.decode(sock.recv())
    assert isinstance(msg, p.Reply)
    return msg


def _request(op: str, args: dict[str, object] | None = None, *, id: str = "r1",
             v: int = p.VERSION) -> bytes:
    return p.encode(p.Request(v, id, op, args or {}))


def _still_serves(sock: zmq.Socket[bytes]) -> None:
    sock.send(_request("ping", id="alive"))
    reply = _reply(sock)
    assert reply.id == "alive" and reply.ok and reply.value["pong"] is True


def test_garbage_is_dropped_and_the_daemon_still_serves(raw: zmq.Socket[bytes],
                                                        daemon: Daemon) -> None:
    for junk in (b"", b"\x00\xff garbage", b"\xc1", msgspec.msgpack.encode([1, 2, 3]),
                 msgspec.msgpack.encode({"no": "id"})):
        raw.send(junk)
    _still_serves(raw)  # the first reply is the ping's: the junk got none
    assert "unreadable message dropped" in daemon.log


def test_malformed_request_with_an_id_gets_an_error(raw: zmq.Socket[bytes]) -> None:
    raw.send(msgspec.msgpack.encode({"t": "request", "id": "m1", "v": "one", "op": 5}))
    reply = _reply(raw)
    assert reply.id == "m1" and not reply.ok
    assert reply.error is not None and reply.error["type"] == "InvalidArgument"
    assert "malformed request" in reply.error["message"]
    _still_serves(raw)


def test_wrong_version_unknown_op_and_bad_args(raw: zmq.Socket[bytes]) -> None:
    raw.send(_request("ping", id="v9", v=99))
    reply = _reply(raw)
    assert reply.id == "v9" and reply.error["type"] == "InvalidArgument"
    assert "version 99" in reply.error["message"]

    raw.send(_request("rm_rf", id="u1"))
    reply = _reply(raw)
    assert reply.error["type"] == "InvalidArgument" and "unknown op" in reply.error["message"]

    raw.send(_request("__init__", id="u2"))  # not a way into the manager's attributes
    assert _reply(raw).error["type"] == "InvalidArgument"

    raw.send(_request("list_kernels", {"namespace": None, "evil": 1, "also": 2}, id="a1"))
    reply = _reply(raw)
    assert reply.error["type"] == "InvalidArgument"
    assert "unknown arguments also, evil" in reply.error["message"]

    raw.send(_request("execute", {"kernel_id": "x"}, id="a2"))
    assert "missing required argument code" in _reply(raw).error["message"]

    raw.send(_request("execute", {"kernel_id": 5, "code": "1"}, id="a3"))
    assert "kernel_id must be str" in _reply(raw).error["message"]

    raw.send(_request("execute", {"kernel_id": "x", "code": "1", "silent": 1}, id="a4"))
    assert "silent must be bool" in _reply(raw).error["message"]
    _still_serves(raw)


def test_several_frames_are_refused(raw: zmq.Socket[bytes]) -> None:
    raw.send_multipart([b"extra", _request("ping", id="mf")])
    reply = _reply(raw)
    assert reply.id == "mf" and "exactly one frame" in reply.error["message"]
    _still_serves(raw)


@pytest.mark.parametrize("shape", ["request-first", "empty-delimiter", "three-frames"])
def test_several_frames_are_answered_whichever_holds_the_request(raw: zmq.Socket[bytes],
                                                                  shape: str) -> None:
    """Issue 16 item 9: the id used to be read from the last frame only, so [request, extra]
    got no reply at all and the client hung."""
    req = _request("ping", id=f"mf-{shape}")
    frames = {"request-first": [req, b"extra"], "empty-delimiter": [b"", req],
              "three-frames": [b"junk", req, b"\xc1 more junk"]}[shape]
    raw.send_multipart(frames)
    reply = _reply(raw)
    assert reply.id == f"mf-{shape}" and not reply.ok
    assert reply.error["type"] == "InvalidArgument"
    assert "a request is exactly one frame" in reply.error["message"]
    _still_serves(raw)


def test_oversized_requests(raw: zmq.Socket[bytes], daemon: Daemon) -> None:
    big = _request("execute", {"kernel_id": "x", "code": "#" * (p.MAX_REQUEST_BYTES + 100)},
                   id="big")
    raw.send(big)
    reply = _reply(raw)
    assert reply.id == "big" and reply.error["type"] == "LimitExceeded"
    _still_serves(raw)
    # Beyond twice the limit ZeroMQ itself cuts the sender off; nothing reaches the daemon.
    raw.send(b"\x00" * (2 * p.MAX_REQUEST_BYTES + 10))
    with kerneld.connect(daemon.address) as client:  # other clients are unaffected
        kid = client.create_kernel()
        assert client.execute(kid, "1+1").success
        client.destroy_kernel(kid)
    _still_serves(raw)  # and the offender, reconnected, is served again


def test_exactly_one_reply_per_request_under_a_burst(raw: zmq.Socket[bytes]) -> None:
    ids = [f"b{i}" for i in range(300)]
    for rid in ids:
        raw.send(_request("get_kernel_ids", id=rid))
    seen = [_reply(raw).id for _ in ids]
    assert sorted(seen) == sorted(ids)
    raw.setsockopt(zmq.RCVTIMEO, 200)
    with pytest.raises(zmq.Again):
        raw.recv()
