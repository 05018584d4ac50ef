"""The in-process backend against the `kerneld.backends.Backend` contract, with a fake host
(no record, no manager): the request loop it shares with the worker (`runtime.serve`) answers
each request once, the output cap cuts with one notice, and what a thread cannot do is said."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kerneld import protocol as p
from kerneld.backends import ExitInfo
from kerneld.backends.inprocess import InProcessBackend
from kerneld.errors import InvalidArgument, KernelStartError

pytestmark = pytest.mark.asyncio


class Host:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.exits: list[ExitInfo] = []
        self.arrived = asyncio.Event()

    def on_message(self, msg: Any) -> None:
        self.messages.append(msg)
        self.arrived.set()

    def on_exit(self, info: ExitInfo) -> None:
        self.exits.append(info)

    async def until(self, kind: type) -> Any:
        while True:
            for msg in self.messages:
                if isinstance(msg, kind):
                    self.messages.remove(msg)
                    return msg
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)


def _execute(code: str, *, limit: int = 0, allow_stdin: bool = False) -> p.Execute:
    return p.Execute(exec_id="e1", code=code, silent=False, store_history=True,
                     allow_stdin=allow_stdin, output_limit=limit)


def _streams(messages: list[Any]) -> str:
    return "".join(m.data["text"] for m in messages
                   if isinstance(m, p.Output) and m.type == "stream")


async def _started(host: Host) -> InProcessBackend:
    backend = InProcessBackend(asyncio.get_running_loop(), {"KERNELD_TEST_ENV": "1"}, host)
    await backend.start()
    assert backend.pid is None and backend.memory_bytes() is None
    return backend


async def test_requests_are_answered_and_the_result_rides_in_done() -> None:
    host = Host()
    backend = await _started(host)
    backend.send(_execute("import os\nprint('hi')\nos.environ['KERNELD_TEST_ENV']"))
    done = await host.until(p.Done)
    assert done.status == "ok" and done.result["data"]["text/plain"] == "'1'"
    assert _streams(host.messages) == "hi\n"
    assert not any(isinstance(m, p.Output) and m.type == "execute_result"
                   for m in host.messages)
    backend.send(p.IsComplete(req_id="r1", code="for x in y:"))
    assert (await host.until(p.Answer)).content["status"] == "incomplete"
    await backend.kill()
    assert backend.exited.done() and backend.exited.result() is None and not host.exits


async def test_output_cap_cuts_with_one_notice() -> None:
    host = Host()
    backend = await _started(host)
    backend.send(_execute("for _ in range(10): print('x' * 99)", limit=250))
    await host.until(p.Done)
    text = _streams(host.messages)
    assert text.startswith("x" * 99 + "\n" + "x" * 99 + "\n" + "x" * 50 + "\n[kerneld] output")
    assert text.count("output truncated") == 1
    await backend.kill()


async def test_input_request_follows_the_text_before_it() -> None:
    host = Host()
    backend = await _started(host)
    backend.send(_execute("print('before')\nanswer = input('name? ')\nanswer",
                          allow_stdin=True))
    first = await host.until(p.Output)
    assert (first.type, first.data["text"]) == ("stream", "before\n")
    request = await host.until(p.Output)
    assert request.type == "input_request" and request.data["prompt"] == "name? "
    backend.send(p.InputReply(exec_id="e1", value="ada"))
    assert (await host.until(p.Done)).result["data"]["text/plain"] == "'ada'"
    await backend.kill()


async def test_pause_and_resume_are_refused() -> None:
    backend = await _started(Host())
    with pytest.raises(InvalidArgument, match="in_process"):
        await backend.pause()
    with pytest.raises(InvalidArgument, match="in_process"):
        await backend.resume()
    await backend.kill()


async def test_a_kill_while_it_starts_makes_the_start_fail() -> None:
    backend = InProcessBackend(asyncio.get_running_loop(), {}, Host())
    starting = asyncio.ensure_future(backend.start())
    await asyncio.sleep(0)
    await backend.kill()
    with pytest.raises(KernelStartError, match="killed"):
        await starting
    assert backend.exited.result() is None
    await asyncio.to_thread(backend.thread.join, 10)  # it still built its engine, then ended
    assert not backend.thread.is_alive()
