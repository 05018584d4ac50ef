"""What Jupyter front ends need from a kernel, end to end: a real confined daemon
(`confine = true`), real worker kernels (and in-process ones where that applies), the client
over ZeroMQ. Payloads (`obj?` pager, `set_next_input`), `user_expressions`, the in-memory
history (tail, range, search), comms both ways with binary buffers, and an ipywidgets round
trip (issue 13)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from _daemon import Daemon

import kerneld
from kerneld import InvalidArgument, KernelError
from kerneld import protocol as p
from tests._host import sandbox_missing

CONFINED = """
[daemon]
shutdown_grace = 1

[runtime]
preload = []

[kernels]
allow_in_process = true
"""

pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(sandbox_missing() is not None,
                                 reason=str(sandbox_missing()))]

MODES = ["worker", "in_process"]


@pytest.fixture(scope="module")
def client() -> Iterator[kerneld.Client]:
    d = Daemon(CONFINED)
    try:
        d.wait_ready()
        with kerneld.connect(d.address) as c:
            assert c.status()["confine"] is True
            yield c
    finally:
        d.close()


@pytest.fixture(scope="module")
def kernels(client: kerneld.Client) -> Iterator[dict[str, str]]:
    """One kernel per mode, shared by the module's tests (each test uses its own names)."""
    kids = {mode: client.create_kernel(mode=mode) for mode in MODES}
    yield kids
    for kid in kids.values():
        client.destroy_kernel(kid)


def ok(result: p.ExecutionResult) -> p.ExecutionResult:
    assert result.status == "ok", result.error
    return result


