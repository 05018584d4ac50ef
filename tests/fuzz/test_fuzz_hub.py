"""Fuzzing what workers send: forged and malformed messages into the worker hub.

An embedded `KernelManager` (confined when the host can confine) runs on its own event loop in
a background thread, with two real kernels: the victim V and the witness W. A worker's routing
id on the hub is its kernel's secret token; V's own worker holds V's token (ZeroMQ ignores a
second connection with a routing id already connected: `test_a_kernels_token_cannot_be_taken`),
so the fuzzer's DEALER gets a token of its own that the hub routes to V's record, exactly as
V's token is: whatever it sends is handled as if V's worker had sent it.

Per example, while V runs one execution (another queued behind it, a completion pending) and
W runs one, the fuzzer sends forged `Output`/`Done`/`Answer`/`Hello` messages aimed at V's
running, queued and pending ids and at W's running execution, messages of unknown tags,
several frames, deep nesting and junk; also through unregistered tokens. Then: the manager
still answers; every execution and question ends (none hangs); W's execution is exactly what
it computed, with only its own events; V either still works (runs `40 + 2`) or was reported
dead with a reason; V's events are V's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import given

import kerneld
from kerneld import KernelManager
from kerneld import protocol as p
from kerneld.config import ManagerConfig
from tests import _figures
from tests.fuzz._harness import EXAMPLES, fuzz, sandbox_missing, timeout_for
from tests.fuzz._known import KNOWN, active, worker_defect
from tests.fuzz._strategies import HubIds, WorkerMsg, mp_map, mp_str, nest, worker_messages

SECTION = "fuzz: worker hub"
SLOW_CELL = "import time; time.sleep(0.03)"


class ManagerThread:
    """A KernelManager on an event loop of its own thread; `run` waits for a coroutine."""

    def __init__(self, config: ManagerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.unhandled: list[str] = []  # exceptions that reached the loop (none should)
        self.loop.set_exception_handler(self._unhandled)
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-manager",
                                       daemon=True)
        self.thread.start()
        self.manager: KernelManager = self.run(self._make(config))
        self.events: list[p.KernelEvent] = []

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.unhandled.append(f"{context.get('message')}: {context.get('exception')!r:.200}")
        loop.default_exception_handler(context)

    @staticmethod
    async def _make(config: ManagerConfig) -> KernelManager:
        manager = KernelManager(config)
        await manager.start()
        return manager

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.manager.close(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Hub:
    """The fuzz fixture: the manager, V and W, and the fuzzer's DEALER."""

    def __init__(self) -> None:
        self.confined = sandbox_missing() is None
        self.mt = ManagerThread(ManagerConfig(confine=self.confined))
        self.token = secrets.token_bytes(16)
        self.ctx = zmq.Context()
        self.sock = self._dealer(self.token)
        self.strangers = self._dealer(secrets.token_bytes(16))
        self.victim = self.witness = ""
        self.create("victim")
        self.create("witness")
        self.counts: dict[str, int] = {}
        self.set_aside: dict[str, int] = {}
        self.victim_restarts = 0
        self.started = time.monotonic()

    def _dealer(self, routing_id: bytes) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.connect(self.mt.manager.hub.endpoint)
        return sock

    def create(self, role: str, tries: int = 3) -> None:
        """Create V or W (again); a failed create is retried (the host may be short of memory
        for a moment: fork's ENOMEM was seen once in a 15-minute run on a shared machine)."""
        events = self.mt.events

        async def make() -> str:
            mgr = self.mt.manager
            kernel_id = await mgr.create_kernel(id=f"fz-{role}-{secrets.token_hex(3)}")
            mgr.on_kernel_event(kernel_id, "*", events.append)
            if role == "victim":  # the fuzzer's token speaks for the victim, as its own does
                mgr.hub.register(self.token, mgr._get(kernel_id).on_message)
            return kernel_id
        for attempt in range(tries):
            try:
                setattr(self, role, self.mt.run(make()))
                return
            except kerneld.KernelError:
                if attempt == tries - 1:
                    raise
                time.sleep(1.0)

    def close(self) -> None:
        self.sock.close()
        self.strangers.close()
        self.ctx.term()
        self.mt.close()

    # ------------------------------------------------------------------ one example

    def start_work(self) -> tuple[HubIds, dict[str, Any]]:
        async def start() -> tuple[HubIds, dict[str, Any]]:
            mgr = self.mt.manager
            v, w = mgr._get(self.victim), mgr._get(self.witness)
            work = {"v1": mgr.submit(self.victim, SLOW_CELL),
                    "v2": mgr.submit(self.victim, "2 + 2"),
                    "w": mgr.submit(self.witness, SLOW_CELL + "; 6 * 7"),
                    "ask": asyncio.ensure_future(mgr.complete(self.victim, "pri", 3))}
            await asyncio.sleep(0)  # the question is sent
            ids = HubIds(current=v.current.id if v.current else "",
                         queued=v.queue[0].id if v.queue else "",
                         witness=w.current.id if w.current else "", asks=tuple(v._asks))
            return ids, work
        return self.mt.run(start())  # type: ignore[no-any-return]

    def finish(self, work: dict[str, Any]) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            done, _ = await asyncio.wait(work.values(), timeout=15)
            return {name: (f.exception() or f.result()) if f in done else None
                    for name, f in work.items()}
        return self.mt.run(wait(), timeout=30)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    h = Hub()
    try:
        yield h
    finally:
        h.close()


