"""IN_PROCESS mode (the seed's "main thread" mode): a kernel on a thread of the caller's Python.

No isolation at all: for trusted code and tests. The daemon refuses it unless its config allows.

Process model: one dedicated thread per in-process kernel runs its engine; the thread speaks the
same messages as a worker (`Output`, `Done`, `Answer`), handed to the manager's event loop with
`call_soon_threadsafe`, so the manager has one code path for both modes.

Shared-interpreter limits (documented for users): IPython keeps process-wide state (the shell
singleton used by `display()`, `sys.displayhook`, builtins), so in-process executions of all
kernels run one at a time under `_RUN_LOCK`; only Python-level `sys.stdout`/`sys.stderr`
writes made on the kernel's thread are captured (fd-level output is the host program's own);
`interrupt` raises KeyboardInterrupt asynchronously in the kernel thread, which takes effect at
the next Python bytecode (a long C call, e.g. `time.sleep`, finishes first).
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
from collections.abc import Callable, Iterator
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

from kerneld import protocol as p
from kerneld.kernel import Engine, answered, failure

_RUN_LOCK = threading.Lock()
_FLUSH_SECONDS = 0.02


class _ThreadRouter(io.TextIOBase):
    """Replaces sys.stdout/sys.stderr once: writes from a kernel thread go to that kernel,
    writes from every other thread go where they went before."""

    def __init__(self, name: str, original: Any) -> None:
        self.name, self.original = name, original
        self.targets: dict[int, _InProcessKernel] = {}

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
            target.flush_text()

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


class _InProcessKernel:
    """Backend of one in-process kernel; `sink` receives protocol messages on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Callable[[Any], None],
                 env: dict[str, str] | None = None) -> None:
        self.loop, self.sink = loop, sink
        self.env = dict(env or {})
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.inputs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.exec_id: str | None = None
        self.executing = False
        self.pending: list[list[str]] = []
        self.last_flush = time.monotonic()
        self.limit = 0
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="kerneld-inprocess", daemon=True)
        self.ready: asyncio.Future[None] = loop.create_future()
        self.thread.start()

    # -- loop side --------------------------------------------------------------------------

    def send(self, msg: Any) -> None:
        if isinstance(msg, p.InputReply):
            self.inputs.put(msg.value)
        else:
            self.inbox.put(msg)

    def interrupt(self) -> bool:
        if not self.executing or self.thread.ident is None:
            return False
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(self.thread.ident), ctypes.py_object(KeyboardInterrupt))
        return True

    def stop(self) -> None:
        self.inbox.put(p.Shutdown())

    # -- kernel thread side ------------------------------------------------------------------

    def _post(self, msg: Any) -> None:
        if msg is not None:
            self.loop.call_soon_threadsafe(self.sink, msg)

    def buffer_text(self, name: str, text: str) -> None:
        if self.exec_id is None:
            return
        if self.limit and self.written >= self.limit:
            return
        self.written += len(text)
        if self.pending and self.pending[-1][0] == name:
            self.pending[-1][1] += text
        else:
            self.pending.append([name, text])
        if self.limit and self.written >= self.limit:
            self.pending.append(["stderr", (
                f"\n[kerneld] output truncated: this execution wrote more than {self.limit} "
                "bytes (profile limits.output); further output is discarded\n")])
        if time.monotonic() - self.last_flush >= _FLUSH_SECONDS:
            self.flush_text()

    def flush_text(self) -> None:
        self.last_flush = time.monotonic()
        if self.exec_id is None:
            return
        for name, text in self.pending:
            self._post(p.Output(self.exec_id, "stream", {"name": name, "text": text}))
        self.pending.clear()

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        if self.exec_id is not None:
            self._post(p.Output(self.exec_id, type_, data))

    def _request_input(self, prompt: str, password: bool) -> str:
        self._emit("input_request", {"prompt": prompt, "password": password})
        return self.inputs.get()

    def _run(self) -> None:
        out, err = _install_routers()
        ident = threading.get_ident()
        out.targets[ident] = err.targets[ident] = self
        try:
            with _RUN_LOCK:
                engine = Engine(singleton=False)
            engine.attach(self._emit, self.flush_text, self._request_input)
            self.loop.call_soon_threadsafe(_resolve, self.ready)
            self._serve(engine)
        finally:
            out.targets.pop(ident, None)
            err.targets.pop(ident, None)

    def _serve(self, engine: Engine) -> None:
        while True:
            try:
                msg = self.inbox.get()
                if isinstance(msg, p.Shutdown):
                    return
                with _RUN_LOCK, _kernel_env(self.env):
                    _install_routers()
                    previous = InteractiveShell._instance
                    InteractiveShell._instance = engine.shell  # display() finds this kernel
                    try:
                        reply = self._handle(engine, msg)
                    finally:
                        InteractiveShell._instance = previous
                # only now, with the host's environment and the shell restored
                self._post(reply)
            except KeyboardInterrupt:  # an interrupt that arrived just after a cell ended
                continue

    def _handle(self, engine: Engine, msg: Any) -> Any:
        if isinstance(msg, p.Execute):
            self.exec_id, self.limit, self.written = msg.exec_id, msg.output_limit, 0
            try:
                self.executing = True
                try:
                    status, count, result, error = engine.execute(
                        msg.code, silent=msg.silent, store_history=msg.store_history,
                        allow_stdin=msg.allow_stdin)
                finally:
                    self.executing = False
            except KeyboardInterrupt:
                error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
                self._emit("execute_error", error)
                status, count, result = "error", None, None
            except Exception as exc:  # noqa: BLE001  (IPython itself failed: this cell's error)
                error = failure(exc)
                self._emit("execute_error", error)
                status, count, result = "error", None, None
            self.flush_text()
            self.exec_id = None
            return p.Done(msg.exec_id, status, count, result, error)
        if isinstance(msg, p.Complete):
            return p.Answer(msg.req_id, answered(engine.complete, msg.code, msg.cursor_pos))
        if isinstance(msg, p.Inspect):
            return p.Answer(msg.req_id, answered(engine.inspect, msg.code, msg.cursor_pos,
                                                 msg.detail_level))
        if isinstance(msg, p.IsComplete):
            return p.Answer(msg.req_id, answered(engine.is_complete, msg.code))
        return None


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


InProcessKernel = _InProcessKernel
