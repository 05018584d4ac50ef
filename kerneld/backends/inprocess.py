"""The in-process backend (the seed's "main thread" mode): a kernel on a thread of this program.

No isolation at all: for trusted code and tests. The daemon refuses it unless its config allows.

Process model: one dedicated thread per in-process kernel runs its engine through the request
loop a worker runs too (`kerneld.runtime.serve.Loop`), over `_ThreadChannel`; what the loop
sends (`Output`, `Done`, `Answer`) is handed to the event loop with `call_soon_threadsafe` and
delivered to the attached `BackendHost`, so the record has one code path for both modes.

Shared-interpreter limits (documented for users): IPython keeps process-wide state (the shell
singleton used by `display()`, `sys.displayhook`, builtins), so in-process executions of all
kernels run one at a time under `_RUN_LOCK`; only Python-level `sys.stdout`/`sys.stderr`
writes made on the kernel's thread are captured (fd-level output is the host program's own);
the kernel's environment is laid over `os.environ` only while one of its requests runs;
`interrupt` raises KeyboardInterrupt asynchronously in the kernel thread, which takes effect at
the next Python bytecode (a long C call, e.g. `time.sleep`, finishes first).

What a thread cannot do: `pause`/`resume` raise `InvalidArgument` (Python cannot stop one
thread from outside and let the others run), and `kill` cannot end code that is running: it
asks the thread to stop after its current request and returns at once. `memory_bytes` is
None: a thread's memory is not told apart from the program's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from kerneld import protocol as p
from kerneld.backends import BackendHost, ExitInfo
from kerneld.errors import InvalidArgument, KernelStartError
from kerneld.runtime.engine import Engine
from kerneld.runtime.serve import Loop, OutputCap

_RUN_LOCK = threading.Lock()
_FLUSH_SECONDS = 0.02


class _ThreadRouter(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr once: writes from a kernel thread go to that kernel,
    writes from every other thread go where they went before."""

    def __init__(self, name: str, original: Any) -> None:
        self.name, self.original = name, original
        self.targets: dict[int, _ThreadChannel] = {}

    def write(self, text: str) -> int:
        target = self.targets.get(threading.get_ident())
        if target is None:
            return int(self.original.write(text))
        target.buffer_text(self.name, text)
        return len(text)

    def flush(self) -> None:
        target = self.targets.get(threading.get_ident())
        if target is None:
            self.original.flush()
        else:
            target.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_routers: dict[str, _ThreadRouter] = {}
_routers_lock = threading.Lock()


def _install_routers() -> tuple[_ThreadRouter, _ThreadRouter]:
    """The routers in sys.stdout/sys.stderr, put back (around the new stream) if the program
    replaced either since (contextlib.redirect_stdout, a test runner's capture): a kernel's
    output would otherwise land in that stream. Called before every request."""
    with _routers_lock:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            router = _routers.get(name)
            if router is None:
                router = _routers[name] = _ThreadRouter(name, current)
            elif current is not router:
                router.original = current
            setattr(sys, name, router)
        return _routers["stdout"], _routers["stderr"]


class _ThreadChannel:
    """The kernel thread's `serve.Channel`: requests from a queue, messages to the event loop,
    output captured by the routers while this thread writes."""

    def __init__(self, backend: InProcessBackend, engine: Engine) -> None:
        self.backend, self.engine, self.inbox = backend, engine, backend.inbox
        self.env = dict(backend.started_env)
        self.exec_id: str | None = None
        self.pending: list[list[str]] = []
        self.last_flush = time.monotonic()
        self.cap = OutputCap()

    # -- serve.Channel ----------------------------------------------------------------------

    def receive(self) -> Any:
        return self.inbox.get()

    def poll(self) -> Any:
        try:
            return self.inbox.get(timeout=0.05)
        except queue.Empty:
            return None

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """One kernel of the program at a time, with its environment and its shell."""
        with _RUN_LOCK, _kernel_env(self.env):
            _install_routers()
            previous = InteractiveShell._instance
            InteractiveShell._instance = self.engine.shell  # display() finds this kernel
            try:
                yield
            finally:
                InteractiveShell._instance = previous

    def begin(self, exec_id: str, output_limit: int) -> None:
        self.exec_id = exec_id
        self.cap.reset(output_limit)

    def cell_ended(self) -> None:
        pass

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if self.exec_id is None:
            return
        for name, text in self.pending:
            self.backend.post(p.Output(self.exec_id, "stream", {"name": name, "text": text}))
        self.pending.clear()

    def publish(self, msg: p.Output) -> None:
        self.backend.post(msg)

    def finish(self, done: p.Done) -> None:
        self.flush()
        self.exec_id = None
        self.backend.post(done)

    def answer(self, msg: p.Answer) -> None:
        self.backend.post(msg)

    def activate(self, env: dict[str, str]) -> None:
        self.env = dict(env)

    # -- the routers' -----------------------------------------------------------------------

    def buffer_text(self, name: str, text: str) -> None:
        if self.exec_id is None:
            return
        kept = self.cap.admit(text, len(text))
        if kept is None:
            return
        if self.pending and self.pending[-1][0] == name:
            self.pending[-1][1] += kept
        elif kept:  # empty: the write that found the limit reached, only its notice follows
            self.pending.append([name, kept])
        if self.cap.truncated:
            self.pending.append(["stderr", self.cap.notice()])
        if time.monotonic() - self.last_flush >= _FLUSH_SECONDS:
            self.flush()


