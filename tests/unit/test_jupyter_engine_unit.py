"""The engine's Jupyter extras without a process: the bounded history and its queries (as
ipykernel's history_reply), payloads, user_expressions, comms through the engine's own
CommManager, and the kernel record's checks of comm events and send_comm requests."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from kerneld import InvalidArgument, KernelManager, LimitExceeded
from kerneld import protocol as p
from kerneld.config import ManagerConfig
from kerneld.runtime.engine import Engine
from kerneld.runtime.history import KeptHistory, glob
from tests._fake_backend import FakeFactory, FakeHost, record


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = Engine(singleton=False)
    events: list[tuple[str, dict[str, Any]]] = []
    eng.attach(lambda t, d: events.append((t, d)), lambda: None, None)
    eng.events = events  # type: ignore[attr-defined]
    previous = InteractiveShell._instance
    InteractiveShell._instance = eng.shell  # as the in-process channel does while it serves
    try:
        yield eng
    finally:
        InteractiveShell._instance = previous
        eng.detach()


def run(engine: Engine, code: str, **kw: Any) -> Any:
    return engine.execute(code, **kw)


def test_history_tail_range_search_as_ipykernel(engine: Engine) -> None:
    for cell in ("x = 1", "x + 1", "%time y = 2", "x + 1", "z = 3"):
        run(engine, cell)
    run(engine, "not stored", store_history=False)
    hist = engine.history
    assert hist("tail", n=2) == {"status": "ok", "history": [[1, 4, "x + 1"], [1, 5, "z = 3"]]}
    assert hist("tail", n=1, output=True)["history"] == [[1, 5, ["z = 3", None]]]
    assert hist("tail", n=2, output=True)["history"][0] == [1, 4, ["x + 1", "2"]]
    assert [h[1] for h in hist("tail")["history"]] == [1, 2, 3, 4, 5]  # n None: everything
    assert hist("tail", n=0)["history"] == []
    # range: the current session is reported as 0; stop excluded; negatives from the end
    assert hist("range", session=0, start=2, stop=4)["history"] == [[0, 2, "x + 1"],
                                                                    [0, 3, "%time y = 2"]]
    assert hist("range", start=-2)["history"] == [[0, 4, "x + 1"], [0, 5, "z = 3"]]
    assert hist("range", session=1, start=5)["history"] == [[0, 5, "z = 3"]]
    assert hist("range", session=-1)["history"] == []  # no earlier session exists
    # raw=False: the transformed source
    assert hist("range", start=3, stop=4, raw=False)["history"][0][2].startswith(
        "get_ipython().run_line_magic('time'")
    # search: sqlite GLOB on the raw input, unique keeps the newest, n the last n
    assert [h[1] for h in hist("search", pattern="x*")["history"]] == [1, 2, 4]
    assert [h[1] for h in hist("search", pattern="x*", unique=True)["history"]] == [1, 4]
    assert hist("search", pattern="x*", n=1)["history"] == [[1, 4, "x + 1"]]
    assert hist("search", pattern="X*")["history"] == []  # case-sensitive, as GLOB
    assert [h[1] for h in hist("search")["history"]] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="unknown hist_access_type 'all'"):
        hist("all")


def test_glob_is_sqlites() -> None:
    assert glob("a?c")("abc") and not glob("a?c")("abbc")
    assert glob("[^x]y")("ay") and not glob("[^x]y")("xy")
    assert glob("[!x]y")("ay")
    assert glob("a*")("a\nb")  # * spans lines, as GLOB's does
    assert not glob("A*")("abc")


def test_history_is_bounded_and_a_new_session_forgets(engine: Engine) -> None:
    manager = engine.shell.history_manager
    assert isinstance(manager, KeptHistory)
    assert manager.kept.maxlen == p.HISTORY_LIMIT == 10_000
    manager.kept = collections.deque(maxlen=3)
    for i in range(5):
        run(engine, f"v = {i}")
    assert [h[2] for h in engine.history("tail")["history"]] == ["v = 2", "v = 3", "v = 4"]
    assert [h[1] for h in engine.history("range")["history"]] == [3, 4, 5]
    assert manager.db_input_cache == []  # IPython's never-written queue does not grow
    engine.shell.reset(new_session=True)  # what the zygote and the warm pool do
    assert engine.history("tail")["history"] == []
    assert manager.session_number == 1


def test_payloads_pager_and_set_next_input(engine: Engine) -> None:
    out = run(engine, "len?")
    (page,) = out.payload
    assert page["source"] == "page" and page["start"] == 0
    assert "Docstring:" in page["data"]["text/plain"]
    out = run(engine, "def f():\n    'doc'\n    return 1")
    assert out.payload == []
    assert "return 1" in run(engine, "f??").payload[0]["data"]["text/plain"]  # source
    out = run(engine, "get_ipython().set_next_input('print(1)', replace=True)")
    assert out.payload == [{"source": "set_next_input", "text": "print(1)", "replace": True}]
    assert run(engine, "1").payload == []  # cleared after each cell


def test_user_expressions(engine: Engine) -> None:
    out = run(engine, "a = 6", user_expressions={"ok": "a * 7", "bad": "a / 0"})
    assert out.user_expressions["ok"] == {"status": "ok", "data": {"text/plain": "42"},
                                          "metadata": {}}
    bad = out.user_expressions["bad"]
    assert bad["status"] == "error" and bad["ename"] == "ZeroDivisionError"
    failed = run(engine, "1/0", user_expressions={"ok": "a"})
    assert failed.status == "error" and failed.user_expressions == {}  # as ipykernel


def test_comms_both_ways_through_the_engines_manager(engine: Engine) -> None:
    events = engine.events  # type: ignore[attr-defined]
    run(engine, "import comm\n"
                "def target(c, msg):\n"
                "    c.on_msg(lambda m: c.send({'got': m['content']['data']},"
                " buffers=m['buffers'][::-1]))\n"
                "    c.send({'opened': msg['content']['data']}, buffers=msg['buffers'])\n"
                "comm.get_comm_manager().register_target('echo', target)\n")
    events.clear()
    assert engine.handle_comm("comm_open", {"comm_id": "c1", "target_name": "echo",
                                            "data": {"hi": 1}}, {}, [b"\x00\x01"]) is None
    assert events == [("comm_msg", {"data": {"opened": {"hi": 1}}, "comm_id": "c1",
                                    "metadata": {}, "buffers": [b"\x00\x01"]})]
    assert engine.comm_info() == {"status": "ok", "comms": {"c1": {"target_name": "echo"}}}
    assert engine.comm_info("other") == {"status": "ok", "comms": {}}
    events.clear()
    engine.handle_comm("comm_msg", {"comm_id": "c1", "data": {"n": 2}}, {},
                       [b"a", memoryview(b"bc").tobytes()])
    assert events[0][1]["buffers"] == [b"bc", b"a"]
    events.clear()
    run(engine, "def boom(m): raise RuntimeError('in handler')\n"
                "comm.get_comm_manager().get_comm('c1').on_msg(boom)")
    events.clear()
    error = engine.handle_comm("comm_msg", {"comm_id": "c1", "data": {}}, {}, [])
    assert error is not None and error["ename"] == "RuntimeError"
    assert events[0][0] == "execute_error"
    assert engine.handle_comm("comm_close", {"comm_id": "c1", "data": {}}, {}, []) is None
    assert engine.comm_info()["comms"] == {}
    # a kernel-side comm: open, message with a memoryview buffer, close
    events.clear()
    run(engine, "c = comm.create_comm(target_name='t', data={'a': 1},"
                " buffers=[memoryview(b'xyz')])\nc.send({'b': 2})\nc.close()")
    assert [t for t, _ in events] == ["comm_open", "comm_msg", "comm_close"]
    assert events[0][1]["target_name"] == "t" and events[0][1]["buffers"] == [b"xyz"]


# --------------------------------------------------------------------------- the record


def _output(exec_id: str, type_: str, data: dict[str, Any]) -> p.Output:
    return p.Output(exec_id, type_, data)


async def test_the_record_passes_comm_events_and_drops_malformed_ones() -> None:
    host = FakeHost()
    kernel = record(host)
    await kernel.start()
    backend = host.factory.made[0]
    backend.auto = False
    manager_like = kernel
    from kerneld.execution import Execution
    execution = Execution(kernel.id, "w", allow_stdin=False, silent=False, store_history=True,
                          streaming=False)
    manager_like.submit(execution)
    good = {"comm_id": "c", "data": {}, "metadata": {}, "buffers": [b"\x00"]}
    for data in (good, {**good, "comm_id": 5}, {**good, "buffers": ["str"]},
                 {**good, "buffers": b"x"}, {"data": {}}):
        kernel.on_message(_output(execution.id, "comm_msg", data))
    kernel.on_message(_output(execution.id, "comm_bogus", good))
    kernel.on_message(_output("", "comm_open", {**good, "target_name": "t"}))  # outside
    kernel.on_message(_output("", "stream", {"name": "stdout", "text": "x"}))  # dropped
    kernel.on_message(_output("", "comm_msg", {"comm_id": None}))  # malformed: dropped
    backend.done(execution.id)
    result = await execution.future
    assert [(e.type, e.data) for e in result.outputs] == [("comm_msg", good),
                                                          ("execute_result", {"data": {
                                                              "text/plain": "2"}})]
    outside = [e for e in host.events if e.execution_id is None]
    assert [(e.type, e.data["comm_id"]) for e in outside] == [("comm_open", "c")]
    await kernel.destroy("KernelDestroyed", "done")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[KernelManager, FakeFactory]]:
    factory = FakeFactory()
    manager = KernelManager(ManagerConfig(), backends=factory)
    yield manager, factory
    await manager.close()


async def test_send_comm_is_queued_as_an_execution_and_checked(
        fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, factory = fake
    kid = await manager.create_kernel()
    backend = factory.made[0]
    backend.auto = False
    running = manager.submit(kid, "1")
    stream = manager.send_comm(kid, "comm_msg", {"comm_id": "c", "data": {}},
                               buffers=[bytearray(b"\x01")])
    assert manager.get_ongoing_execution_count(kid) == 2  # queued behind the cell, FIFO
    backend.done(backend.executes[0].exec_id)
    await running
    await asyncio.sleep(0)
    (request,) = [m for m in backend.sent if isinstance(m, p.CommRequest)]
    assert (request.exec_id, request.msg_type, request.buffers) == (stream.execution_id,
                                                                    "comm_msg", [b"\x01"])
    backend.host.on_message(p.Done(request.exec_id, "ok"))
    result = await stream.wait()
    assert (result.status, result.execution_count) == ("ok", None)
    bad: list[tuple[tuple[Any, ...], str]] = [
        (("comm_nope", {"comm_id": "c"}), "unknown msg_type 'comm_nope'"),
        (("comm_msg", {"data": {}}), "str comm_id"),
        (("comm_open", {"comm_id": "c"}), "target_name"),
        (("comm_msg", {"comm_id": "c"}, None, ["text"]), "buffers must be a list of bytes"),
        (("comm_msg", {"comm_id": "c"}, []), "metadata must be a dict"),
    ]
    for args, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            manager.send_comm(kid, *args)
    with pytest.raises(LimitExceeded, match="comm message of"):
        manager.send_comm(kid, "comm_msg", {"comm_id": "c"},
                          buffers=[b"\0" * (p.MAX_WORKER_MESSAGE // 2 + 1)])
    with pytest.raises(InvalidArgument, match="unknown hist_access_type 'all'"):
        await manager.history(kid, "all")
    with pytest.raises(InvalidArgument, match="user_expressions must be a dict of str"):
        manager.submit(kid, "1", user_expressions={"a": 1})  # type: ignore[dict-item]


async def test_execute_carries_user_expressions_and_done_carries_the_extras(
        fake: tuple[KernelManager, FakeFactory]) -> None:
    manager, factory = fake
    kid = await manager.create_kernel()
    backend = factory.made[0]
    backend.auto = False
    future = manager.submit(kid, "x", user_expressions={"a": "x"})
    await asyncio.sleep(0)
    (execute,) = backend.executes
    assert execute.user_expressions == {"a": "x"}
    page = [{"source": "page", "data": {"text/plain": "doc"}, "start": 0}]
    values = {"a": {"status": "ok", "data": {"text/plain": "1"}, "metadata": {}}}
    backend.host.on_message(p.Done(execute.exec_id, "ok", 1, payload=page,
                                   user_expressions=values))
    result = await future
    assert (result.payload, result.user_expressions) == (page, values)
