"""A kerneld kernelspec kernel's life through jupyter_client 8.10 (run under .venv-clients by
tests/jupyter/test_jupyter_lifecycle.py): confinement seen from inside, the daemon's view (`kerneld
ls`), interrupt by SIGINT, restart, shutdown, the adapter killed, the kernel killed, stdin,
and comms both ways with binary buffers."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import pytest
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

KERNEL = os.environ.get("KERNELD_JUPYTER_KERNEL", "kerneld-default")
DAEMON_PYTHON = os.environ["KERNELD_TEST_PYTHON"]
TIMEOUT = 30


def daemon_kernels() -> list[dict[str, Any]]:
    done = subprocess.run([DAEMON_PYTHON, "-m", "kerneld", "ls", "--json"], capture_output=True,
                          text=True, check=True, timeout=30)
    return list(json.loads(done.stdout))


def wait_kernels(n: int, timeout: float = 15) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(kernels := daemon_kernels()) != n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(kernels) == n, kernels
    return kernels


@pytest.fixture
def km() -> Iterator[KernelManager]:
    manager = KernelManager(kernel_name=KERNEL)
    manager.start_kernel()
    try:
        yield manager
    finally:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)


def run(kc: Any, code: str, **kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=TIMEOUT, output_hook=outputs.append, **kw)
    return reply["content"], outputs


def value(kc: Any, code: str) -> Any:
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", reply
    results = [o for o in outputs if o["msg_type"] == "execute_result"]
    return ast.literal_eval(results[-1]["content"]["data"]["text/plain"])


def test_confined_inside_and_listed_by_the_daemon(km: KernelManager) -> None:
    with tempfile.NamedTemporaryFile("w", dir="/tmp", suffix=".secret") as secret:
        secret.write("host secret")
        secret.flush()
        os.chmod(secret.name, 0o644)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=TIMEOUT)
        try:
            uid, seccomp, nnp, host_file, net = value(kc, f"""
import os, socket
status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines()
              if ':\\t' in line)
def reach_file():
    try:
        return open({secret.name!r}).read()
    except OSError as exc:
        return type(exc).__name__
def reach_net():
    try:
        socket.create_connection(('127.0.0.1', {port}), timeout=2).close()
        return 'connected'
    except OSError as exc:
        return type(exc).__name__
(os.getuid(), status['Seccomp'].strip(), status['NoNewPrivs'].strip(), reach_file(), reach_net())
""")
        finally:
            kc.stop_channels()
            listener.close()
    assert uid != 0
    assert seccomp == "2" and nnp == "1"
    assert host_file != "host secret" and host_file.endswith("Error"), host_file
    assert net != "connected", net
    [kernel] = wait_kernels(1)
    assert kernel["profile"] == "default" and kernel["namespace"] == "jupyter", kernel
    assert kernel["status"] in ("idle", "busy"), kernel
    km.shutdown_kernel()
    wait_kernels(0)


def test_sigint_interrupts_and_keeps_state(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    try:
        assert run(kc, "kept = 41")[0]["status"] == "ok"
        msg_id = kc.execute("import time; time.sleep(30)")
        time.sleep(1.0)
        started = time.monotonic()
        km.interrupt_kernel()  # interrupt_mode "signal": SIGINT to the adapter
        reply = kc.get_shell_msg(timeout=10)
        took = time.monotonic() - started
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error", reply["content"]
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert took < 2.0, took
        assert value(kc, "kept + 1") == 42
    finally:
        kc.stop_channels()


def test_interrupt_request_on_control() -> None:
    manager = KernelManager(kernel_name=KERNEL)
    manager.kernel_spec.interrupt_mode = "message"  # what a provisioner-less client may ask
    manager.start_kernel()
    kc = manager.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        kc.execute("import time; time.sleep(30)")
        time.sleep(1.0)
        manager.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=10)
        assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    finally:
        kc.stop_channels()
        manager.shutdown_kernel()
    wait_kernels(0)


def test_restart_resets_state_and_replaces_the_kernel(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    try:
        run(kc, "before_restart = 1")
        [old] = wait_kernels(1)
        km.restart_kernel()
        kc.wait_for_ready(timeout=TIMEOUT)
        assert value(kc, "'before_restart' in globals()") is False
        [new] = wait_kernels(1)
        assert new["id"] != old["id"]
    finally:
        kc.stop_channels()
    km.shutdown_kernel()
    wait_kernels(0)


def test_sigkilled_adapter_leaves_no_kernel(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    kc.stop_channels()
    wait_kernels(1)
    assert km.provisioner is not None
    os.kill(km.provisioner.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    wait_kernels(0, timeout=20)
    km.cleanup_resources()


def test_killed_kernel_ends_the_adapter(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    try:
        [kernel] = wait_kernels(1)
        kc.execute("import time; time.sleep(60)")
        time.sleep(0.5)
        os.kill(kernel["pid"], signal.SIGKILL)  # the confined worker, as the OOM killer would
        deadline = time.monotonic() + 10
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not km.is_alive(), "the adapter outlived its kernel"
        assert km.provisioner is not None
        assert km.provisioner.process.returncode != 0  # type: ignore[attr-defined]
        wait_kernels(0)
        km.restart_kernel(now=True)  # what the client's restarter does next
        kc.wait_for_ready(timeout=TIMEOUT)
        assert value(kc, "6 * 7") == 42
    finally:
        kc.stop_channels()


def test_stdin_roundtrip(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    prompts = []

    def answer(msg: dict[str, Any]) -> None:
        prompts.append(msg["content"])
        kc.input("kerneld")
    try:
        reply, outputs = run(kc, "name = input('who? ')\nprint('hi', name)", allow_stdin=True,
                             stdin_hook=answer)
        assert reply["status"] == "ok", reply
        assert prompts == [{"prompt": "who? ", "password": False}]
        assert "hi kerneld\n" in "".join(o["content"].get("text", "") for o in outputs)
    finally:
        kc.stop_channels()


def test_comms_both_ways_with_buffers(km: KernelManager) -> None:
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    try:
        reply, _ = run(kc, """