class InProcessBackend:
    """One in-process kernel: its thread, behind the `kerneld.backends.Backend` interface.
    Made without starting anything; `start()` starts the thread and waits until it serves."""

    pid: int | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop, env: Mapping[str, str],
                 host: BackendHost) -> None:
        self.loop, self.host = loop, host
        self.started_env = dict(env)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # requests, in order
        self.serve: Loop | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self._exited: asyncio.Future[ExitInfo | None] = loop.create_future()
        self.thread = threading.Thread(target=self._run, name="kerneld-inprocess", daemon=True)

    # -- Backend, on the event loop ---------------------------------------------------------

    async def start(self) -> None:
        """Start the thread (once) and wait until its engine serves. Raises KernelStartError
        if it could not start, or if `kill()` came first."""
        if self.thread.ident is None and not self._exited.done():
            self.thread.start()
        await asyncio.wait((self.ready, self._exited), return_when=asyncio.FIRST_COMPLETED)
        if self._exited.done():
            raise KernelStartError("the in-process kernel was killed while it started")
        self.ready.result()

    def attach(self, host: BackendHost) -> None:
        self.host = host

    def activate(self, env: Mapping[str, str]) -> None:
        """Lay `env` over the environment the kernel was started with."""
        self.send(p.Activate({**self.started_env, **env}))

    def send(self, msg: Any) -> None:
        if not self._exited.done():
            self.inbox.put(msg)

    def interrupt(self) -> bool:
        if self.serve is None or not self.serve.executing or self.thread.ident is None:
            return False
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.thread.ident), ctypes.py_object(KeyboardInterrupt))
        return True

    async def kill(self) -> None:
        """Ask the thread to stop after its current request (a thread cannot be killed)."""
        if not self._exited.done():
            self.inbox.put(p.Shutdown())
            self._exited.set_result(None)

    async def pause(self) -> None:
        raise InvalidArgument("pause is not supported for in_process kernels "
                              "(a thread cannot be stopped while the program runs on)")

    async def resume(self) -> None:
        raise InvalidArgument("resume is not supported for in_process kernels "
                              "(they cannot be paused)")

    @property
    def exited(self) -> asyncio.Future[ExitInfo | None]:
        return self._exited

    def memory_bytes(self) -> int | None:
        return None

    # -- kernel thread side -----------------------------------------------------------------

    def post(self, msg: Any) -> None:
        """Deliver `msg` to whoever is attached, on the event loop."""
        self._on_loop(self._deliver, msg)

    def _on_loop(self, func: Callable[..., None], *args: Any) -> None:
        """`func(*args)` on the event loop; nothing once that loop is closed (the program
        ended it while a killed kernel's thread still finished its request)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(func, *args)

    def _deliver(self, msg: Any) -> None:
        if not self._exited.done():
            self.host.on_message(msg)

    def _run(self) -> None:
        out, err = _install_routers()
        ident = threading.get_ident()
        try:
            with _RUN_LOCK:
                engine = Engine(singleton=False)
            channel = _ThreadChannel(self, engine)
            out.targets[ident] = err.targets[ident] = channel
            self.serve = Loop(engine, channel)
            self._on_loop(_resolve, self.ready)
            self.serve.run()
        except BaseException as exc:  # noqa: BLE001  (reported as this kernel's end)
            self._on_loop(self._died, exc)
        finally:
            out.targets.pop(ident, None)
            err.targets.pop(ident, None)

    def _died(self, exc: BaseException) -> None:
        """The thread ended on its own: while starting, the start fails; later, a death."""
        if self._exited.done():
            return  # killed already: nobody waits for this thread any more
        reason = f"the in-process kernel's thread failed: {type(exc).__name__}: {exc}"
        if not self.ready.done():
            self.ready.set_exception(KernelStartError(reason))
            return
        info = ExitInfo(reason, None, None)
        self._exited.set_result(info)
        self.host.on_exit(info)


@contextlib.contextmanager
def _kernel_env(env: dict[str, str]) -> Iterator[None]:
    """The kernel's own variables in os.environ while (and only while) it runs."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
