"""Pure parts of the daemon, the client and the CLI: argument checks, log format, sd_notify,
output rendering. (The real daemon is exercised in tests/integration/test_daemon*.py.)"""

from __future__ import annotations

import io
import logging
import socket
import uuid

import pytest

from kerneld.cli import render_event
from kerneld.manager import KernelManager
from kerneld.ops import OPS
from kerneld.protocol import KernelEvent
from kerneld.systemd import Notifier as _Notifier
from kerneld.systemd import _Formatter


def test_every_manager_op_exists_on_the_manager_and_the_clients() -> None:
    from kerneld.client import AsyncClient, Client
    for name, op in OPS.items():
        if op.kind != "local" or name == "get_kernel":
            assert callable(getattr(KernelManager, name)), name
        if name not in ("subscribe", "unsubscribe"):
            assert callable(getattr(AsyncClient, name)) and callable(getattr(Client, name))
    for name in ("on_kernel_event", "off_kernel_event", "close"):
        assert callable(getattr(AsyncClient, name)) and callable(getattr(Client, name))


def test_log_lines_are_plain_and_journal_prefixed() -> None:
    record = logging.LogRecord("kerneld.daemon", logging.WARNING, __file__, 1,
                               "kernel died kernel=%s", ("k1",), None)
    assert _Formatter(False).format(record) == "WARNING kerneld.daemon: kernel died kernel=k1"
    assert _Formatter(True).format(record) == "<4>WARNING kerneld.daemon: kernel died kernel=k1"


def test_sd_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"kerneld-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        notifier = _Notifier.from_env()
        import os
        assert "NOTIFY_SOCKET" not in os.environ  # never inherited by anything started later
        assert notifier.watchdog_interval == 1.5
        assert notifier.send("READY=1\nSTATUS=ok")
        assert sink.recv(100) == b"READY=1\nSTATUS=ok"
    assert not _Notifier(None, None).send("READY=1")


def test_watchdog_for_another_pid_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert _Notifier.from_env().watchdog_interval is None


def _render(kind: str, data: dict[str, object]) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    render_event(KernelEvent(kind, data, "k", "e"), out, err)
    return out.getvalue(), err.getvalue()


def test_cli_rendering() -> None:
    assert _render("stream", {"name": "stdout", "text": "a\n"}) == ("a\n", "")
    assert _render("stream", {"name": "stderr", "text": "b\n"}) == ("", "b\n")
    assert _render("execute_result", {"data": {"text/plain": "42"}}) == ("42\n", "")
    assert _render("display_data", {"data": {"text/html": "<b>", "image/png": "..",
                                             "text/plain": "<Figure>"}}) == (
        "[display_data: text/html, image/png] <Figure>\n", "")
    assert _render("display_data", {"data": {"image/png": ".."}}) == (
        "[display_data: image/png]\n", "")
    assert _render("execute_error", {"ename": "E", "evalue": "v",
                                     "traceback": ["line 1", "E: v"]}) == ("", "line 1\nE: v\n")
    assert _render("clear_output", {"wait": False}) == ("", "")


async def test_coroutine_listeners_are_kept_and_cancelled_when_the_client_closes(
        caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    from kerneld.client import AsyncClient
    client = AsyncClient("ipc:///nonexistent/kerneld.sock")
    died = KernelEvent("kernel_died", {}, "k")
    started, cancelled = asyncio.Event(), []

    async def waits(event: KernelEvent) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(event)
            raise

    async def fails(event: KernelEvent) -> None:
        raise ValueError("a listener's bug")

    with caplog.at_level(logging.ERROR, logger="kerneld.client"):
        client._call_listener(waits, died)
        client._call_listener(fails, died)
        await started.wait()
        await asyncio.sleep(0)
    assert "event listener failed" in caplog.text and "a listener's bug" in caplog.text
    assert len(client._listeners) == 1  # the one still running is referenced
    await client.close()
    assert cancelled == [died] and not client._listeners
