"""The request service (`kerneld.service`) against a fake `Peer` and a real `KernelManager`
over fake backends (`tests/_fake_backend.py`): no sockets, no zygote, no processes.

Kernels are created through the service, by the callers the tests name, so ownership, scoping
and the caps act on what the manager really recorded and queued; executions are answered by
the fake backend (at once, or when a test says so: `FakeFactory.auto = False`), and the events
subscribers and streams see are the ones the kernel record dispatches. Unexpected failures
are produced the way a host produces them: a backend whose memory read or start raises.

A stub manager is kept for one test only (`test_failures_a_real_manager_never_reports`): a
real manager's execution futures only ever get a result (a death, a restart, a destroy or a
shutdown ends an execution with an `ExecutionResult` too), and its streams cannot raise, so
the service's answers to a future that raises or is cancelled, and to a stream that fails,
can only be reached through a stand-in.

What the service promises: one terminal reply per request whatever happens, the caps, the
scoping of callers, subscriptions that end with their peer."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from kerneld import protocol as p
from kerneld import service as service_module
from kerneld.access import Caller, ProfileAccess
from kerneld.config import DaemonConfig
from kerneld.errors import (
    DaemonUnavailable,
    InternalError,
    InvalidArgument,
    KernelError,
    KernelNotFound,
    LimitExceeded,
    PermissionDenied,
)
from kerneld.manager import KernelManager
from kerneld.service import Service
from tests._fake_backend import FakeBackend, FakeFactory

ROOT = Caller(0, 0, 1)
ALICE = Caller(1000, 1000, 11)
BOB = Caller(2000, 2000, 22)
# the daemon's manager defaults (profiles by name, mounts under /srv/kerneld only, no
# in_process kernels), with the packaged profiles only: nothing of this host's /etc
MANAGER_CONFIG = replace(DaemonConfig().manager, profile_dirs=())


class FakePeer:
    """A `Peer` that records what the service sends it."""

    def __init__(self, key: str = "p1", caller: Caller = ROOT, room: bool = True) -> None:
        self.key, self._caller, self.room = key, caller, room
        self.closed = False
        self.replies: list[tuple[str, Any, KernelError | None]] = []
        self.events: list[tuple[str, p.KernelEvent]] = []

    @property
    def caller(self) -> Caller:
        return self._caller

    def reply(self, rid: str, value: Any = None, error: KernelError | None = None) -> None:
        self.replies.append((rid, value, error))

    def event_nowait(self, rid: str, event: p.KernelEvent) -> bool:
        if self.room:
            self.events.append((rid, event))
        return self.room

    async def event(self, rid: str, event: p.KernelEvent) -> None:
        self.events.append((rid, event))

    def answered(self, rid: str) -> bool:
        return any(r == rid for r, _, _ in self.replies)

    def answer(self, rid: str) -> tuple[Any, KernelError | None]:
        """The one terminal reply to `rid` (fails if there is none or more than one)."""
        mine = [(value, error) for r, value, error in self.replies if r == rid]
        assert len(mine) == 1, (rid, mine)
        return mine[0]


@pytest.fixture
def factory() -> FakeFactory:
    return FakeFactory()


@pytest.fixture
async def mgr(factory: FakeFactory) -> AsyncIterator[KernelManager]:
    manager = KernelManager(MANAGER_CONFIG, backends=factory)
    yield manager
    await manager.close()


@pytest.fixture
def svc(mgr: KernelManager) -> Service:
    return Service(mgr, DaemonConfig(), lambda: {"status": "running"})


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def _until(condition: Callable[[], bool]) -> None:
    """Run the loop until `condition` holds (the fake backends need no time, only turns)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def _create(svc: Service, peer: FakePeer, rid: str = "create", **args: Any) -> str:
    """A kernel created through the service by `peer`'s caller; its id."""
    svc.handle(peer, rid, "create_kernel", args)
    await _until(lambda: peer.answered(rid))
    await _settle()  # and its task is done
    value, error = peer.answer(rid)
    assert error is None and isinstance(value, str), error
    return value


