"""The request service (`kerneld.service`) against a fake `Peer` and a stub manager: no
sockets, no processes. The stub implements only the manager methods these tests reach
(`owner_of`, `get_kernel_ids`, `list_kernels`, `submit`, `execute_stream`, `create_kernel`,
`destroy_kernel`, `restart_kernel`, `ping_kernel`, `on/off_kernel_event`, `get_kernel`);
everything else about the manager is tested with the manager. What the service promises: one
terminal reply per request whatever happens, the caps, the scoping of callers, subscriptions
that end with their peer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import msgspec
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
from kerneld.service import Service

ROOT = Caller(0, 0, 1)
ALICE = Caller(1000, 1000, 11)
BOB = Caller(2000, 2000, 22)


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

    def answer(self, rid: str) -> tuple[Any, KernelError | None]:
        """The one terminal reply to `rid` (fails if there is none or more than one)."""
        mine = [(value, error) for r, value, error in self.replies if r == rid]
        assert len(mine) == 1, (rid, mine)
        return mine[0]


def _result(kernel_id: str = "k1") -> p.ExecutionResult:
    return p.ExecutionResult("e1", kernel_id, "ok", 1, {"text/plain": "2"}, None,
                             [p.KernelEvent("stream", {"text": "x"}, kernel_id, "e1")], 0.0, 1.0)


class _Stream:
    def __init__(self, events: list[p.KernelEvent], fail: BaseException | None = None) -> None:
        self.events, self.fail = events, fail
        self.result: p.ExecutionResult | None = None

    async def _iterate(self) -> AsyncIterator[p.KernelEvent]:
        for event in self.events:
            await asyncio.sleep(0)
            yield event
        if self.fail is not None:
            raise self.fail
        self.result = _result()

    def __aiter__(self) -> AsyncIterator[p.KernelEvent]:
        return self._iterate()


class StubManager:
    """The few KernelManager methods the service calls here, with what it was asked."""

    def __init__(self) -> None:
        self.owners: dict[str, str | None] = {"k1": None, "a1": "uid:1000", "b1": "uid:2000"}
        self.futures: list[asyncio.Future[Any]] = []
        self.listeners: dict[tuple[str, str], list[Callable[[p.KernelEvent], None]]] = {}
        self.created: list[dict[str, Any]] = []
        self.destroyed: list[str] = []
        self.gate = asyncio.Event()      # what restart_kernel waits for
        self.stream_events = [p.KernelEvent("stream", {"text": "a"}, "k1", "e1"),
                              p.KernelEvent("stream", {"text": "b"}, "k1", "e1")]
        self.fail: BaseException | None = None

    def _known(self, kernel_id: str) -> None:
        if kernel_id not in self.owners:
            raise KernelNotFound(f"kernel {kernel_id!r} not found")

    def owner_of(self, kernel_id: str) -> str | None:
        return self.owners.get(kernel_id)

    def get_kernel_ids(self) -> list[str]:
        return list(self.owners)

    def list_kernels(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [{"id": k} for k in self.owners]

    def get_kernel(self, kernel_id: str) -> Any:
        self._known(kernel_id)
        return type("K", (), {"info": {"id": kernel_id}})()

    def submit(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
               silent: bool = False, store_history: bool = True) -> asyncio.Future[Any]:
        self._known(kernel_id)
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def execute_stream(self, kernel_id: str, code: str, *, allow_stdin: bool = False,
                       silent: bool = False, store_history: bool = True) -> _Stream:
        self._known(kernel_id)
        return _Stream(self.stream_events, self.fail)

    async def create_kernel(self, caller: Caller | None = None, **spec: Any) -> str:
        self.created.append({**spec, "caller": caller})
        return "new"

    async def destroy_kernel(self, kernel_id: str) -> None:
        self.destroyed.append(kernel_id)

    async def restart_kernel(self, kernel_id: str) -> bool:
        self._known(kernel_id)
        await self.gate.wait()
        return True

    def ping_kernel(self, kernel_id: str) -> bool:
        self._known(kernel_id)
        if self.fail is not None:
            raise self.fail
        return True

    def on_kernel_event(self, kernel_id: str, event_type: str,
                        callback: Callable[[p.KernelEvent], None]) -> None:
        self._known(kernel_id)
        self.listeners.setdefault((kernel_id, event_type), []).append(callback)

    def off_kernel_event(self, kernel_id: str, event_type: str,
                         callback: Callable[[p.KernelEvent], None]) -> None:
        self.listeners[(kernel_id, event_type)].remove(callback)

    def emit(self, event: p.KernelEvent) -> None:
        for callback in list(self.listeners.get((event.kernel_id, event.type), ())):
            callback(event)


@pytest.fixture
def mgr() -> StubManager:
    return StubManager()


@pytest.fixture
def svc(mgr: StubManager) -> Service:
    return Service(mgr, DaemonConfig(), lambda: {"status": "running"})  # type: ignore[arg-type]


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------- one reply, always

async def test_every_request_gets_exactly_one_reply(svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    requests = [
        ("1", "ping", {}), ("2", "nope", {}), ("3", "ping_kernel", {"kernel_id": "k1"}),
        ("4", "ping_kernel", {"kernel_id": "zz"}), ("5", "ping_kernel", {}),
        ("6", "ping_kernel", {"kernel_id": "k1", "extra": 1}), ("7", "get_kernel_ids", {}),
        ("8", "execute", {"kernel_id": "k1", "code": "1"}), ("9", "status", {}),
        ("10", "create_kernel", {"namespace": "n"}), ("11", "get_kernel", {"kernel_id": "k1"}),
        ("12", "execute_stream", {"kernel_id": "k1", "code": "1"}),
        ("13", "execute", {"kernel_id": "zz", "code": "1"}), ("14", "get_pool_stats", {}),
    ]
    for rid, op, args in requests:
        svc.handle(peer, rid, op, args)
    mgr.futures[0].set_result(_result())
    await _settle()
    for rid, _, _ in requests:
        peer.answer(rid)
    assert len(peer.replies) == len(requests)
    assert peer.answer("1")[0]["pong"] is True and peer.answer("1")[0]["protocol"] == p.VERSION
    assert peer.answer("3") == (True, None)
    assert peer.answer("7") == (["k1", "a1", "b1"], None)
    assert peer.answer("8") == (_result(), None)
    assert peer.answer("9") == ({"status": "running"}, None)
    assert peer.answer("10") == ("new", None)
    assert peer.answer("11") == ({"id": "k1"}, None)
    for rid in ("4", "13"):
        assert isinstance(peer.answer(rid)[1], KernelNotFound)
    assert isinstance(peer.answer("14")[1], InternalError)  # the stub has no pool: a bug


async def test_unknown_ops_and_bad_arguments_are_refused_before_anything_runs(
        svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    svc.handle(peer, "a", "nope", {})
    svc.handle(peer, "b", 42, {})  # type: ignore[arg-type]  # a front may pass anything
    svc.handle(peer, "c", "execute", {"kernel_id": "k1"})
    svc.handle(peer, "d", "execute", {"kernel_id": "k1", "code": 1})
    svc.handle(peer, "e", "execute", {"kernel_id": "k1", "code": "1", "bogus": True})
    svc.handle(peer, "f", "create_kernel", {"env": []})
    errors = {rid: error for rid, _, error in peer.replies}
    assert all(isinstance(e, InvalidArgument) for e in errors.values()) and len(errors) == 6
    assert str(errors["a"]) == "unknown op 'nope'" and str(errors["b"]) == "unknown op '42'"
    assert "missing required argument code" in str(errors["c"])
    assert "argument code must be str, not int" in str(errors["d"])
    assert "unknown argument bogus" in str(errors["e"])
    assert "argument env must be dict or null, not list" in str(errors["f"])
    assert not mgr.futures and not mgr.created


async def test_unexpected_errors_are_internal_errors_without_host_paths(
        svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    mgr.fail = FileNotFoundError(2, "No such file or directory", "/sys/fs/cgroup/kerneld/k1")
    svc.handle(peer, "1", "ping_kernel", {"kernel_id": "k1"})
    mgr.fail = RuntimeError("cannot write /sys/fs/cgroup/kerneld/k1/memory.max")
    svc.handle(peer, "2", "ping_kernel", {"kernel_id": "k1"})
    first, second = peer.answer("1")[1], peer.answer("2")[1]
    assert isinstance(first, InternalError) and isinstance(second, InternalError)
    assert str(first) == "ping_kernel: FileNotFoundError: [Errno 2] No such file or directory"
    assert str(second) == "ping_kernel: RuntimeError: cannot write <cgroup>"


# ---------------------------------------------------------------------- execute and streams

async def test_execute_is_answered_from_its_future_without_a_task(
        svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    for rid in ("1", "2", "3", "4"):
        svc.handle(peer, rid, "execute", {"kernel_id": "k1", "code": "1"})
    assert svc.in_flight == 0 and not peer.replies  # no task; nothing answered yet
    mgr.futures[0].set_result(_result())
    mgr.futures[1].set_exception(LimitExceeded("queue full"))
    mgr.futures[2].set_exception(ValueError("a bug"))
    mgr.futures[3].cancel()
    await _settle()
    assert peer.answer("1") == (_result(), None)
    assert isinstance(peer.answer("2")[1], LimitExceeded)
    assert str(peer.answer("3")[1]) == "execute: ValueError: a bug"
    assert isinstance(peer.answer("4")[1], DaemonUnavailable)


async def test_a_stream_sends_its_events_then_the_result_without_outputs(
        svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    svc.handle(peer, "s", "execute_stream", {"kernel_id": "k1", "code": "1"})
    assert svc.in_flight == 1
    await _settle()
    assert [(rid, e.data["text"]) for rid, e in peer.events] == [("s", "a"), ("s", "b")]
    value, error = peer.answer("s")
    assert error is None and value == msgspec.structs.replace(_result(), outputs=[])
    mgr.fail = RuntimeError("worker went away")
    svc.handle(peer, "t", "execute_stream", {"kernel_id": "k1", "code": "1"})
    await _settle()
    assert str(peer.answer("t")[1]) == "execute_stream: RuntimeError: worker went away"
    assert svc.in_flight == 0


async def test_a_stream_to_a_closed_peer_stops_sending(svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    peer.closed = True
    svc.handle(peer, "s", "execute_stream", {"kernel_id": "k1", "code": "1"})
    await _settle()
    assert not peer.events and not peer.replies


# ---------------------------------------------------------------------- caps

async def test_executions_are_capped_per_peer(mgr: StubManager) -> None:
    config = replace(DaemonConfig(), max_queued_executions_per_client=2)
    svc = Service(mgr, config, dict)  # type: ignore[arg-type]
    one, two = FakePeer("one"), FakePeer("two")
    for rid in ("1", "2", "3"):
        svc.handle(one, rid, "execute", {"kernel_id": "k1", "code": "1"})
    svc.handle(one, "4", "execute_stream", {"kernel_id": "k1", "code": "1"})
    assert "max_queued_executions_per_client = 2" in str(one.answer("3")[1])
    assert isinstance(one.answer("4")[1], LimitExceeded)
    svc.handle(two, "1", "execute", {"kernel_id": "k1", "code": "1"})  # another peer: its own
    assert not two.replies and len(mgr.futures) == 3
    mgr.futures[0].set_result(_result())
    await _settle()
    svc.handle(one, "5", "execute", {"kernel_id": "k1", "code": "1"})  # room again
    assert len(mgr.futures) == 4
    for future in mgr.futures[1:]:
        future.set_result(_result())
    await _settle()


async def test_requests_in_flight_are_capped(svc: Service, mgr: StubManager,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MAX_INFLIGHT", 2)
    peer = FakePeer()
    for rid in ("1", "2", "3"):
        svc.handle(peer, rid, "restart_kernel", {"kernel_id": "k1"})
    await _settle()
    assert [rid for rid, _, _ in peer.replies] == ["3"]
    assert "working on 2 requests already" in str(peer.answer("3")[1])
    mgr.gate.set()
    await _settle()
    assert peer.answer("1") == (True, None) and peer.answer("2") == (True, None)
    assert svc.in_flight == 0


async def test_subscriptions_are_capped_per_peer(svc: Service, mgr: StubManager,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "MAX_SUBSCRIPTIONS_PER_PEER", 2)
    one, two = FakePeer("one"), FakePeer("two")
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


# ---------------------------------------------------------------------- subscriptions

async def test_subscription_events_and_their_end(svc: Service, mgr: StubManager,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    peer = FakePeer()
    svc.handle(peer, "s", "subscribe", {"kernel_id": "k1", "event_type": "kernel_died"})
    svc.handle(peer, "x", "subscribe", {"kernel_id": "k1", "event_type": "nope"})
    svc.handle(peer, "y", "subscribe", {"kernel_id": "zz", "event_type": "kernel_died"})
    assert "unknown event type 'nope'" in str(peer.answer("x")[1])
    assert isinstance(peer.answer("y")[1], KernelNotFound)
    died = p.KernelEvent("kernel_died", {}, "k1")
    mgr.emit(died)
    assert peer.events == [("s", died)]
    peer.room = False  # a slow subscriber: the event is dropped, and counted
    with caplog.at_level(logging.WARNING, logger="kerneld.service"):
        mgr.emit(died)
    assert "subscriber too slow, event dropped" in caplog.text
    svc.peer_gone("p1")
    assert mgr.listeners[("k1", "kernel_died")] == [] and svc.subscriptions == 0


async def test_tick_forgets_subscriptions_of_kernels_that_are_gone(
        svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    svc.handle(peer, "s", "subscribe", {"kernel_id": "a1", "event_type": "kernel_died"})
    svc.handle(peer, "t", "subscribe", {"kernel_id": "k1", "event_type": "kernel_died"})
    del mgr.owners["a1"]
    svc.tick()
    assert svc.subscriptions == 1 and mgr.listeners[("a1", "kernel_died")] == []


# ---------------------------------------------------------------------- callers

async def test_a_caller_sees_only_its_own_kernels(svc: Service, mgr: StubManager) -> None:
    alice, root = FakePeer("a", ALICE), FakePeer("r", ROOT)
    svc.handle(alice, "1", "ping_kernel", {"kernel_id": "b1"})
    svc.handle(alice, "2", "ping_kernel", {"kernel_id": "a1"})
    svc.handle(alice, "3", "execute", {"kernel_id": "k1", "code": "1"})
    svc.handle(alice, "4", "get_kernel_ids", {})
    svc.handle(alice, "5", "list_kernels", {})
    svc.handle(alice, "6", "subscribe", {"kernel_id": "b1", "event_type": "*"})
    svc.handle(root, "1", "ping_kernel", {"kernel_id": "b1"})
    svc.handle(root, "2", "get_kernel_ids", {})
    missing = alice.answer("1")[1]
    assert isinstance(missing, KernelNotFound) and str(missing) == "kernel 'b1' not found"
    assert alice.answer("2") == (True, None)
    assert isinstance(alice.answer("3")[1], KernelNotFound) and not mgr.futures
    assert alice.answer("4") == (["a1"], None)
    assert alice.answer("5") == ([{"id": "a1"}], None)
    assert isinstance(alice.answer("6")[1], KernelNotFound)
    assert root.answer("1") == (True, None) and root.answer("2") == (["k1", "a1", "b1"], None)
    svc.handle(alice, "7", "destroy_all", {})
    await _settle()
    assert alice.answer("7") == (1, None) and mgr.destroyed == ["a1"]


async def test_create_checks_access_logs_the_caller_and_reads_groups_only_when_needed(
        mgr: StubManager, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    reads: list[int | None] = []
    monkeypatch.setattr(service_module, "caller_groups",
                        lambda pid, uid, gid: reads.append(pid) or (gid, 4242))
    svc = Service(mgr, DaemonConfig(), dict)  # type: ignore[arg-type]
    alice = FakePeer("a", ALICE)
    with caplog.at_level(logging.INFO, logger="kerneld.service"):
        svc.handle(alice, "1", "create_kernel", {"namespace": "n"})
        await _settle()
    assert "create requested caller=uid=1000 gid=1000 pid=11" in caplog.text
    assert reads == [] and mgr.created[0]["caller"] == ALICE  # nothing could use the groups
    assert mgr.created[0]["namespace"] == "n" and mgr.created[0]["mode"] == "worker"
    svc.handle(alice, "2", "create_kernel", {"filesystem": {"root": "/srv/x"}})
    await _settle()
    assert reads == [11] and mgr.created[1]["caller"].groups == (1000, 4242)
    rules = ProfileAccess.from_table("access.profiles", {"locked": ["uid:2000"]})
    svc.config = replace(svc.config, access=rules)
    svc.handle(alice, "3", "create_kernel", {"profile": "locked"})
    svc.handle(FakePeer("b", BOB), "4", "create_kernel", {"profile": "locked"})
    await _settle()
    denied = alice.answer("3")[1]
    assert isinstance(denied, PermissionDenied) and "'locked' is not granted" in str(denied)
    assert len(mgr.created) == 3 and mgr.created[2]["caller"].uid == 2000
    assert reads == [11, 11, 22]  # an [access] rule can use them


# ---------------------------------------------------------------------- shutting down

async def test_stopping_refuses_new_requests_and_finish_cancels_the_rest(
        svc: Service, mgr: StubManager) -> None:
    peer = FakePeer()
    svc.handle(peer, "1", "restart_kernel", {"kernel_id": "k1"})
    svc.handle(peer, "2", "execute_stream", {"kernel_id": "k1", "code": "1"})
    await asyncio.sleep(0)
    svc.stop()
    svc.handle(peer, "3", "ping", {})
    assert str(peer.answer("3")[1]) == "the daemon is shutting down"
    await svc.finish(0.05)
    assert isinstance(peer.answer("1")[1], DaemonUnavailable)  # cancelled while waiting
    assert peer.answer("2")[1] is None  # it had ended within the time given
    assert svc.in_flight == 0