def _send(hub: Hub, msgs: list[WorkerMsg], ids: HubIds) -> list[str]:
    sent = []
    for i, msg in enumerate(msgs):
        frames = msg.build(ids)
        sock = hub.strangers if i % 7 == 6 else hub.sock  # now and then an unknown token
        sock.send_multipart(frames)
        hub.counts[msg.label.split("-")[0]] = hub.counts.get(msg.label.split("-")[0], 0) + 1
        sent.append(("stranger " if sock is hub.strangers else "") + msg.summary(ids))
    return sent


def _judge(hub: Hub, ids: HubIds, results: dict[str, Any], events_from: int) -> list[str]:
    problems = []
    for name, outcome in results.items():
        if outcome is None:
            problems.append(f"{name}: did not end within 15 s")
    w = results.get("w")
    if isinstance(w, p.ExecutionResult):
        plain = (w.result or {}).get("data", {}).get("text/plain")
        if w.status != "ok" or plain != "42":
            problems.append(f"the witness's execution was changed: {w.status} {w.result} "
                            f"{w.error}")
        strays = [e for e in w.outputs if e.kernel_id != hub.witness
                  or e.execution_id not in (None, ids.witness)]
        if strays:
            problems.append(f"the witness's execution got foreign events: {strays[:3]}")
    elif w is not None:
        problems.append(f"the witness's execution failed: {w!r}")
    new = hub.mt.events[events_from:]
    for event in new:
        if event.kernel_id == hub.witness and event.execution_id not in (None, ids.witness):
            problems.append(f"an event on the witness for another execution: {event}")
        if event.kernel_id == hub.witness and "spoofed" in str(event.data):
            problems.append(f"the witness got a forged event: {event}")
    return problems


def _victim_ok(hub: Hub) -> list[str]:
    """V still works, or was reported dead with a reason (then it is restarted)."""
    async def check() -> Any:
        mgr = hub.mt.manager
        kernel = mgr._get(hub.victim)
        if kernel.status == "dead":
            return "dead"
        return await asyncio.wait_for(mgr.execute(hub.victim, "40 + 2"), 15)
    try:
        result = hub.mt.run(check(), timeout=30)
    except Exception as exc:  # noqa: BLE001  (any failure here is the finding)
        return [f"the victim no longer works: {exc!r}"]
    if result == "dead":
        died = [e for e in hub.mt.events if e.kernel_id == hub.victim and e.type == "kernel_died"]
        hub.victim_restarts += 1
        hub.mt.run(hub.mt.manager.destroy_kernel(hub.victim))
        hub.create("victim")
        if not died or not died[-1].data.get("reason"):
            return ["the victim died without a kernel_died event and reason"]
        return []
    plain = (result.result or {}).get("data", {}).get("text/plain")
    if result.status != "ok" or plain != "42":
        return [f"the victim computes wrong: {result.status} {result.result} {result.error}"]
    return []