def _backend(mgr: KernelManager, kernel_id: str) -> FakeBackend:
    backend = mgr._get(kernel_id).backend
    assert isinstance(backend, FakeBackend)
    return backend


def _output(backend: FakeBackend, text: str, index: int = -1) -> None:
    """The runtime prints `text` in the execution it was sent last (or `index`)."""
    exec_id = backend.executes[index].exec_id
    backend.host.on_message(p.Output(exec_id, "stream", {"name": "stdout", "text": text}))


def _sent_last(backend: FakeBackend, code: str) -> bool:
    return backend.executes[-1].code == code


def _execute(kernel_id: str, code: str = "1+1") -> dict[str, Any]:
    return {"kernel_id": kernel_id, "code": code}


# ---------------------------------------------------------------------- one reply, always

async def test_every_request_gets_exactly_one_reply(svc: Service, mgr: KernelManager) -> None:
    peer = FakePeer()
    k1 = await _create(svc, peer, id="k1")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("1", "ping", {}), ("2", "nope", {}), ("3", "ping_kernel", {"kernel_id": "k1"}),
        ("4", "ping_kernel", {"kernel_id": "zz"}), ("5", "ping_kernel", {}),
        ("6", "ping_kernel", {"kernel_id": "k1", "extra": 1}), ("7", "get_kernel_ids", {}),
        ("8", "execute", _execute("k1")), ("9", "status", {}),
        ("10", "create_kernel", {"namespace": "n"}), ("11", "get_kernel", {"kernel_id": "k1"}),
        ("12", "execute_stream", _execute("k1")),
        ("13", "execute", _execute("zz")), ("14", "get_pool_stats", {}),
    ]
    for rid, op, args in requests:
        svc.handle(peer, rid, op, args)
    await _until(lambda: all(peer.answered(rid) for rid, _, _ in requests))
    await _settle()
    for rid, _, _ in requests:
        peer.answer(rid)
    assert len(peer.replies) == len(requests) + 1  # and the create above
    assert peer.answer("1")[0]["pong"] is True and peer.answer("1")[0]["protocol"] == p.VERSION
    assert peer.answer("3") == (True, None)
    assert peer.answer("7") == (["k1"], None)
    result, error = peer.answer("8")
    assert error is None and result.kernel_id == k1 and result.status == "ok"
    assert result.result == {"data": {"text/plain": "2"}}
    assert peer.answer("9") == ({"status": "running"}, None)
    created, error = peer.answer("10")
    assert error is None and created.startswith("n:") and created in mgr.get_kernel_ids()
    info, error = peer.answer("11")
    assert error is None and info["id"] == "k1" and info["pid"] == _backend(mgr, k1).pid
    assert peer.answer("12")[1] is None and peer.answer("12")[0].status == "ok"
    assert peer.answer("4") == (False, None)  # the manager's answer for an unknown kernel
    assert isinstance(peer.answer("13")[1], KernelNotFound)
    for rid in ("2", "5", "6"):
        assert isinstance(peer.answer(rid)[1], InvalidArgument)
    assert peer.answer("14") == (mgr.get_pool_stats(), None)
    assert [m.code for m in _backend(mgr, k1).executes] == ["1+1", "1+1"]


async def test_unknown_ops_and_bad_arguments_are_refused_before_anything_runs(
        svc: Service, mgr: KernelManager, factory: FakeFactory) -> None:
    peer = FakePeer()
    await _create(svc, peer, id="k1")
    svc.handle(peer, "a", "nope", {})
    svc.handle(peer, "b", 42, {})  # type: ignore[arg-type]  # a front may pass anything
    svc.handle(peer, "c", "execute", {"kernel_id": "k1"})
    svc.handle(peer, "d", "execute", {"kernel_id": "k1", "code": 1})
    svc.handle(peer, "e", "execute", {"kernel_id": "k1", "code": "1", "bogus": True})
    svc.handle(peer, "f", "create_kernel", {"env": []})
    await _settle()
    replies = [(rid, error) for rid, _, error in peer.replies if rid != "create"]
    assert [rid for rid, _ in replies] == ["a", "b", "c", "d", "e", "f"]  # one each, at once
    errors = dict(replies)
    assert all(isinstance(e, InvalidArgument) for e in errors.values())
    assert str(errors["a"]) == "unknown op 'nope'" and str(errors["b"]) == "unknown op '42'"
    assert "missing required argument code" in str(errors["c"])
    assert "argument code must be str, not int" in str(errors["d"])
    assert "unknown argument bogus" in str(errors["e"])
    assert "argument env must be dict or null, not list" in str(errors["f"])
    assert _backend(mgr, "k1").executes == [] and len(factory.made) == 1
    assert mgr.get_kernel_ids() == ["k1"] and svc.in_flight == 0


