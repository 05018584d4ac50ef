"""A `Backend` without a process or a thread, and the hosts around it, for unit tests of the
kernel record, the pool and the manager (tests/unit/test_kernel_record.py, test_pool.py,
test_manager_fake.py).

`FakeBackend` records what it is sent; `auto=True` answers every `Execute` with an "ok"
`Done` on the next loop turn (as a worker would), else a test answers with `done()`. `die()`
is a death: `exited` resolves with the `ExitInfo` and the attached host hears `on_exit`.
A `gate` (an asyncio.Event) holds `start()` until it is set, so a test can act while a
backend starts; `kill()` then makes the start fail, as the real backends do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any

from kerneld import protocol as p
from kerneld.backends import BackendHost, ExitInfo, Launch
from kerneld.config import ManagerConfig
from kerneld.errors import KernelError, KernelStartError
from kerneld.kernel import KernelMode, KernelRecord
from kerneld.ops import KernelSpec
from kerneld.permissions import Lowered, lower, parse_profile


class FakeBackend:
    next_pid = 1000

    def __init__(self, launch: Launch, host: BackendHost, *, auto: bool = True,
                 gate: asyncio.Event | None = None,
                 fail: BaseException | None = None) -> None:
        self.launch, self.host, self.auto, self.gate, self.fail = launch, host, auto, gate, fail
        FakeBackend.next_pid += 1
        self.pid: int | None = FakeBackend.next_pid
        self.sent: list[Any] = []
        self.activated: list[dict[str, str]] = []
        self.interrupts = 0
        self.started = self.killed = False
        self.exited: asyncio.Future[ExitInfo | None] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        if self.started:
            return
        if self.gate is not None:
            await self.gate.wait()
        if self.killed:
            raise KernelStartError("stopped while it started")
        if self.fail is not None:  # left to its kernel to kill: the tests check that it does
            raise self.fail
        self.started = True

    def attach(self, host: BackendHost) -> None:
        self.host = host

    def activate(self, env: Mapping[str, str]) -> None:
        self.activated.append(dict(env))

    def send(self, msg: Any) -> None:
        self.sent.append(msg)
        if self.auto and isinstance(msg, p.Execute):
            asyncio.get_running_loop().call_soon(self.done, msg.exec_id)

    def interrupt(self) -> bool:
        self.interrupts += 1
        return self.pid is not None

    async def kill(self) -> None:
        self.killed = True
        self.pid = None
        if not self.exited.done():
            self.exited.set_result(None)

    async def pause(self) -> None:
        raise KernelError("not supported")

    async def resume(self) -> None:
        raise KernelError("not supported")

    def memory_bytes(self) -> int | None:
        return 4096 if self.pid is not None else None

    # --- what the runtime would do

    def done(self, exec_id: str, status: str = "ok", count: int | None = 1) -> None:
        if not self.killed:
            self.host.on_message(p.Done(exec_id, status, count, {"data": {"text/plain": "2"}}))

    def die(self, reason: str = "killed by SIGKILL", exit_code: int | None = None,
            signal: int | None = 9) -> None:
        info = ExitInfo(reason, exit_code, signal)
        self.pid = None
        self.exited.set_result(info)
        self.host.on_exit(info)

    @property
    def executes(self) -> list[p.Execute]:
        return [m for m in self.sent if isinstance(m, p.Execute)]


class FakeFactory:
    """A `BackendFactory` that keeps every backend it made; `gate`/`fail`/`auto` apply to
    the next ones."""

    def __init__(self) -> None:
        self.made: list[FakeBackend] = []
        self.auto = True
        self.gate: asyncio.Event | None = None
        self.fail: BaseException | None = None

    def __call__(self, launch: Launch, host: BackendHost) -> FakeBackend:
        backend = FakeBackend(launch, host, auto=self.auto, gate=self.gate, fail=self.fail)
        self.made.append(backend)
        return backend


class FakeHost:
    """A `KernelHost` for one or more records, recording what they report."""

    def __init__(self, config: ManagerConfig | None = None) -> None:
        self.config = config or ManagerConfig(stall_grace=0.5)
        self.factory = FakeFactory()
        self.records: dict[str, KernelRecord] = {}
        self.events: list[p.KernelEvent] = []
        self.expired: list[KernelRecord] = []
        self.terminated: list[tuple[str, str | None]] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def backend_for(self, kernel: KernelRecord) -> FakeBackend:
        launch = Launch(kernel.id, kernel.mode.value, kernel.lowered, kernel.host_dir)
        return self.factory(launch, kernel)

    def kernel_record(self, kernel_id: str) -> KernelRecord | None:
        return self.records.get(kernel_id)

    def dispatch(self, event: p.KernelEvent) -> None:
        self.events.append(event)

    async def expire(self, kernel: KernelRecord) -> None:
        self.expired.append(kernel)

    async def force_terminate_kernel(self, kernel_id: str, reason: str | None = None) -> bool:
        self.terminated.append((kernel_id, reason))
        record = self.records.pop(kernel_id)
        await record.destroy("KernelForcedTermination", reason or "")
        return True

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def lowered(profile_text: str = "", **request: Any) -> Lowered:
    return lower(parse_profile(profile_text, name="test"), **request)


def record(host: FakeHost, profile_text: str = "", kernel_id: str = "k1",
           mode: KernelMode = KernelMode.WORKER, **spec: Any) -> KernelRecord:
    """A registered record (not started) over a profile given as TOML text."""
    kernel = KernelRecord(host, kernel_id, KernelSpec(id=kernel_id, profile="test", **spec),
                          mode, lowered(profile_text))
    host.records[kernel_id] = kernel
    return kernel
