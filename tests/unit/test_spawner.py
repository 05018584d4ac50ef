"""The zygote's process handling in the manager (kerneld.backends.supervisor)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from kerneld import protocol as p
from kerneld.backends.supervisor import ZygoteClient, _kill
from tests._proc import process_state


@pytest.fixture
async def pidfd_watcher():
    """A child watcher that reaps from the event loop, not from a thread: between an exit and
    the loop's next turn the child stays a zombie, so a test can look at it."""
    loop = asyncio.get_running_loop()
    old = asyncio.get_child_watcher()
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)
    yield
    asyncio.set_child_watcher(old)


async def test_kill_leaves_an_exited_zygote_to_asyncio(pidfd_watcher, caplog):
    """`_kill` of a process that has exited but that asyncio has not reaped yet must not reap
    it (Popen.kill() would: it polls with waitpid first). asyncio then reports the real exit
    code instead of logging "Unknown child process" and reporting 255."""
    # the child exits only once we close `w`: one that exited on its own could already be
    # reaped by the loop while create_subprocess_exec awaits (it did, on an idle machine)
    r, w = os.pipe()
    proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", "read x; exit 3", stdin=r)
    os.close(r)
    os.close(w)
    deadline = time.monotonic() + 10
    while process_state(proc.pid) != "Z":  # no await: the loop cannot reap it meanwhile
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.001)  # noqa: ASYNC251 (deliberately blocking: see above)
    assert proc.returncode is None
    _kill(proc)
    assert process_state(proc.pid) == "Z"  # still there for asyncio to reap
    assert await asyncio.wait_for(proc.wait(), 10) == 3
    assert "Unknown child process" not in caplog.text


async def test_kill_stops_a_running_zygote():
    proc = await asyncio.create_subprocess_exec("/bin/sleep", "60")
    _kill(proc)
    assert await asyncio.wait_for(proc.wait(), 10) == -9
    _kill(proc)  # exited and reaped: returncode known, so no signal (the pid may be reused)


async def test_an_exit_read_with_its_fork_reaches_the_forks_owner(monkeypatch):
    """The zygote can report a worker's `Forked` and, in the same read, its `Exited` (a worker
    that failed its mount check dies at once). The owner must be routed the pid before the
    `Exited` is dispatched; when routing waited for the fork's awaiter to resume, the exit was
    dropped and the create waited 30 s for a Hello (a CI failure of the symlink-race attack)."""
    routes: dict[int, list] = {}
    client = ZygoteClient("python3", [], on_message=lambda m: routes.get(m.pid, []).append(m),
                          on_exit=lambda: None)

    class Stdin:
        def write(self, data: bytes) -> None:
            pass

    class Proc:
        stdin = Stdin()

    async def started() -> None:
        pass

    client.proc = Proc()  # type: ignore[assignment]
    monkeypatch.setattr(client, "ensure_started", started)
    fork = asyncio.create_task(client.fork(
        on_forked=lambda f: routes.setdefault(f.pid, []),
        kernel_id="k", token=b"t", endpoint="ipc://x", confine=False, policy=None))
    await asyncio.sleep(0)  # the request is pending
    chunk = bytearray(p.frame(p.encode(p.Forked(req_id=1, pid=77)))
                      + p.frame(p.encode(p.Exited(77, 1, None))))
    for payload in p.unframe(chunk):  # as `_read` does: one chunk, no await in between
        client._dispatch(payload)
    assert routes[77] == [p.Exited(77, 1, None)]
    assert (await fork).pid == 77