from comm import get_comm_manager
def target(comm, msg):
    comm.send({'opened': msg['content']['data']})
    comm.on_msg(lambda m: comm.send({'echo': m['content']['data']},
                                    buffers=[bytes(b)[::-1] for b in m['buffers']]))
get_comm_manager().register_target('echo', target)
""")
        assert reply["status"] == "ok", reply
        comm_id = "c0ffee"
        kc.shell_channel.send(kc.session.msg("comm_open", {
            "comm_id": comm_id, "target_name": "echo", "data": {"x": 1}}))
        opened = _iopub(kc, "comm_msg")
        assert opened["content"]["data"] == {"opened": {"x": 1}}
        info = kc.comm_info(target_name="echo", reply=True)["content"]
        assert info["comms"] == {comm_id: {"target_name": "echo"}}
        msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"y": 2}})
        kc.session.send(kc.shell_channel.socket, msg, buffers=[b"\x00\x01\x02"])
        echoed = _iopub(kc, "comm_msg")
        assert echoed["content"]["data"] == {"echo": {"y": 2}}
        assert [bytes(b) for b in echoed["buffers"]] == [b"\x02\x01\x00"]
        kc.shell_channel.send(kc.session.msg("comm_close", {"comm_id": comm_id, "data": {}}))
        time.sleep(0.5)
        assert kc.comm_info(reply=True)["content"]["comms"] == {}
    finally:
        kc.stop_channels()


def test_widget_metadata_and_updates_from_a_thread(km: KernelManager) -> None:
    """ipywidgets' comm_open carries its protocol version in the message metadata (JupyterLab's
    widget manager refuses a comm_open without it), and a widget updated by a thread after its
    cell has ended reaches IOPub, with no parent, as ipykernel sends it."""
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    try:
        reply, outputs = run(kc, "import ipywidgets\nslider = ipywidgets.IntSlider(value=1)\n"
                                 "slider")
        assert reply["status"] == "ok", reply
        opened = [m for m in outputs if m["msg_type"] == "comm_open"]
        assert opened and all(m["metadata"].get("version", "").startswith("2.")
                              for m in opened), opened
        reply, _ = run(kc, "import threading, time\n"
                           "def later():\n    time.sleep(0.5)\n    slider.value = 5\n"
                           "threading.Thread(target=later).start()")
        assert reply["status"] == "ok", reply
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert time.monotonic() < deadline, "no update from the thread on IOPub"
            msg = kc.get_iopub_msg(timeout=TIMEOUT)
            data = msg["content"].get("data", {})
            if msg["msg_type"] == "comm_msg" and data.get("state", {}).get("value") == 5:
                break
        assert msg["parent_header"] == {}, msg["parent_header"]
        assert msg["content"]["comm_id"] in {m["content"]["comm_id"] for m in opened}
    finally:
        kc.stop_channels()


def _iopub(kc: Any, msg_type: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["msg_type"] == msg_type:
            return dict(msg)
    raise AssertionError(f"no {msg_type} on IOPub")


def test_bad_signatures_are_dropped(km: KernelManager) -> None:
    """A client without the connection file's key gets nothing; the right key still works."""
    intruder = km.client(session=Session(key=b"not-the-key"))  # its own session and identity
    intruder.start_channels()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        msg_id = intruder.execute("open('/tmp/kerneld-intruder', 'w')")
        with pytest.raises(Empty):
            intruder.get_shell_msg(timeout=1.5)
        assert value(kc, "import os; os.path.exists('/tmp/kerneld-intruder')") is False
        assert kc.kernel_info(reply=True)["content"]["status"] == "ok"
        assert msg_id
    finally:
        intruder.stop_channels()
        kc.stop_channels()


def test_process_group_kill_leaves_no_kernel(km: KernelManager) -> None:
    """`shutdown_kernel(now=True)` SIGKILLs the adapter's whole process group (jupyter_client's
    provisioner); the reaper runs in its own session, survives it and destroys the kernel."""
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)
    kc.stop_channels()
    wait_kernels(1)
    km.shutdown_kernel(now=True)
    wait_kernels(0, timeout=20)


def test_heartbeat_and_control_channel(km: KernelManager) -> None:
    """The heartbeat answers, and kernel_info/connect are answered on control too (Jupyter
    Server's nudge asks there)."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        time.sleep(1.5)  # the heartbeat channel pings every second
        assert kc.hb_channel.is_beating()
        msg = kc.session.msg("kernel_info_request")
        kc.control_channel.send(msg)
        reply = kc.get_control_msg(timeout=TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
        assert reply["content"]["implementation"] == "kerneld"
        assert reply["content"]["language_info"]["name"] == "python"
        assert "debugger" not in reply["content"]["supported_features"]
    finally:
        kc.stop_channels()


def test_unknown_requests_get_busy_idle_only(km: KernelManager) -> None:
    """As ipykernel: an unknown request type is logged, wrapped in busy/idle, not answered,
    and the kernel goes on."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=TIMEOUT)
        msg = kc.session.msg("no_such_request", {"x": 1})
        kc.shell_channel.send(msg)
        states = []
        while len(states) < 2:
            got = kc.get_iopub_msg(timeout=TIMEOUT)
            if got["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                states.append(got["content"]["execution_state"])
        assert states == ["busy", "idle"]
        with pytest.raises(Empty):
            kc.get_shell_msg(timeout=0.5)
        assert value(kc, "1 + 1") == 2
    finally:
        kc.stop_channels()
