"""The daemon attacked (issue 11): floods, clients that never read, absurd values, deep nesting.

What must hold throughout: every request gets exactly one terminal reply (an error naming the
problem when it is refused), the daemon never crashes and keeps serving its other clients, a
request never kills a kernel, nothing per request is logged above DEBUG, and no error message
carries a host path. Raw DEALER sockets speak the wire directly (`_Raw`); `kerneld.connect()`
where the Python client is the point.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import zmq
from _daemon import DEV_CONFIG, Daemon

import kerneld
from kerneld import LimitExceeded
from kerneld import protocol as p
from kerneld.config import ManagerConfig
from kerneld.manager import KernelManager
from tests._host import sandbox_missing

MiB = 1024 * 1024
SLEEPER = "import time; time.sleep(60)"

# Small limits, so that each one is reached in a few requests (the defaults are tested too).
LIMITED = DEV_CONFIG + """
max_queued_executions = 50
max_queued_code = "3MiB"
max_queued_executions_per_client = 60
max_queued_executions_total = 80
max_queued_code_total = "5MiB"
"""


class _Raw:
    """A DEALER on the daemon that sends requests and collects every reply by id."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)      # nothing held back on our side
        self.sock.setsockopt(zmq.ROUTING_ID, os.urandom(8))
        self.sock.connect(address)
        self.replies: dict[str, list[p.Reply]] = collections.defaultdict(list)

    def send(self, op: str, args: dict[str, Any] | None = None, *, rid: str) -> None:
        self.sock.send(p.encode(p.Request(p.VERSION, rid, op, args or {})))

    def send_raw(self, frame: bytes) -> None:
        self.sock.send(frame)

    def collect(self, want: set[str], timeout: float = 30.0) -> None:
        """Read until every id in `want` has a reply, then a little more (to catch a second)."""
        deadline = time.monotonic() + timeout
        while not want <= self.replies.keys() and time.monotonic() < deadline:
            self._read(200)
        self._read(100)
        missing = want - self.replies.keys()
        assert not missing, f"{len(missing)} requests got no reply, e.g. {sorted(missing)[:5]}"

    def _read(self, timeout_ms: int) -> None:
        while self.sock.poll(timeout_ms):
            msg = p.to_client_decoder.decode(self.sock.recv())
            if isinstance(msg, p.Reply):
                self.replies[msg.id].append(msg)
            timeout_ms = 0

    def call(self, op: str, args: dict[str, Any] | None = None, *, rid: str,
             timeout: float = 30.0) -> p.Reply:
        self.send(op, args, rid=rid)
        self.collect({rid}, timeout)
        return self.replies[rid][-1]

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def _exactly_once(raw: _Raw, ids: list[str]) -> collections.Counter[str]:
    """Every id got exactly one reply; returns the replies counted by outcome."""
    twice = [rid for rid in ids if len(raw.replies[rid]) != 1]
    assert not twice, f"{len(twice)} requests got several replies, e.g. {twice[:5]}"
    return collections.Counter("ok" if raw.replies[rid][0].ok
                               else raw.replies[rid][0].error["type"] for rid in ids)


def _errors(raw: _Raw, ids: list[str], kind: str = "LimitExceeded") -> list[str]:
    """The messages of the `kind` errors among the replies to `ids` received so far."""
    replies = [raw.replies[rid][0] for rid in ids if raw.replies.get(rid)]
    return [r.error["message"] for r in replies if not r.ok and r.error["type"] == kind]


def _serves(daemon: Daemon) -> None:
    assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.log[-3000:]}"
    with kerneld.connect(daemon.address) as c:
        assert c.ping()["pong"] is True


@pytest.fixture
def raw(daemon: Daemon) -> Iterator[_Raw]:
    r = _Raw(daemon.address)
    yield r
    r.close()
    with kerneld.connect(daemon.address) as c:
        c.destroy_all()


@pytest.fixture(scope="module")
def limited() -> Iterator[Daemon]:
    d = Daemon(LIMITED)
    try:
        yield d.wait_ready()
    finally:
        d.close()


@pytest.fixture
def lraw(limited: Daemon) -> Iterator[_Raw]:
    r = _Raw(limited.address)
    yield r
    r.close()
    with kerneld.connect(limited.address) as c:
        c.destroy_all()


def _interrupt_sleeper(address: str, kid: str) -> None:
    """Interrupt the cell `kid` runs once it has run for a moment (an interrupt that lands
    before the cell starts is a no-op)."""
    with kerneld.connect(address) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = c.get_execution_info(kid)["executions"]
            if running and running[0]["runtime"] > 0.2:
                break
            time.sleep(0.05)
        assert c.interrupt_kernel(kid)