def _unread(hub: Hub) -> bool:
    """Whether messages wait in the hub's socket while its loop is idle (a stalled hub)."""
    async def probe() -> bool:
        await asyncio.sleep(0.02)  # let a wake-up that is due run first
        workers = hub.mt.manager.hub
        stalled = bool(workers.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
        if stalled:  # reading EVENTS may take the fd's edge: drain, as the hub's send does
            workers._drain.after_send()
        return stalled
    return bool(hub.mt.run(probe()))


@pytest.mark.timeout(timeout_for(EXAMPLES, 0.2))
@fuzz()
@given(msgs=worker_messages())
def test_forged_worker_messages(hub: Hub, msgs: list[WorkerMsg]) -> None:
    known = worker_defect([m.depth for m in msgs])
    if known and active(known):
        hub.set_aside[known] = hub.set_aside.get(known, 0) + 1
        return
    events_from, unhandled_from = len(hub.mt.events), len(hub.mt.unhandled)
    ids, work = hub.start_work()
    sent = _send(hub, msgs, ids)
    results = hub.finish(work)
    problems = _judge(hub, ids, results, events_from)
    if _unread(hub):
        problems.append("the hub left messages unread while idle (stalled)")
    problems += [f"an exception reached the manager's loop: {x}"
                 for x in hub.mt.unhandled[unhandled_from:]]
    problems += _victim_ok(hub)
    if not hub.mt.thread.is_alive():
        problems.append("the manager's loop thread died")
    assert not problems, "\n".join(["sent:", *sent, "problems:", *problems])


def test_a_kernels_token_cannot_be_taken(hub: Hub) -> None:
    """A second connection with the victim's own token is ignored while its worker is
    connected (ZeroMQ drops duplicate routing ids): a forged Done never lands."""
    token = hub.mt.run(_token_of(hub.mt.manager, hub.victim))
    thief = hub._dealer(token)
    try:
        time.sleep(0.1)
        ids, work = hub.start_work()
        thief.send(p.encode(p.Done(ids.current, "ok", 999, {"data": {"text/plain": "forged"}})))
        results = hub.finish(work)
        v1 = results["v1"]
        assert isinstance(v1, p.ExecutionResult), v1
        assert v1.execution_count != 999 and v1.status == "ok", v1
    finally:
        thief.close()


async def _token_of(manager: KernelManager, kernel_id: str) -> bytes:
    return manager._get(kernel_id).backend.token


def _hub_deep_nesting(hub: Hub) -> None:
    """A deep message, then a marker Output, in one burst while the worker sleeps: the
    marker must be handled at once, not when the worker's next message wakes the hub."""
    async def start() -> tuple[str, Any]:
        mgr = hub.mt.manager
        future = mgr.submit(hub.victim, "import time; time.sleep(1)")
        await asyncio.sleep(0)
        return mgr._get(hub.victim).current.id, future
    current, future = hub.mt.run(start())
    time.sleep(0.1)
    hub.mt.loop.call_soon_threadsafe(time.sleep, 0.2)  # both arrive before the hub drains
    deep = mp_map([(mp_str("t"), mp_str("output")), (mp_str("exec_id"), mp_str(current)),
                   (mp_str("type"), mp_str("stream")),
                   (mp_str("data"), mp_map([(mp_str("a"), nest(5000, "array"))]))])
    marker = p.encode(p.Output(current, "stream", {"name": "stdout", "text": "marker\n"}))
    seen_from = len(hub.mt.events)
    hub.sock.send(deep)
    hub.sock.send(marker)
    deadline, seen = time.monotonic() + 0.5, False
    while not seen and time.monotonic() < deadline:
        seen = any("marker" in str(e.data) for e in hub.mt.events[seen_from:])
        time.sleep(0.005)
    hub.mt.run(asyncio.wait_for(future, 5))
    assert seen, "the message after the deep one waited for the worker's next message"


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.records += 1


def _hub_log_flood(hub: Hub) -> None:
    """200 malformed messages from a worker: a bounded number of log records."""
    counter = _Count()
    logger = logging.getLogger("kerneld.backends.supervisor")
    logger.addHandler(counter)
    try:
        for i in range(200):
            hub.sock.send(msgspec.msgpack.encode({"t": "output", "exec_id": i}))
        hub.mt.run(asyncio.sleep(0.2))
        assert _victim_ok(hub) == []
    finally:
        logger.removeHandler(counter)
    assert counter.records <= 20, f"{counter.records} log records for 200 malformed messages"


REPRODUCERS = {"hub-deep-nesting": _hub_deep_nesting, "hub-log-flood": _hub_log_flood}
assert {k for k, v in KNOWN.items() if v.where == "hub"} <= set(REPRODUCERS)


@pytest.mark.parametrize("item", [
    pytest.param(item, marks=[pytest.mark.xfail(strict=True, reason=KNOWN[item].reason)]
                 if item in KNOWN else [])
    for item in REPRODUCERS])
def test_known_defect(hub: Hub, item: str) -> None:
    REPRODUCERS[item](hub)
    assert not _victim_ok(hub)


def test_the_manager_held_up(hub: Hub) -> None:
    assert not _victim_ok(hub)
    record = _figures.record
    record(SECTION, "set aside (known defects)", hub.set_aside)
    record(SECTION, "messages sent per kind", dict(sorted(hub.counts.items())))
    record(SECTION, "messages sent", sum(hub.counts.values()))
    record(SECTION, "victim deaths (restarted)", hub.victim_restarts)
    record(SECTION, "confined", hub.confined)
    record(SECTION, "duration s", round(time.monotonic() - hub.started, 1))
    kernels = hub.mt.run(_list(hub.mt.manager))
    assert {k["id"] for k in kernels} == {hub.victim, hub.witness}
    assert all(k["status"] in ("idle", "busy") for k in kernels), kernels
    assert os.path.exists(hub.mt.manager.hub.socket_path)


async def _list(manager: KernelManager) -> list[dict[str, Any]]:
    return manager.list_kernels()
