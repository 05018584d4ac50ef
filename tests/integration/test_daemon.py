"""The daemon through its real clients: `kerneld serve` in a subprocess, `kerneld.connect()`.

One daemon per module (its zygote takes a second to start); tests that end daemons (signals)
live in test_daemon_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest
from _daemon import MOUNT_ROOT, Daemon

import kerneld
from kerneld import (
    DaemonUnavailable,
    ExecutionResult,
    InvalidArgument,
    KernelEvent,
    KernelNotFound,
    LimitExceeded,
    PermissionDenied,
)
from kerneld import protocol as p


@pytest.fixture
def client(daemon: Daemon) -> Iterator[kerneld.client.Client]:
    with kerneld.connect(daemon.address) as c:
        yield c
        c.destroy_all()


# ---------------------------------------------------------------------- kernels and executions

def test_create_execute_list_destroy(client: kerneld.client.Client) -> None:
    kid = client.create_kernel(namespace="alice", env={"GREETING": "hello"}, profile="default")
    assert kid.startswith("alice:")
    other = client.create_kernel(id="k2", namespace="bob")
    assert other == "bob:k2"
    res = client.execute(kid, "import os; x = 41; print(os.environ['GREETING']); x + 1")
    assert isinstance(res, ExecutionResult) and res.success and res.status == "ok"
    assert res.result is not None and res.result["data"]["text/plain"] == "42"
    assert [e.type for e in res.outputs] == ["stream", "execute_result"]
    assert res.outputs[0].data == {"name": "stdout", "text": "hello\n"}
    assert client.execute(kid, "x").result["data"]["text/plain"] == "41"  # state persists

    listed = client.list_kernels("alice")
    assert [k["id"] for k in listed] == [kid]
    info = listed[0]
    assert info["namespace"] == "alice" and info["mode"] == "worker"
    assert info["profile"] == "default" and info["status"] == "idle"
    assert info["execution_count"] == 2 and isinstance(info["pid"], int)
    assert set(client.get_kernel_ids()) == {kid, other}
    assert {k["id"] for k in client.list_kernels()} == {kid, other}

    handle = client.get_kernel(kid)
    assert handle.id == kid and handle.info["id"] == kid
    assert handle.execute("x * 2").result["data"]["text/plain"] == "82"

    assert client.destroy_all("bob") == 1
    client.destroy_kernel(kid)
    assert client.get_kernel_ids() == []


def test_python_error_is_a_result_not_an_exception(client: kerneld.client.Client) -> None:
    kid = client.create_kernel()
    res = client.execute(kid, "1/0")
    assert res.status == "error" and not res.success
    assert res.error is not None and res.error["ename"] == "ZeroDivisionError"
    assert res.outputs[-1].type == "execute_error"
    syntax = client.execute(kid, "def f(:")
    assert syntax.error is not None and syntax.error["ename"] == "SyntaxError"


def test_execute_stream_sync(client: kerneld.client.Client) -> None:
    kid = client.create_kernel()
    code = ("import sys, time\nfor i in range(5):\n    print('line', i, flush=True)\n"
            "    time.sleep(0.06)\nprint('oops', file=sys.stderr)\n'done'")
    stream = client.execute_stream(kid, code)
    events = list(stream)
    text = "".join(e.data["text"] for e in events
                   if e.type == "stream" and e.data["name"] == "stdout")
    assert text == "".join(f"line {i}\n" for i in range(5))
    assert sum(1 for e in events if e.type == "stream") >= 3  # live, not one chunk at the end
    assert events[-1].type == "execute_result"
    assert all(isinstance(e, KernelEvent) and e.kernel_id == kid for e in events)
    assert stream.result is not None and stream.result.success
    assert stream.result.outputs == events
    assert stream.execution_id == stream.result.execution_id == events[0].execution_id


async def test_async_client_stream_and_calls(daemon: Daemon) -> None:
    async with kerneld.connect_async(daemon.address) as client:
        kid = await client.create_kernel(namespace="async")
        stream = client.execute_stream(kid, "print('a'); display({'x': 1}, raw=False); 7")
        kinds = [e.type async for e in stream]
        assert kinds[0] == "stream" and kinds[-1] == "execute_result"
        assert "display_data" in kinds
        assert stream.result is not None and stream.result.execution_count == 1
        assert await client.ping_kernel(kid) is True
        assert await client.set_inactivity_timeout(kid, 300) is True
        assert await client.get_inactivity_timeout(kid) == 300
        remaining = await client.get_time_until_shutdown(kid)
        assert remaining is not None and 290 < remaining <= 300
        assert (await client.get_execution_info(kid))["count"] == 0
        assert await client.get_ongoing_execution_count(kid) == 0
        assert await client.get_stuck_executions(kid) == []
        completion = await client.complete(kid, "import o", 8)
        assert "os" in completion["matches"]
        assert (await client.is_complete(kid, "for i in x:"))["status"] == "incomplete"
        assert (await client.inspect(kid, "len", 3))["status"] == "ok"
        assert isinstance(await client.get_pool_stats(), dict)
        handle = await client.get_kernel(kid)
        assert (await handle.execute("6*7")).result["data"]["text/plain"] == "42"
        assert await client.restart_kernel(kid) is True
        res = await client.execute(kid, "'x' in dir()")
        assert res.result["data"]["text/plain"] == "False"
        assert await client.force_terminate_kernel(kid, "enough") is True
        assert await client.get_kernel_ids() == []


def test_errors_are_the_managers(client: kerneld.client.Client, daemon: Daemon) -> None:
    with pytest.raises(KernelNotFound):
        client.execute("nope", "1")
    with pytest.raises(KernelNotFound):
        list(client.execute_stream("nope", "1"))
    with pytest.raises(KernelNotFound):
        client.get_kernel("nope")
    with pytest.raises(KernelNotFound):
        client.destroy_kernel("nope")
    with pytest.raises(KernelNotFound):
        client.get_execution_info("nope")
    for false_for_unknown in (client.ping_kernel, client.interrupt_kernel,
                              client.restart_kernel):
        assert false_for_unknown("nope") is False
    assert client.set_inactivity_timeout("nope", 5) is False
    with pytest.raises(InvalidArgument, match="invalid kernel id"):
        client.create_kernel(id="a:b")
    kid = client.create_kernel(id="dup")
    with pytest.raises(InvalidArgument, match="already exists"):
        client.create_kernel(id="dup")
    with pytest.raises(PermissionDenied, match="in_process"):
        client.create_kernel(mode=kerneld.KernelMode.IN_PROCESS)  # daemon default: refused
    with pytest.raises(LimitExceeded, match="code is larger"):
        client.execute(kid, "#" * (p.MAX_CODE_BYTES + 10))
    with pytest.raises(LimitExceeded, match="exceeds the limit"):
        client.execute(kid, "#" * (p.MAX_REQUEST_BYTES + 10))  # refused before sending
    with pytest.raises(kerneld.ProfileError):
        client.create_kernel(profile="no-such-profile")
    assert client.execute(kid, "1+1").success  # nothing above disturbed the daemon


def test_filesystem_root_is_made_absolute_by_the_client(client: kerneld.client.Client,
                                                        tmp_path: object) -> None:
    here = os.getcwd()
    d = __import__("tempfile").mkdtemp(prefix="kd-fs-", dir=MOUNT_ROOT)
    try:
        os.chdir(d)
        with open("data.txt", "w") as f:
            f.write("from the host")
        kid = client.create_kernel(filesystem={"enabled": True, "root": "."})
        res = client.execute(kid, "open('data.txt').read()")
        assert res.success, res.error
        assert res.result["data"]["text/plain"] == "'from the host'"
    finally:
        os.chdir(here)
        __import__("shutil").rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------- subscriptions


def test_subscriptions_reach_every_subscriber(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as a, kerneld.connect(daemon.address) as b:
        kid = a.create_kernel()
        got_a: list[KernelEvent] = []
        got_b: list[KernelEvent] = []
        restarted = threading.Event()
        a.on_kernel_event(kid, kerneld.KernelEvents.STREAM, got_a.append)
        b.on_kernel_event(kid, "*", got_b.append)
        b.on_kernel_event(kid, "kernel_restarted", lambda e: restarted.set())
        with pytest.raises(KernelNotFound):
            b.on_kernel_event("nope", "*", got_b.append)
        with pytest.raises(InvalidArgument, match="unknown event type"):
            b.on_kernel_event(kid, "bogus", got_b.append)
        res = a.execute(kid, "print('to everyone'); 5")
        deadline = time.monotonic() + 5
        while (len(got_a) < 1 or len(got_b) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.data["text"] for e in got_a] == ["to everyone\n"]
        assert [e.type for e in got_b] == ["stream", "execute_result"]
        assert got_b == res.outputs
        a.off_kernel_event(kid, "stream")
        a.execute(kid, "print('again')")
        assert a.restart_kernel(kid)
        assert restarted.wait(5)
        time.sleep(0.1)
        assert len(got_a) == 1  # unsubscribed
        assert [e.data.get("text") for e in got_b if e.type == "stream"] == [
            "to everyone\n", "again\n"]
        a.destroy_kernel(kid)


# ---------------------------------------------------------------------- concurrency


async def test_twenty_clients_fifty_executions_each(daemon: Daemon) -> None:
    """Every client receives exactly its own outputs, complete and in order."""
    async def one(n: int) -> None:
        async with kerneld.connect_async(daemon.address) as client:
            kid = await client.create_kernel(namespace=f"c{n}")
            try:
                for i in range(50):
                    code = f"for j in range(3): print('c{n}', {i}, j)\n'r{n}-{i}'"
                    if i % 2:
                        res = await client.execute(kid, code)
                        events = res.outputs
                    else:
                        stream = client.execute_stream(kid, code)
                        events = [e async for e in stream]
                        assert stream.result is not None
                        res = stream.result
                    out = "".join(e.data["text"] for e in events if e.type == "stream")
                    assert out == "".join(f"c{n} {i} {j}\n" for j in range(3)), out
                    assert res.result["data"]["text/plain"] == f"'r{n}-{i}'"
                    assert res.execution_count == i + 1
                    assert all(e.kernel_id == kid for e in events)
            finally:
                await client.destroy_kernel(kid)

    start = time.monotonic()
    await asyncio.gather(*(one(n) for n in range(20)))
    assert time.monotonic() - start < 60


def test_sync_client_from_several_threads(daemon: Daemon) -> None:
    with kerneld.connect(daemon.address) as client:
        shared = client.create_kernel()
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                own = client.create_kernel()
                for i in range(10):
                    assert client.execute(own, f"{n}*{i}").result["data"]["text/plain"] == str(
                        n * i)
                    res = client.execute(shared, f"print({n}, {i})")
                    assert res.outputs[0].data["text"] == f"{n} {i}\n"
                events = list(client.execute_stream(own, "print('s')"))
                assert events[0].data["text"] == "s\n"
                client.destroy_kernel(own)
            except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert client.get_kernel(shared).info["execution_count"] == 80
        client.destroy_kernel(shared)


def test_queued_executions_are_fifo(client: kerneld.client.Client) -> None:
    kid = client.create_kernel()
    results: list[ExecutionResult] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        res = client.execute(kid, f"import time; time.sleep(0.01); {i}")
        with lock:
            results.append(res)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join(30)
    counts = sorted(r.execution_count or 0 for r in results)
    assert counts == list(range(1, 7))


def test_interrupt_over_the_wire(client: kerneld.client.Client) -> None:
    kid = client.create_kernel()
    stream = client.execute_stream(kid, "import time\nwhile True: time.sleep(0.01)")
    it = iter(stream)
    box: dict[str, object] = {}

    def consume() -> None:
        box["events"] = list(it)

    t = threading.Thread(target=consume)
    t.start()
    deadline = time.monotonic() + 10
    while client.get_ongoing_execution_count(kid) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert client.interrupt_kernel(kid) is True
    t.join(10)
    assert stream.result is not None and stream.result.error is not None
    assert stream.result.error["ename"] == "KeyboardInterrupt"
    assert client.execute(kid, "1").success


# ---------------------------------------------------------------------- connecting


def test_absent_daemon_fails_fast_naming_the_address(tmp_path: object) -> None:
    address = "ipc:///tmp/kerneld-no-such-dir/kerneld.sock"
    start = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="kerneld-no-such-dir"):
        kerneld.connect(address)
    assert time.monotonic() - start < 0.5


async def test_absent_tcp_daemon_fails_within_connect_timeout() -> None:
    from _daemon import free_port
    client = kerneld.connect_async(f"tcp://127.0.0.1:{free_port()}", connect_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="127.0.0.1"):
        await client.list_kernels()
    assert time.monotonic() - start < 2
    await client.close()


def test_stale_socket_file_fails_fast(tmp_path) -> None:
    import socket
    path = os.path.join(tmp_path, "kerneld.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nothing listens
    start = time.monotonic()
    with pytest.raises(DaemonUnavailable, match="no kerneld daemon answers"):
        kerneld.connect(f"ipc://{path}")
    assert time.monotonic() - start < 0.5


def test_socket_file_permissions(daemon: Daemon) -> None:
    st = os.stat(daemon.socket_path)
    assert st.st_mode & 0o777 == 0o660
    assert not os.stat(daemon.socket_path.parent).st_mode & 0o002


def test_status(client: kerneld.client.Client, daemon: Daemon) -> None:
    kid = client.create_kernel()
    status = client.status()
    assert status["version"] == kerneld.__version__ and status["pid"] == daemon.pid
    assert status["kernels"] == {"total": 1, "starting": 0, "idle": 1, "busy": 0, "restarting": 0,
                                 "dead": 0}
    assert status["pool"].startswith("pool") and status["rss_bytes"] > 1 << 20
    assert status["confine"] is False and status["allow_in_process"] is False
    assert status["uptime"] > 0
    client.destroy_kernel(kid)
    assert any(m.startswith("STATUS=kernels=") for m in daemon.messages)