@pytest.mark.parametrize("mode", MODES)
def test_user_expressions(client: kerneld.Client, kernels: dict[str, str], mode: str) -> None:
    kid = kernels[mode]
    res = ok(client.execute(kid, "ue = 6", user_expressions={"v": "ue * 7", "e": "ue / 0"}))
    assert res.user_expressions["v"] == {"status": "ok", "data": {"text/plain": "42"},
                                         "metadata": {}}
    assert res.user_expressions["e"]["status"] == "error"
    assert res.user_expressions["e"]["ename"] == "ZeroDivisionError"
    stream = client.execute_stream(kid, "ue", user_expressions={"w": "ue + 1"})
    stream.wait()
    assert stream.result is not None
    assert stream.result.user_expressions["w"]["data"]["text/plain"] == "7"
    failed = client.execute(kid, "1/0", user_expressions={"v": "ue"})
    assert failed.status == "error" and failed.user_expressions == {}
    with pytest.raises(InvalidArgument, match="user_expressions must be a dict of str"):
        client.execute(kid, "1", user_expressions={"v": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize("mode", MODES)
def test_pager_and_set_next_input_payloads(client: kerneld.Client, kernels: dict[str, str],
                                           mode: str) -> None:
    kid = kernels[mode]
    res = ok(client.execute(kid, "len?"))
    (page,) = res.payload
    assert page["source"] == "page" and page["start"] == 0
    text = page["data"]["text/plain"]
    assert "Docstring:" in text and "Type:" in text
    assert not [e for e in res.outputs if e.type == "stream"]  # paged, not printed
    ok(client.execute(kid, "def documented():\n    'the doc'\n    return 'body'"))
    assert "return 'body'" in ok(client.execute(kid, "documented??")).payload[0]["data"][
        "text/plain"]
    res = ok(client.execute(kid, "get_ipython().set_next_input('next cell')"))
    assert res.payload == [{"source": "set_next_input", "text": "next cell", "replace": False}]
    assert ok(client.execute(kid, "1")).payload == []


@pytest.mark.parametrize("mode", MODES)
def test_history_tail_range_and_search(client: kerneld.Client, mode: str) -> None:
    kid = client.create_kernel(mode=mode)
    try:
        for cell in ("a = 1", "a + 1", "b = 2", "a + 1"):
            ok(client.execute(kid, cell))
        ok(client.execute(kid, "hidden = 1", store_history=False))
        tail = client.history(kid, "tail", n=2)
        assert tail == {"status": "ok", "history": [[1, 3, "b = 2"], [1, 4, "a + 1"]]}
        assert client.history(kid, "tail", n=1, output=True)["history"] == [
            [1, 4, ["a + 1", "2"]]]
        assert client.history(kid, hist_access_type="range", session=0, start=1, stop=3,
                              output=True)["history"] == [[0, 1, ["a = 1", None]],
                                                          [0, 2, ["a + 1", "2"]]]
        found = client.history(kid, "search", pattern="a*", unique=True)["history"]
        assert found == [[1, 1, "a = 1"], [1, 4, "a + 1"]]
        assert client.history(kid, "search", pattern="a*", n=1)["history"] == [[1, 4, "a + 1"]]
        assert client.history(kid, "search", pattern="?=*")["history"] == []
        with pytest.raises(InvalidArgument, match="unknown hist_access_type"):
            client.history(kid, "everything")
        client.restart_kernel(kid)
        assert client.history(kid)["history"] == []  # a new process: a new history
    finally:
        client.destroy_kernel(kid)


ECHO_TARGET = """
import comm
def _echo(c, msg):
    c.on_msg(lambda m: c.send({'n': m['content']['data']['n'], 'md': m['metadata']},
                              buffers=m['buffers']))
    c.on_close(lambda m: print('closed', m['content']['comm_id']))
    c.send({'opened': msg['content']['data']}, buffers=msg['buffers'])
comm.get_comm_manager().register_target('echo', _echo)
"""


@pytest.mark.parametrize("mode", MODES)
def test_comms_both_ways_with_binary_buffers(client: kerneld.Client, kernels: dict[str, str],
                                             mode: str) -> None:
    kid = kernels[mode]
    ok(client.execute(kid, ECHO_TARGET))
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    cid = f"front-{mode}"
    stream = client.send_comm(kid, "comm_open", {"comm_id": cid, "target_name": "echo",
                                                 "data": {"x": 1}}, buffers=[blob, b""])
    events = list(stream)
    assert stream.result is not None and stream.result.status == "ok"
    assert stream.result.execution_count is None
    (reply,) = events
    assert reply.type == "comm_msg" and reply.execution_id == stream.execution_id
    assert reply.data["comm_id"] == cid and reply.data["data"] == {"opened": {"x": 1}}
    assert reply.data["buffers"] == [blob, b""]  # byte-exact, both hops
    assert client.comm_info(kid, "echo") == {"status": "ok",
                                             "comms": {cid: {"target_name": "echo"}}}
    stream = client.send_comm(kid, "comm_msg", {"comm_id": cid, "data": {"n": 5}},
                              metadata={"m": 1}, buffers=[memoryview(b"\x00\xff")])
    (reply,) = list(stream)
    assert reply.data["data"] == {"n": 5, "md": {"m": 1}} and reply.data["buffers"] == [
        b"\x00\xff"]
    # a handler that raises: status "error", the error as an execute_error event
    ok(client.execute(kid, f"comm.get_comm_manager().get_comm({cid!r}).on_msg("
                           "lambda m: 1 / 0)"))
    stream = client.send_comm(kid, "comm_msg", {"comm_id": cid, "data": {}})
    events = list(stream)
    assert stream.result is not None and stream.result.status == "error"
    assert stream.result.error is not None and stream.result.error["ename"] == \
        "ZeroDivisionError"
    assert [e.type for e in events] == ["execute_error"]
    stream = client.send_comm(kid, "comm_close", {"comm_id": cid, "data": {}})
    events = list(stream)
    assert [e.data["text"] for e in events if e.type == "stream"] == [f"closed {cid}\n"]
    assert client.comm_info(kid)["comms"] == {}
    # a kernel-side comm: open / msg / close as events of the cell that sent them
    res = ok(client.execute(kid, "k = comm.create_comm(target_name='kside', data={'a': 1}, "
                                 "buffers=[b'\\x01\\x02'])\nk.send({'b': 2})\nk.close()"))
    comm_events = [e for e in res.outputs if e.type.startswith("comm_")]
    assert [e.type for e in comm_events] == ["comm_open", "comm_msg", "comm_close"]
    assert comm_events[0].data["target_name"] == "kside"
    assert comm_events[0].data["buffers"] == [b"\x01\x02"]
    with pytest.raises(InvalidArgument, match="unknown msg_type"):
        client.send_comm(kid, "comm_oops", {"comm_id": "x"}).wait()
    with pytest.raises(InvalidArgument, match="str comm_id"):
        client.send_comm(kid, "comm_msg", {"data": {}}).wait()


def test_ipywidgets_round_trip(client: kerneld.Client, kernels: dict[str, str]) -> None:
    """An IntSlider in a confined worker: its comm_open carries the widget state; an update
    from the "front end" changes the kernel-side value (and is echoed, as ipywidgets 8
    does); an Image widget's bytes travel as a binary buffer, byte for byte, both ways."""
    kid = kernels["worker"]
    res = ok(client.execute(kid, "import ipywidgets as w\nslider = w.IntSlider(value=3)\n"
                                 "slider"))
    opens = {e.data["data"]["state"]["_model_name"]: e for e in res.outputs
             if e.type == "comm_open"}
    model = opens["IntSliderModel"]
    assert model.data["target_name"] == "jupyter.widget"
    assert model.data["data"]["state"]["value"] == 3
    assert model.data["metadata"]["version"].startswith("2.")
    cid = model.data["comm_id"]
    assert res.result is not None
    view = res.result["data"]["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == cid
    assert cid in client.comm_info(kid, "jupyter.widget")["comms"]

    stream = client.send_comm(kid, "comm_msg", {"comm_id": cid, "data": {
        "method": "update", "state": {"value": 7}, "buffer_paths": []}})
    events = list(stream)
    assert stream.result is not None and stream.result.status == "ok"
    echoes = [e.data["data"] for e in events if e.type == "comm_msg"]
    assert {"method": "echo_update", "state": {"value": 7}, "buffer_paths": []} in echoes
    assert ok(client.execute(kid, "slider.value")).result["data"]["text/plain"] == "7"

    png = bytes(range(256)) * 64 + b"\x00\xff" * 100
    res = ok(client.execute(kid, f"image = w.Image(value={png!r}, format='png')"))
    (img,) = [e for e in res.outputs
              if e.type == "comm_open" and e.data["data"]["state"]["_model_name"] ==
              "ImageModel"]
    assert img.data["buffers"] == [png]
    assert img.data["data"]["buffer_paths"] == [["value"]]
    back = png[::-1]
    list(client.send_comm(kid, "comm_msg", {"comm_id": img.data["comm_id"], "data": {
        "method": "update", "state": {}, "buffer_paths": [["value"]]}}, buffers=[back]))
    assert ok(client.execute(kid, f"image.value == {back!r}")).result["data"][
        "text/plain"] == "True"

    # a widget changed from a thread between cells: a kernel event (no execution) that
    # subscribers get
    seen: list[Any] = []
    client.on_kernel_event(kid, "comm_msg", seen.append)
    ok(client.execute(kid, "import threading, time\n"
                           "threading.Thread(target=lambda: (time.sleep(0.3),"
                           " setattr(slider, 'value', 11))).start()"))
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen and seen[0].execution_id is None
    assert seen[0].data["data"] == {"method": "update", "state": {"value": 11},
                                    "buffer_paths": []}
    client.off_kernel_event(kid, "comm_msg")


@pytest.mark.parametrize("mode", MODES)
def test_comm_messages_from_a_thread_during_a_cell_are_that_cells_events(
        client: kerneld.Client, kernels: dict[str, str], mode: str) -> None:
    kid = kernels[mode]
    res = ok(client.execute(kid, "import comm, threading\n"
                                 "tc = comm.create_comm(target_name='threaded')\n"
                                 "def _send():\n"
                                 "    for i in range(50): tc.send({'i': i}, buffers=[bytes([i])])\n"
                                 "t = threading.Thread(target=_send); t.start(); t.join()"))
    sent = [e for e in res.outputs if e.type == "comm_msg"]
    assert [e.data["data"]["i"] for e in sent] == list(range(50))
    assert [e.data["buffers"] for e in sent] == [[bytes([i])] for i in range(50)]
    assert all(e.execution_id == res.execution_id for e in sent)


def test_a_comm_message_over_the_workers_limit_is_an_error_in_the_cell(
        client: kerneld.Client, kernels: dict[str, str]) -> None:
    kid = kernels["worker"]
    res = client.execute(kid, "import comm\nbig = comm.create_comm(target_name='big')\n"
                              f"big.send({{}}, buffers=[bytes({p.MAX_WORKER_MESSAGE})])")
    assert res.status == "error" and res.error is not None
    assert res.error["ename"] == "ValueError" and "exceeds the limit" in res.error["evalue"]
    assert ok(client.execute(kid, "'still here'")).result["data"]["text/plain"] == \
        "'still here'"


def test_history_and_comm_info_of_a_dead_kernel_fail_clearly(client: kerneld.Client) -> None:
    kid = client.create_kernel()
    pid = client.get_kernel(kid).info["pid"]
    import os
    import signal
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while client.get_kernel(kid).info["status"] != "dead" and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(KernelError, match="dead"):
        client.history(kid)
    with pytest.raises(KernelError, match="dead"):
        client.comm_info(kid)
    client.destroy_kernel(kid)