async def test_unexpected_errors_are_internal_errors_without_host_paths(
        svc: Service, mgr: KernelManager, factory: FakeFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    peer = FakePeer()
    await _create(svc, peer, id="k1")
    backend = _backend(mgr, "k1")

    def unreadable() -> int:  # a cgroup's memory.current that cannot be read
        raise FileNotFoundError(2, "No such file or directory",
                                "/sys/fs/cgroup/kerneld/k1/memory.current")

    backend.memory_bytes = unreadable  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="kerneld.service"):
        svc.handle(peer, "1", "get_kernel", {"kernel_id": "k1"})     # a local op
        svc.handle(peer, "2", "list_kernels", {})                    # a plain call
        # a coroutine's failure (answered from a task): the new backend's start fails
        factory.fail = RuntimeError("cannot write /sys/fs/cgroup/kerneld/k1/memory.max")
        svc.handle(peer, "3", "restart_kernel", {"kernel_id": "k1"})
        await _until(lambda: peer.answered("3"))
    first, second, third = (peer.answer(rid)[1] for rid in ("1", "2", "3"))
    assert all(isinstance(e, InternalError) for e in (first, second, third))
    assert str(first) == "get_kernel: FileNotFoundError: [Errno 2] No such file or directory"
    assert str(second) == "list_kernels: FileNotFoundError: [Errno 2] No such file or directory"
    assert str(third) == "restart_kernel: RuntimeError: cannot write <cgroup>"
    assert "/sys/fs/cgroup/kerneld/k1/memory.max" in caplog.text  # the log has the rest
    assert mgr.list_kernels()[0]["status"] == "dead"  # the manager's own account of it


# ---------------------------------------------------------------------- execute and streams

async def test_execute_is_answered_from_its_future_without_a_task(
        svc: Service, mgr: KernelManager, factory: FakeFactory) -> None:
    peer = FakePeer()
    factory.auto = False  # the backend answers when told
    await _create(svc, peer, id="k1")
    backend = _backend(mgr, "k1")
    svc.handle(peer, "1", "execute", _execute("k1", "a = 1"))
    svc.handle(peer, "2", "execute", _execute("k1", "b = 2"))
    await _settle()
    assert svc.in_flight == 0 and not peer.answered("1") and not peer.answered("2")
    assert [m.code for m in backend.executes] == ["a = 1"]  # the second waits its turn
    backend.done(backend.executes[0].exec_id, count=7)
    await _settle()
    value, error = peer.answer("1")
    assert error is None and value.execution_id == backend.executes[0].exec_id
    assert value.execution_count == 7 and value.result == {"data": {"text/plain": "2"}}
    assert not peer.answered("2") and [m.code for m in backend.executes] == ["a = 1", "b = 2"]
    backend.die()  # the running one ends with the kernel: a result, not an error
    await _settle()
    value, error = peer.answer("2")
    assert error is None and value.status == "error" and value.error["ename"] == "KernelDied"
    assert svc.in_flight == 0