def _kernel(raw: _Raw, name: str) -> str:
    reply = raw.call("create_kernel", {}, rid=f"create-{name}")
    assert reply.ok, reply.error
    return str(reply.value)


# ====================================================================== 4: queued executions

def test_queued_executions_per_kernel_are_bounded_by_default(raw: _Raw, daemon: Daemon) -> None:
    """Behind a sleeping cell, the 1 001st execution of a kernel (default limit) is refused,
    executes and streams alike; 12 000 tiny ones were all accepted before."""
    kid = _kernel(raw, "k")
    raw.send("execute", {"kernel_id": kid, "code": SLEEPER}, rid="sleeper")
    ids = []
    for i in range(1_100):
        op = "execute_stream" if i % 10 == 0 else "execute"
        raw.send(op, {"kernel_id": kid, "code": "1"}, rid=f"e{i}")
        ids.append(f"e{i}")
    raw.collect(set(ids[999:]))  # the refused ones answer at once
    refused = _errors(raw, ids)
    assert len(refused) == 101  # 1 000 = the sleeper + 999 of these
    assert "max_queued_executions = 1000" in refused[0] and kid in refused[0]
    _interrupt_sleeper(daemon.address, kid)
    raw.collect(set(ids) | {"sleeper"})
    outcome = _exactly_once(raw, ids)
    assert outcome == {"ok": 999, "LimitExceeded": 101}
    _serves(daemon)


def test_queued_code_per_kernel_is_bounded(lraw: _Raw, limited: Daemon) -> None:
    kid = _kernel(lraw, "k")
    lraw.send("execute", {"kernel_id": kid, "code": SLEEPER}, rid="sleeper")
    ids = [f"big{i}" for i in range(6)]
    for rid in ids:
        lraw.send("execute", {"kernel_id": kid, "code": "#" * (MiB - 100)}, rid=rid)
    lraw.collect(set(ids[3:]))
    refused = _errors(lraw, ids)
    assert len(refused) == 3 and "max_queued_code = 3145728 bytes" in refused[0]
    _interrupt_sleeper(limited.address, kid)
    lraw.collect(set(ids))
    assert _exactly_once(lraw, ids) == {"ok": 3, "LimitExceeded": 3}


def test_queued_executions_per_client_are_bounded(lraw: _Raw, limited: Daemon) -> None:
    """One client fills two kernels up to its own limit (60); another client is unaffected."""
    kids = [_kernel(lraw, "a"), _kernel(lraw, "b")]
    ids = []
    for kid in kids:
        lraw.send("execute", {"kernel_id": kid, "code": SLEEPER}, rid=f"sleep-{kid}")
        for i in range(40):
            lraw.send("execute", {"kernel_id": kid, "code": "1"}, rid=f"{kid}-{i}")
            ids.append(f"{kid}-{i}")
    lraw.collect(set(ids[58:]))
    refused = _errors(lraw, ids)
    assert len(refused) == 22  # 2 sleepers + 58 of these = 60
    assert "max_queued_executions_per_client = 60" in refused[0]
    with kerneld.connect(limited.address) as other:
        stream = other.execute_stream(kids[0], "1+1")  # queued behind the sleeper: not refused
        for kid in kids:
            _interrupt_sleeper(limited.address, kid)
        assert stream.wait().success
    lraw.collect(set(ids))
    assert _exactly_once(lraw, ids) == {"ok": 58, "LimitExceeded": 22}


def test_queued_executions_and_code_in_all_are_bounded(limited: Daemon) -> None:
    """Three clients together reach the daemon-wide limits: 80 executions, 5 MiB of code."""
    clients = [_Raw(limited.address) for _ in range(3)]

    def flood(code: str, n: int, prefix: str) -> list[list[str]]:
        """Per client, in turn: a kernel, a sleeping cell, `n` cells of `code`; then every
        kernel destroyed (queued cells end) and every reply read."""
        sent: list[list[str]] = []
        kids = [_kernel(c, f"{prefix}{i}") for i, c in enumerate(clients)]
        for c, kid in zip(clients, kids, strict=True):
            c.send("execute", {"kernel_id": kid, "code": SLEEPER}, rid=f"{prefix}sleeper")
            for j in range(n):
                c.send("execute", {"kernel_id": kid, "code": code}, rid=f"{prefix}{j}")
            sent.append([f"{prefix}sleeper", *(f"{prefix}{j}" for j in range(n))])
            time.sleep(0.3)  # handled in this order
        with kerneld.connect(limited.address) as other:
            other.destroy_all()
        for c, mine in zip(clients, sent, strict=True):
            c.collect(set(mine))
            _exactly_once(c, mine)
        return sent

    try:
        sent = flood("1", 40, "t")
        refused = [m for c, mine in zip(clients, sent, strict=True) for m in _errors(c, mine)]
        assert len(refused) == 3 * 41 - 80
        assert all("max_queued_executions_total = 80" in m for m in refused)
        sent = flood("#" * (MiB - 100), 2, "c")  # 5 of these fit in 5 MiB, the 6th does not
        refused = [m for c, mine in zip(clients, sent, strict=True) for m in _errors(c, mine)]
        assert len(refused) == 1 and "max_queued_code_total = 5242880 bytes" in refused[0]
        assert refused == _errors(clients[2], sent[2])
    finally:
        for c in clients:
            c.close()
    _serves(limited)


