"""The wire schema: round trips, validation of untrusted input, framing."""

from __future__ import annotations

import msgspec
import pytest

from kerneld import protocol as p
from kerneld.errors import InternalError, KernelNotFound, ProfileError, from_wire


def test_worker_messages_round_trip():
    for msg in (p.Hello(pid=7), p.Output("e1", "stream", {"name": "stdout", "text": "x"}),
                p.Done("e1", "ok", 3, {"data": {"text/plain": "1"}}, None),
                p.Answer("r1", {"status": "ok"})):
        assert p.from_worker_decoder.decode(p.encode(msg)) == msg


def test_manager_messages_round_trip():
    for msg in (p.Execute("e1", "1+1"), p.InputReply("e1", "v"), p.Complete("r", "pri", 3),
                p.Inspect("r", "len", 3, 1), p.IsComplete("r", "x"), p.Shutdown(),
                p.Activate({"A": "b"})):
        assert p.to_worker_decoder.decode(p.encode(msg)) == msg


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", msgspec.msgpack.encode({"t": "nope"}),
    msgspec.msgpack.encode({"t": "output", "exec_id": 1, "type": "stream", "data": {}}),
    msgspec.msgpack.encode({"t": "done", "exec_id": "e"}),  # missing status
    msgspec.msgpack.encode([1, 2, 3]),
])
def test_untrusted_worker_input_is_rejected(raw):
    with pytest.raises(p.DecodeError):
        p.from_worker_decoder.decode(raw)


def test_a_worker_cannot_send_manager_only_messages():
    with pytest.raises(p.DecodeError):
        p.from_worker_decoder.decode(p.encode(p.Execute("e", "code")))


def test_client_messages_round_trip():
    req = p.Request(v=p.VERSION, id="1", op="execute", args={"kernel_id": "k", "code": "1"})
    assert p.request_decoder.decode(p.encode(req)) == req
    ev = p.Event(v=1, id="1", event=p.KernelEvent("stream", {"text": "x"}, "k", "e"))
    assert p.to_client_decoder.decode(p.encode(ev)) == ev
    rep = p.Reply(v=1, id="1", ok=False, error=KernelNotFound("k").to_wire())
    assert p.to_client_decoder.decode(p.encode(rep)) == rep


def test_framing_handles_partial_and_multiple_frames():
    stream = p.frame(b"one") + p.frame(b"two") + p.frame(b"three")[:5]
    buffer = bytearray(stream)
    assert p.unframe(buffer) == [b"one", b"two"]
    buffer += p.frame(b"three")[5:]
    assert p.unframe(buffer) == [b"three"] and not buffer


def test_framing_refuses_absurd_lengths():
    with pytest.raises(ValueError, match="exceeds"):
        p.unframe(bytearray(b"\xff\xff\xff\xff"))


def test_execution_result_success_follows_status():
    base = {"execution_id": "e", "kernel_id": "k", "execution_count": 1, "result": None,
            "error": None, "outputs": [], "started": 1.0, "finished": 2.0}
    assert p.ExecutionResult(status="ok", **base).success
    assert not p.ExecutionResult(status="error", **base).success
    assert not p.ExecutionResult(status="aborted", **base).success


def test_errors_cross_the_wire_as_their_own_class():
    err = from_wire(ProfileError("default.toml:limits.memory: bad").to_wire())
    assert type(err) is ProfileError and str(err) == "default.toml:limits.memory: bad"
    assert type(from_wire({"type": "SomethingElse", "message": "m"})) is InternalError
    assert type(from_wire("garbage")) is InternalError