async def test_an_execution_the_manager_refuses_is_answered_at_once_and_not_counted(
        mgr: KernelManager, factory: FakeFactory) -> None:
    mgr.reconfigure(replace(mgr.config, max_queued_executions=1))
    config = replace(DaemonConfig(), max_queued_executions_per_client=1)
    svc = Service(mgr, config, dict)
    peer = FakePeer()
    factory.auto = False
    await _create(svc, peer, id="k1")
    await _create(svc, peer, "c2", id="k2")
    svc.handle(FakePeer("other"), "0", "execute", _execute("k1"))  # k1 is full now
    svc.handle(peer, "1", "execute", _execute("k1"))
    refused = peer.answer("1")[1]
    assert isinstance(refused, LimitExceeded) and "max_queued_executions = 1" in str(refused)
    svc.handle(peer, "2", "execute", _execute("k2"))  # the refusal took none of its room
    assert not peer.answered("2") and len(_backend(mgr, "k2").executes) == 1


async def test_a_stream_sends_its_events_then_the_result_without_outputs(
        svc: Service, mgr: KernelManager, factory: FakeFactory) -> None:
    peer = FakePeer()
    factory.auto = False
    await _create(svc, peer, id="k1")
    backend = _backend(mgr, "k1")
    svc.handle(peer, "s", "execute_stream", _execute("k1", "print('a'); print('b')"))
    assert svc.in_flight == 1
    await _until(lambda: len(backend.executes) == 1)
    exec_id = backend.executes[0].exec_id
    _output(backend, "a")
    _output(backend, "b")
    await _settle()
    assert [(rid, e.type, e.data["text"]) for rid, e in peer.events] == [
        ("s", "stream", "a"), ("s", "stream", "b")]
    assert not peer.answered("s")  # the result comes after every event
    backend.done(exec_id)
    await _until(lambda: peer.answered("s"))
    assert [(rid, e.type, e.execution_id) for rid, e in peer.events] == [
        ("s", "stream", exec_id), ("s", "stream", exec_id), ("s", "execute_result", exec_id)]
    value, error = peer.answer("s")
    assert error is None and value.execution_id == exec_id and value.status == "ok"
    assert value.outputs == [] and value.result == {"data": {"text/plain": "2"}}
    await _until(lambda: svc.in_flight == 0)


async def test_a_stream_ended_by_a_death_sends_the_error_then_its_result(
        svc: Service, mgr: KernelManager, factory: FakeFactory) -> None:
    peer = FakePeer()
    factory.auto = False
    await _create(svc, peer, id="k1")
    backend = _backend(mgr, "k1")
    svc.handle(peer, "s", "execute_stream", _execute("k1"))
    await _until(lambda: len(backend.executes) == 1)
    _output(backend, "partial")
    backend.die()
    await _until(lambda: peer.answered("s"))
    assert [e.type for _, e in peer.events] == ["stream", "execute_error"]
    value, error = peer.answer("s")
    assert error is None and value.status == "error" and value.error["ename"] == "KernelDied"
    assert value.outputs == []
    await _until(lambda: svc.in_flight == 0)


async def test_a_stream_to_a_closed_peer_stops_sending(svc: Service, mgr: KernelManager) -> None:
    peer = FakePeer()
    await _create(svc, peer, id="k1")
    peer.closed = True
    svc.handle(peer, "s", "execute_stream", _execute("k1"))
    await _until(lambda: svc.in_flight == 0)
    assert len(_backend(mgr, "k1").executes) == 1  # it ran to its end
    assert not peer.events and [rid for rid, _, _ in peer.replies] == ["create"]


# ---------------------------------------------------------------------- caps