def test_a_flood_of_big_executions_leaves_memory_and_other_clients_alone(
        lraw: _Raw, limited: Daemon) -> None:
    """300 executions of 1 MiB behind a sleeping cell: the daemon keeps ~3 MiB of them (its
    limit) instead of 300 MiB, and another client's pings are answered meanwhile."""
    kid = _kernel(lraw, "k")
    lraw.send("execute", {"kernel_id": kid, "code": SLEEPER}, rid="sleeper")
    proc = psutil.Process(limited.pid)
    before = proc.memory_info().rss
    code = "#" * (MiB - 100)
    ids = [f"f{i}" for i in range(300)]
    for rid in ids:
        lraw.send("execute", {"kernel_id": kid, "code": code}, rid=rid)
    slowest = 0.0
    with kerneld.connect(limited.address) as other:
        for _ in range(20):
            start = time.monotonic()
            other.ping()
            slowest = max(slowest, time.monotonic() - start)
    lraw.collect(set(ids[3:]))
    grown = proc.memory_info().rss - before
    assert grown < 100 * MiB, f"the daemon grew by {grown / MiB:.0f} MiB"
    assert slowest < 2.0
    _interrupt_sleeper(limited.address, kid)
    lraw.collect(set(ids))
    assert _exactly_once(lraw, ids) == {"ok": 3, "LimitExceeded": 297}


async def test_the_embedded_manager_bounds_its_queues_too() -> None:
    config = ManagerConfig(confine=False, preload=(), max_queued_executions=3)
    async with KernelManager(config) as mgr:
        kid = await mgr.create_kernel()
        futures = [mgr.submit(kid, SLEEPER), mgr.submit(kid, "1"), mgr.submit(kid, "2")]
        assert mgr.queued_executions() == (3, len(SLEEPER) + 2)
        with pytest.raises(LimitExceeded, match=r"has 3 executions queued or running.*"
                                                r"max_queued_executions = 3"):
            mgr.submit(kid, "3")
        with pytest.raises(LimitExceeded):
            mgr.execute_stream(kid, "3")
        await asyncio.sleep(0.5)  # the sleeper runs
        assert mgr.interrupt_kernel(kid)
        results = await asyncio.gather(*futures)
        assert [r.status for r in results] == ["error", "ok", "ok"]
        assert (await mgr.execute(kid, "4")).success  # room again
        await asyncio.sleep(0)
        assert mgr.queued_executions() == (0, 0)


# ====================================================================== 5: clients not reading

def test_every_pipelined_request_gets_exactly_one_reply(raw: _Raw, daemon: Daemon) -> None:
    """20 000 pings and an execute without reading (ZeroMQ queues 10 000 replies for a
    peer): afterwards every id has exactly one reply, ok or LimitExceeded."""
    kid = _kernel(raw, "k")
    raw.send("execute", {"kernel_id": kid, "code": "import time; time.sleep(1); 7"}, rid="x")
    ids = [f"p{i}" for i in range(20_000)]
    for rid in ids:
        raw.send("ping", rid=rid)
    time.sleep(2)  # the execute finishes while its client reads nothing
    raw.collect({*ids, "x"})
    outcome = _exactly_once(raw, [*ids, "x"])
    assert set(outcome) <= {"ok", "LimitExceeded"} and outcome["ok"] >= 10_000
    assert raw.replies["x"][0].ok and raw.replies["x"][0].value["result"]["data"] == {
        "text/plain": "7"}
    refused = _errors(raw, ids)
    assert not refused or "read them before sending more requests" in refused[0]
    assert raw.call("ping", rid="after").ok  # once read, the client is served again
    _serves(daemon)


# ====================================================================== 6: cursor positions

