"""`kerneld.zmqio.Drain`, the edge-triggered reader every busy ZeroMQ socket of kerneld uses,
on in-process (inproc://) socket pairs: everything waiting is handled without a new edge,
batches yield to the loop, an edge consumed by the socket's own bookkeeping is made up for by
`after_send`, and a ping-pong answered outside the drain runs to its end."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq

from kerneld.zmqio import Drain


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    router.bind("inproc://drain")
    dealer.connect("inproc://drain")
    yield router, dealer
    router.close()
    dealer.close()
    ctx.term()


async def _until(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def test_everything_waiting_is_handled_in_batches(
        pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    router, dealer = pair
    for i in range(100):
        dealer.send(b"%d" % i)
    while not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        await asyncio.sleep(0.001)
    got: list[bytes] = []
    drain = Drain(asyncio.get_running_loop(), router, lambda m: got.append(m[1]), batch=10)
    await asyncio.sleep(0)
    assert 10 <= len(got) <= 20  # one or two wake-ups' worth, then the loop's turn
    await _until(lambda: len(got) == 100)  # the rest without any new edge
    assert got == [b"%d" % i for i in range(100)]
    drain.close()
    dealer.send(b"late")
    await asyncio.sleep(0.05)
    assert len(got) == 100  # closed: no longer watched


async def test_a_byte_budget_bounds_a_wake_up(
        pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    router, dealer = pair
    for _ in range(8):
        dealer.send(b"x" * 1000)
    while not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        await asyncio.sleep(0.001)
    sizes: list[int] = []
    drain = Drain(asyncio.get_running_loop(), router, lambda m: sizes.append(len(m[-1])),
                  copy=False, batch_bytes=2500)
    await asyncio.sleep(0)
    assert 3 <= len(sizes) <= 6  # 3 messages reach 2,500 bytes, then the loop's turn
    await _until(lambda: len(sizes) == 8)
    drain.close()


async def test_after_send_finds_what_a_consumed_edge_hid(
        pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    """A send processes the socket's pending commands, as reading ZMQ_EVENTS does: the fd's
    edge for a message that arrived meanwhile is gone, and the fd stays quiet."""
    router, dealer = pair
    got: list[list[bytes]] = []
    drain = Drain(asyncio.get_running_loop(), router, got.append)
    await asyncio.sleep(0.01)
    dealer.send(b"hidden")
    while not router.getsockopt(zmq.EVENTS) & zmq.POLLIN:  # what a send does internally
        pass
    await asyncio.sleep(0.05)
    assert got == []  # waiting, but no wake-up will come
    drain.after_send()
    await asyncio.sleep(0)
    assert [m[1] for m in got] == [b"hidden"]
    drain.close()


async def test_a_ping_pong_answered_outside_the_drain_runs_to_its_end(
        pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    """Both sides answer from a later callback (as the daemon answers `execute` from a
    future's done-callback), each send followed by `after_send`."""
    router, dealer = pair
    loop = asyncio.get_running_loop()
    rounds = 0

    def answer(msg: list[bytes]) -> None:
        router.send_multipart(msg, zmq.NOBLOCK)
        server.after_send()

    def ask(msg: bytes) -> None:
        dealer.send(msg, zmq.NOBLOCK)
        client.after_send()

    def on_router(msg: list[bytes]) -> None:
        loop.call_soon(answer, msg)

    def on_dealer(msg: bytes) -> None:
        nonlocal rounds
        rounds += 1
        if rounds < 2000:
            loop.call_soon(ask, msg)

    server = Drain(loop, router, on_router)
    client = Drain(loop, dealer, on_dealer, multipart=False)
    dealer.send(b"ping")
    client.after_send()
    await _until(lambda: rounds == 2000, timeout=20)
    server.close()
    client.close()