async def test_executions_are_capped_per_peer(svc: Service, mgr: KernelManager,
                                              factory: FakeFactory) -> None:
    svc.config = replace(svc.config, max_queued_executions_per_client=2)
    one, two = FakePeer("one"), FakePeer("two")
    factory.auto = False  # nothing ends until the test says so
    await _create(svc, one, id="k1")
    backend = _backend(mgr, "k1")
    for rid in ("1", "2", "3"):
        svc.handle(one, rid, "execute", _execute("k1", f"x = {rid}"))
    svc.handle(one, "4", "execute_stream", _execute("k1", "x = 4"))
    assert "max_queued_executions_per_client = 2" in str(one.answer("3")[1])
    assert isinstance(one.answer("4")[1], LimitExceeded)
    svc.handle(two, "1", "execute", _execute("k1", "y = 1"))  # another peer: its own count
    assert not two.replies and mgr.queued_executions()[0] == 3  # running, or queued behind
    assert [m.code for m in backend.executes] == ["x = 1"]
    backend.done(backend.executes[0].exec_id)
    await _settle()
    assert one.answer("1")[1] is None
    svc.handle(one, "5", "execute", _execute("k1", "x = 5"))  # room again
    assert not one.answered("5") and mgr.queued_executions()[0] == 3
    for code in ("x = 2", "y = 1", "x = 5"):  # the kernel's FIFO, whoever queued them
        await _until(functools.partial(_sent_last, backend, code))
        backend.done(backend.executes[-1].exec_id)
    await _settle()
    assert [m.code for m in backend.executes] == ["x = 1", "x = 2", "y = 1", "x = 5"]
    assert one.answer("2")[1] is None and one.answer("5")[1] is None
    assert two.answer("1")[1] is None and mgr.queued_executions() == (0, 0)