@pytest.mark.parametrize("op", ["complete", "inspect"])
def test_cursor_pos_out_of_range_is_invalid_argument(raw: _Raw, op: str) -> None:
    kid = _kernel(raw, "k")
    assert raw.call("execute", {"kernel_id": kid, "code": "state = 41"}, rid="s").ok
    for i, pos in enumerate((-1, 4, 2**62, 2**63 - 1, -2**63, 2**64 - 1)):
        reply = raw.call(op, {"kernel_id": kid, "code": "pri", "cursor_pos": pos}, rid=f"c{i}")
        assert reply.error["type"] == "InvalidArgument", reply
        assert "cursor_pos" in reply.error["message"] and "0..3" in reply.error["message"]
    assert raw.call(op, {"kernel_id": kid, "code": "pri", "cursor_pos": 3}, rid="ok").ok
    assert raw.call(op, {"kernel_id": kid, "code": "pri"}, rid="default").ok
    result = raw.call("execute", {"kernel_id": kid, "code": "state + 1"}, rid="after")
    assert result.value["result"]["data"] == {"text/plain": "42"}  # same kernel, same state


@pytest.mark.parametrize("mode", ["worker", "in_process"])
async def test_the_kernel_answers_what_its_engine_cannot_instead_of_dying(mode: str) -> None:
    """Below the daemon's check: a cursor far outside the code, sent to the kernel as is,
    makes IPython raise; the kernel answers Jupyter's error content and keeps its state."""
    async with KernelManager(ManagerConfig(confine=False, preload=())) as mgr:
        kid = await mgr.create_kernel(mode=mode)
        assert (await mgr.execute(kid, "state = 41")).success
        kernel = mgr._get(kid)
        for pos in (-1, 2**62, 2**63 - 1, -2**63, 2**64 - 1):
            answer = await kernel.ask(lambda r, pos=pos: p.Complete(r, "pri", pos))
            assert answer["status"] in ("ok", "error")
            if answer["status"] == "error":
                assert answer["ename"] and isinstance(answer["traceback"], list)
            answer = await kernel.ask(lambda r, pos=pos: p.Inspect(r, "pri", pos, 2**63))
            assert answer["status"] in ("ok", "error")
        result = await mgr.execute(kid, "state + 1")
        assert result.success and result.result["data"] == {"text/plain": "42"}
        assert mgr.get_kernel(kid).info["status"] == "idle"


# ====================================================================== 7: deep nesting

def _nested(depth: int, *, id_first: bool, rid: str | None = None) -> bytes:
    """A ping whose args hold `depth` nested one-element arrays (msgpack, built by hand)."""
    head = {"t": "request", "v": 1, "op": "ping"}
    items = [p.encode(k) + p.encode(v) for k, v in head.items()]
    rid = p.encode("id") + p.encode(rid or f"deep-{depth}-{id_first}")
    args = p.encode("args") + b"\x81" + p.encode("x") + b"\x91" * depth + b"\xc0"
    body = [rid, *items, args] if id_first else [*items, args, rid]
    return bytes([0x80 | len(body)]) + b"".join(body)


def test_deeply_nested_requests_get_invalid_argument(raw: _Raw, daemon: Daemon) -> None:
    logged = len(daemon.log)
    ids = []
    for depth in (1_000, 5_000, 50_000):
        for id_first in (True, False):
            raw.send_raw(_nested(depth, id_first=id_first))
            ids.append(f"deep-{depth}-{id_first}")
    for i in range(200):  # a flood of them
        raw.send_raw(_nested(2_000, id_first=False, rid=f"flood{i}"))
        ids.append(f"flood{i}")
    raw.collect(set(ids))
    assert _exactly_once(raw, ids) == {"InvalidArgument": len(ids)}
    assert "nested too deeply" in raw.replies[ids[-1]][0].error["message"]
    # Beyond the scanner's budget (protocol.SCAN_MAX_ITEMS values) the id is not looked for:
    # dropped, as a frame without a readable id is.
    raw.send_raw(_nested(p.SCAN_MAX_ITEMS + 10, id_first=True))
    assert raw.call("ping", rid="alive").ok
    assert f"deep-{p.SCAN_MAX_ITEMS + 10}-True" not in raw.replies
    new = daemon.log[logged:]
    assert "Traceback" not in new and "RecursionError" not in new
    assert len(new) < 2_000, new[-2_000:]
    _serves(daemon)


# ====================================================================== 8: logging