async def test_requests_in_flight_are_capped(svc: Service, mgr: KernelManager,
                                             factory: FakeFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MAX_INFLIGHT", 2)
    peer = FakePeer()
    await _create(svc, peer, id="k1")
    factory.gate = asyncio.Event()  # a new backend's start waits for it: restarts stay open
    for rid in ("1", "2", "3"):
        svc.handle(peer, rid, "restart_kernel", {"kernel_id": "k1"})
    await _settle()
    assert [rid for rid, _, _ in peer.replies] == ["create", "3"] and svc.in_flight == 2
    assert "working on 2 requests already" in str(peer.answer("3")[1])
    svc.handle(peer, "4", "execute", _execute("k1"))  # any request, task or not
    assert isinstance(peer.answer("4")[1], LimitExceeded)
    factory.gate.set()
    await _until(lambda: peer.answered("1") and peer.answered("2") and svc.in_flight == 0)
    assert peer.answer("1") == (True, None) and peer.answer("2") == (True, None)
    assert len(factory.made) == 3  # both restarts really ran, one after the other
    svc.handle(peer, "5", "execute", _execute("k1"))
    await _until(lambda: peer.answered("5"))
    assert peer.answer("5")[0].status == "ok" and svc.in_flight == 0  # the fast path: no task


async def test_subscriptions_are_capped_per_peer(svc: Service, mgr: KernelManager,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MAX_SUBSCRIPTIONS_PER_PEER", 2)
    one, two = FakePeer("one"), FakePeer("two")
    await _create(svc, one, id="k1")
    for rid in ("1", "2", "3"):
        svc.handle(one, rid, "subscribe", {"kernel_id": "k1", "event_type": "kernel_died"})
    svc.handle(two, "1", "subscribe", {"kernel_id": "k1", "event_type": "kernel_died"})
    assert one.answer("2") == ({"subscription": "2"}, None)
    assert str(one.answer("3")[1]) == "at most 2 subscriptions per client"
    assert two.answer("1") == ({"subscription": "1"}, None)
    assert svc.subscriptions == 3
    svc.handle(one, "4", "unsubscribe", {"subscription": "1"})
    svc.handle(one, "5", "subscribe", {"kernel_id": "k1", "event_type": "*"})
    assert one.answer("4") == (True, None) and one.answer("5")[1] is None
    _backend(mgr, "k1").die()
    assert [(rid, e.type) for rid, e in one.events] == [("2", "kernel_died"),
                                                        ("5", "kernel_died")]
    assert [(rid, e.type) for rid, e in two.events] == [("1", "kernel_died")]


# ---------------------------------------------------------------------- subscriptions

async def test_subscription_events_and_their_end(svc: Service, mgr: KernelManager,
                                                 factory: FakeFactory,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    peer, other = FakePeer(), FakePeer("p2")
    factory.auto = False
    await _create(svc, peer, id="k1")
    backend = _backend(mgr, "k1")
    svc.handle(peer, "s", "subscribe", {"kernel_id": "k1", "event_type": "stream"})
    svc.handle(peer, "d", "subscribe", {"kernel_id": "k1", "event_type": "kernel_died"})
    svc.handle(other, "o", "subscribe", {"kernel_id": "k1", "event_type": "*"})
    svc.handle(peer, "x", "subscribe", {"kernel_id": "k1", "event_type": "nope"})
    svc.handle(peer, "y", "subscribe", {"kernel_id": "zz", "event_type": "kernel_died"})
    assert "unknown event type 'nope'" in str(peer.answer("x")[1])
    assert isinstance(peer.answer("y")[1], KernelNotFound)
    svc.handle(other, "e", "execute", _execute("k1"))
    _output(backend, "hello")
    assert [(rid, e.type, e.data["text"]) for rid, e in peer.events] == [("s", "stream", "hello")]
    peer.room = False  # a slow subscriber: the event is dropped, and counted
    with caplog.at_level(logging.WARNING, logger="kerneld.service"):
        _output(backend, "dropped")
        svc.tick()  # the warnings are written out periodically
    assert "subscriber too slow, event dropped" in caplog.text and len(peer.events) == 1
    peer.room = True
    svc.peer_gone("p1")
    assert svc.subscriptions == 1  # the other peer's
    _output(backend, "after")
    backend.die()
    assert len(peer.events) == 1  # neither the stream nor the death reached a gone peer
    assert [e.type for _, e in other.events] == ["stream", "stream", "stream", "kernel_died"]


async def test_tick_forgets_subscriptions_of_kernels_that_are_gone(
        svc: Service, mgr: KernelManager) -> None:
    peer = FakePeer()
    await _create(svc, peer, id="a1")
    await _create(svc, peer, "c2", id="k1")
    svc.handle(peer, "s", "subscribe", {"kernel_id": "a1", "event_type": "kernel_died"})
    svc.handle(peer, "t", "subscribe", {"kernel_id": "k1", "event_type": "kernel_died"})
    svc.handle(peer, "d", "destroy_kernel", {"kernel_id": "a1"})
    await _until(lambda: peer.answered("d"))
    assert svc.subscriptions == 2  # the manager dropped a1's listeners; the service not yet
    svc.tick()
    assert svc.subscriptions == 1
    assert peer.answer("d") == (None, None)
    svc.handle(peer, "u", "unsubscribe", {"subscription": "s"})
    assert peer.answer("u") == (False, None)  # forgotten already
    svc.handle(peer, "v", "unsubscribe", {"subscription": "t"})
    assert peer.answer("v") == (True, None)


# ---------------------------------------------------------------------- callers

async def test_another_callers_kernel_and_no_kernel_are_refused_in_the_same_words(
        svc: Service) -> None:
    bob, alice = FakePeer("b", BOB), FakePeer("a", ALICE)
    long_id = "x" * 100
    await _create(svc, bob, id=long_id)
    svc.handle(alice, "theirs", "get_execution_info", {"kernel_id": long_id})
    svc.handle(alice, "none", "get_execution_info", {"kernel_id": "y" * 100})
    _, theirs = alice.answer("theirs")
    _, none = alice.answer("none")
    assert isinstance(theirs, KernelNotFound) and isinstance(none, KernelNotFound)
    assert str(theirs).replace("x", "y") == str(none)  # nothing tells that it exists
    assert "(100 characters)" in str(none)


async def test_a_caller_sees_only_its_own_kernels(svc: Service, mgr: KernelManager,
                                                  factory: FakeFactory) -> None:
    alice, bob, root = FakePeer("a", ALICE), FakePeer("b", BOB), FakePeer("r", ROOT)
    await _create(svc, root, id="k1")
    await _create(svc, alice, id="a1")
    await _create(svc, bob, id="b1")
    assert [mgr.owner_of(k) for k in ("k1", "a1", "b1")] == [None, "uid:1000", "uid:2000"]
    svc.handle(alice, "1", "ping_kernel", {"kernel_id": "b1"})
    svc.handle(alice, "2", "ping_kernel", {"kernel_id": "a1"})
    svc.handle(alice, "3", "execute", _execute("k1"))
    svc.handle(alice, "4", "get_kernel_ids", {})
    svc.handle(alice, "5", "list_kernels", {})
    svc.handle(alice, "6", "subscribe", {"kernel_id": "b1", "event_type": "*"})
    svc.handle(alice, "8", "get_kernel", {"kernel_id": "k1"})
    svc.handle(alice, "9", "destroy_kernel", {"kernel_id": "b1"})
    svc.handle(root, "1", "ping_kernel", {"kernel_id": "b1"})
    svc.handle(root, "2", "get_kernel_ids", {})
    svc.handle(bob, "1", "list_kernels", {})
    await _settle()
    missing = alice.answer("1")[1]
    assert isinstance(missing, KernelNotFound) and str(missing) == "kernel 'b1' not found"
    assert alice.answer("2") == (True, None)
    assert isinstance(alice.answer("3")[1], KernelNotFound)
    assert _backend(mgr, "k1").executes == []  # never reached the kernel
    assert alice.answer("4") == (["a1"], None)
    listed, error = alice.answer("5")
    assert error is None and [d["id"] for d in listed] == ["a1"]
    assert listed == [d for d in mgr.list_kernels() if d["id"] == "a1"]
    for rid in ("6", "8", "9"):
        assert isinstance(alice.answer(rid)[1], KernelNotFound)
    assert svc.subscriptions == 0 and "b1" in mgr.get_kernel_ids()
    assert root.answer("1") == (True, None) and root.answer("2") == (["k1", "a1", "b1"], None)
    assert [d["id"] for d in bob.answer("1")[0]] == ["b1"]
    svc.handle(alice, "7", "destroy_all", {})
    await _until(lambda: alice.answered("7"))
    assert alice.answer("7") == (1, None) and mgr.get_kernel_ids() == ["k1", "b1"]
    assert [b.killed for b in factory.made] == [False, True, False]


async def test_create_checks_access_logs_the_caller_and_reads_groups_only_when_needed(
        svc: Service, mgr: KernelManager, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    reads: list[int | None] = []

    def caller_groups(pid: int | None, uid: int, gid: int) -> tuple[int, ...]:
        reads.append(pid)
        return (gid, 4242)

    monkeypatch.setattr(service_module, "caller_groups", caller_groups)
    callers: list[Caller | None] = []  # what the service handed the real create_kernel
    real_create = mgr.create_kernel

    async def create_kernel(*args: Any, caller: Caller | None = None, **kw: Any) -> str:
        callers.append(caller)
        return await real_create(*args, caller=caller, **kw)

    monkeypatch.setattr(mgr, "create_kernel", create_kernel)
    alice = FakePeer("a", ALICE)
    with caplog.at_level(logging.INFO, logger="kerneld.service"):
        kid = await _create(svc, alice, "1", namespace="n")
    assert "create requested caller=uid=1000 gid=1000 pid=11" in caplog.text
    assert reads == [] and callers == [ALICE]  # nothing could use the groups
    assert kid.startswith("n:") and mgr.owner_of(kid) == "uid:1000"
    spec = mgr._get(kid).spec
    assert spec.namespace == "n" and spec.mode == "worker" and spec.profile == "default"
    svc.handle(alice, "2", "create_kernel", {"filesystem": {"root": "/srv/elsewhere"}})
    await _until(lambda: alice.answered("2"))
    assert reads == [11] and callers[1] is not None and callers[1].groups == (1000, 4242)
    refused = alice.answer("2")[1]  # the manager's own check of the request
    assert isinstance(refused, InvalidArgument)
    assert str(refused) == "request:filesystem.root: no such directory: /srv/elsewhere"
    rules = ProfileAccess.from_table("access.profiles", {"trusted": ["uid:2000"]})
    svc.config = replace(svc.config, access=rules)
    svc.handle(alice, "3", "create_kernel", {"profile": "trusted"})
    bobs = await _create(svc, FakePeer("b", BOB), "4", profile="trusted")
    denied = alice.answer("3")[1]
    assert isinstance(denied, PermissionDenied) and "'trusted' is not granted" in str(denied)
    assert len(callers) == 3 and callers[2] is not None and callers[2].uid == 2000
    assert mgr.owner_of(bobs) == "uid:2000" and mgr._get(bobs).spec.profile == "trusted"
    assert sorted(mgr.get_kernel_ids()) == sorted([kid, bobs])
    assert reads == [11, 11, 22]  # an [access] rule can use them


# ---------------------------------------------------------------------- shutting down

async def test_stopping_refuses_new_requests_and_finish_cancels_the_rest(
        svc: Service, mgr: KernelManager, factory: FakeFactory) -> None:
    peer = FakePeer()
    await _create(svc, peer, id="k1")
    await _create(svc, peer, "c2", id="k2")
    factory.gate = asyncio.Event()  # never set: k1's restart waits for its new backend
    svc.handle(peer, "1", "restart_kernel", {"kernel_id": "k1"})
    svc.handle(peer, "2", "execute_stream", _execute("k2"))
    await asyncio.sleep(0)
    svc.stop()
    svc.handle(peer, "3", "ping", {})
    svc.handle(peer, "4", "execute", _execute("k2"))
    assert str(peer.answer("3")[1]) == "the daemon is shutting down"
    assert isinstance(peer.answer("4")[1], DaemonUnavailable)
    await svc.finish(0.05)
    assert isinstance(peer.answer("1")[1], DaemonUnavailable)  # cancelled while waiting
    value, error = peer.answer("2")  # it had ended within the time given
    assert error is None and value.status == "ok"
    assert len(_backend(mgr, "k2").executes) == 1 and svc.in_flight == 0


# ---------------------------------------------------------------------- a stand-in manager

class _FailingStream:
    """An execute_stream whose iteration fails after one event."""

    def __init__(self, fail: BaseException) -> None:
        self.fail = fail
        self.result: p.ExecutionResult | None = None

    def __aiter__(self) -> AsyncIterator[p.KernelEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[p.KernelEvent]:
        yield p.KernelEvent("stream", {"text": "a"}, "k1", "e1")
        raise self.fail


class StubManager:
    """What a real manager cannot be made to do (see the module docstring): futures the test
    fails or cancels, and a stream that raises. Only what the service calls for them."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    def owner_of(self, kernel_id: str) -> str | None:
        return None

    def submit(self, kernel_id: str, code: str, **options: Any) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def execute_stream(self, kernel_id: str, code: str, **options: Any) -> _FailingStream:
        return _FailingStream(RuntimeError("worker went away at /sys/fs/cgroup/kerneld/k1"))


async def test_failures_a_real_manager_never_reports(caplog: pytest.LogCaptureFixture) -> None:
    stub = StubManager()
    svc = Service(stub, replace(DaemonConfig(), max_queued_executions_per_client=3),  # type: ignore[arg-type]
                  dict)
    peer = FakePeer()
    for rid in ("1", "2", "3"):
        svc.handle(peer, rid, "execute", _execute("k1"))
    stub.futures[0].set_exception(LimitExceeded("queue full"))
    stub.futures[1].set_exception(ValueError("a bug"))
    stub.futures[2].cancel()
    with caplog.at_level(logging.ERROR, logger="kerneld.service"):
        await _settle()
        svc.handle(peer, "s", "execute_stream", _execute("k1"))
        await _until(lambda: peer.answered("s"))
    assert isinstance(peer.answer("1")[1], LimitExceeded)  # a KernelError as itself
    assert str(peer.answer("2")[1]) == "execute: ValueError: a bug"
    assert isinstance(peer.answer("3")[1], DaemonUnavailable)
    assert [e.data["text"] for _, e in peer.events] == ["a"]
    failed = peer.answer("s")[1]
    assert isinstance(failed, InternalError)
    assert str(failed) == "execute_stream: RuntimeError: worker went away at <cgroup>"
    assert "worker went away" in caplog.text
    await _until(lambda: svc.in_flight == 0)
    for rid in ("4", "5", "6"):  # every one of them gave its room back
        svc.handle(peer, rid, "execute", _execute("k1"))
    assert not any(peer.answered(rid) for rid in ("4", "5", "6")) and len(stub.futures) == 6
    for future in stub.futures[3:]:
        future.set_result(None)
    await _settle()