def test_bad_requests_are_not_logged_one_line_each() -> None:
    """At info level, 5 000 malformed requests and 5 000 unreadable frames log a few
    WARNING lines with counts (then at most one a minute), not a line each."""
    d = Daemon()
    try:
        d.wait_ready()
        logged = len(d.log)
        raw = _Raw(d.address)
        try:
            ids = [f"bad{i}" for i in range(5_000)]
            for rid in ids:
                raw.send_raw(p.encode({"t": "request", "id": rid, "v": "one", "op": 5}))
            for i in range(5_000):
                raw.send_raw(b"\xc1 unreadable %d" % i)
            raw.collect(set(ids))
            assert _exactly_once(raw, ids) == {"InvalidArgument": 5_000}
        finally:
            raw.close()
        new = d.log[logged:]
        assert len(new) < 3_000, f"{len(new)} bytes of log:\n{new[:3_000]}"
        assert 1 <= new.count("bad request answered") <= 4
        assert 1 <= new.count("unreadable message dropped") <= 4
        assert "count=1 total=1" in new
        _serves(d)
    finally:
        d.close()


# ====================================================================== 10: ids and names

BAD_NAMES = ["a\n", "ok\n", "x" * 10_000, "a b", "a/b", "", "é", "a\0b"]


def test_ids_namespaces_and_profile_names_are_checked_up_front(raw: _Raw) -> None:
    n = 0
    for name in BAD_NAMES:
        for key in ("id", "namespace", "profile") if name else ("id", "namespace"):
            n += 1
            reply = raw.call("create_kernel", {key: name}, rid=f"n{n}")
            assert not reply.ok
            error = reply.error
            wanted = ("PermissionDenied" if key == "profile" and "/" in name
                      else "InvalidArgument")
            assert error["type"] == wanted, (key, name[:20], error)
            assert len(error["message"]) < 600 and "/sys/fs/cgroup" not in error["message"]
            if wanted == "InvalidArgument":
                assert ("kernel id" if key == "id" else key) in error["message"]
    reply = raw.call("create_kernel", {"profile": "p" * 10_000}, rid="long-profile")
    assert reply.error["type"] == "InvalidArgument" and "1-128" in reply.error["message"]
    reply = raw.call("get_kernel", {"kernel_id": "k" * 100_000}, rid="long-id")
    assert reply.error["type"] == "KernelNotFound" and len(reply.error["message"]) < 300
    reply = raw.call("frobnicate" + "x" * 100_000, rid="long-op")
    assert "unknown op" in reply.error["message"] and len(reply.error["message"]) < 300
    assert raw.call("create_kernel", {"id": "fine.id-1_2", "namespace": "ns.1"},
                    rid="fine").value == "ns.1:fine.id-1_2"


@pytest.mark.sandbox
@pytest.mark.skipif(sandbox_missing() is not None, reason=str(sandbox_missing()))
def test_a_confined_daemon_refuses_bad_ids_before_making_cgroups() -> None:
    """Where kernels get cgroups, an id ending in a newline used to reach the cgroup
    filesystem (EINVAL) and came back as an InternalError naming the host's cgroup path."""
    d = Daemon("[daemon]\nshutdown_grace = 1\n\n[runtime]\npreload = []\n")
    try:
        d.wait_ready()
        raw = _Raw(d.address)
        try:
            for i, args in enumerate(({"id": "a\n"}, {"namespace": "a\n"})):
                error = raw.call("create_kernel", args, rid=f"c{i}").error
                assert error["type"] == "InvalidArgument", error
                assert "cgroup" not in error["message"]
        finally:
            raw.close()
        _serves(d)
    finally:
        d.close()


# ====================================================================== 11: timeouts

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -1, -0.5])
def test_timeouts_must_be_finite_and_not_negative(raw: _Raw, value: float) -> None:
    for key in ("inactivity_timeout", "max_execution_time"):
        error = raw.call("create_kernel", {key: value}, rid=key).error
        assert error["type"] == "InvalidArgument" and key in error["message"], error
        assert "finite number of seconds >= 0" in error["message"]
    kid = _kernel(raw, "k")
    error = raw.call("set_inactivity_timeout", {"kernel_id": kid, "timeout": value},
                     rid="set").error
    assert error["type"] == "InvalidArgument" and "timeout" in error["message"], error
    assert raw.call("get_kernel_ids", rid="ids").value == [kid]  # nothing was created


def test_zero_and_null_timeouts_keep_their_meaning(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as c:
        kid = c.create_kernel(inactivity_timeout=0, max_execution_time=0)
        assert c.get_inactivity_timeout(kid) is None  # 0: never
        assert c.set_inactivity_timeout(kid, 30) is True
        assert c.get_inactivity_timeout(kid) == 30
        assert c.set_inactivity_timeout(kid, 0) is True
        assert c.get_inactivity_timeout(kid) is None
        assert c.set_inactivity_timeout(kid, None) is True
        assert c.execute(kid, "1").success
        c.destroy_all()
