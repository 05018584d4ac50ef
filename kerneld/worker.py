"""Worker process main: one kernel, one process tree, confined before any user byte runs.

Process model: forked by the zygote (`kerneld.zygote`); by the time `main()` runs, the sandbox
(`sandbox.apply`) is in force. Only then does the worker create its ZeroMQ context, so ZeroMQ's
I/O thread is confined like everything else.

Threads:
- main thread: takes requests off the inbox and runs them one at a time on the engine
  (`kerneld.kernel.Engine`). SIGINT raises KeyboardInterrupt here, but only while a cell runs.
- `_IO` thread: owns the ZeroMQ DEALER (sockets are not thread-safe). It reads the pipes that
  replaced fds 1 and 2 (so C extensions, `os.write(1, …)` and subprocesses are captured too),
  coalesces them into `stream` events (≤ 256 KiB, ≤ 20 ms old), enforces the per-execution
  output cap, sends what the main thread queues in its outbox, and routes incoming requests.

Ordering: before sending a queued message, the I/O thread drains both pipes, so everything the
main thread wrote before `display()` or the end of a cell is emitted before it. Python-level
`sys.stdout` is line-buffered onto fd 1; partial lines are flushed by the I/O thread within
20 ms.

Liveness and shutdown: the worker exits on `Shutdown`, when its parent (the zygote) dies
(PR_SET_PDEATHSIG, set by the zygote), or when killed; the manager learns of the exit from the
zygote, which reaps it. Failure modes: a crash anywhere simply ends the process; the manager
turns that into `KernelDied` for every running and queued execution.
"""

from __future__ import annotations

import codecs
import collections
import fcntl
import io
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

import zmq

from kerneld import protocol as p
from kerneld.kernel import Engine

F_SETPIPE_SZ = 1031
COALESCE_SECONDS = 0.02
HELD_OUTPUT_LIMIT = 1024 * 1024  # output written between executions, kept for the next one


class _Barrier:
    """An outbox entry that only drains the pipes and then wakes the waiting main thread."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _IO(threading.Thread):
    """Owns the socket and the output pipes; see the module docstring."""

    def __init__(self, sock: zmq.Socket[bytes], out_r: int, err_r: int) -> None:
        super().__init__(name="kerneld-io", daemon=True)
        self.sock, self.out_r, self.err_r = sock, out_r, err_r
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.inputs: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.outbox: collections.deque[Any] = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace")
                         for name in ("stdout", "stderr")}
        self.chunks: list[list[Any]] = []  # [[name, text], ...] in arrival order
        self.chunk_bytes = 0
        self.first_pending = 0.0
        self.exec_id: str | None = None
        self.limit = 0
        self.written = 0
        self.truncated = False

    # -- called from the main thread --------------------------------------------------------

    def send(self, item: Any) -> None:
        self.outbox.append(item)
        os.write(self.wake_w, b"x")

    def begin(self, exec_id: str, output_limit: int) -> None:
        """Start attributing output to `exec_id`; returns once the I/O thread has switched,
        so every byte the cell writes is counted against its own output limit."""
        switched = threading.Event()
        self.send(("begin", exec_id, output_limit, switched))
        switched.wait()

    def sync(self) -> None:
        """Wait until everything written to fds 1/2 so far has been sent."""
        barrier = _Barrier()
        self.send(barrier)
        barrier.done.wait()

    # -- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        for fd in (self.out_r, self.err_r, self.wake_r):
            poller.register(fd, zmq.POLLIN)
        while True:
            # while a cell runs, wake every 20 ms to flush partial lines; idle: sleep
            timeout = int(COALESCE_SECONDS * 1000) if self.exec_id is not None else -1
            ready = dict(poller.poll(timeout))
            if self.out_r in ready:
                self._read("stdout", self.out_r)
            if self.err_r in ready:
                self._read("stderr", self.err_r)
            if self.wake_r in ready:
                self._drain_outbox()
            if self.sock in ready:
                self._receive()
            _flush_python_streams()
            if self.chunks and (self.chunk_bytes >= p.STREAM_CHUNK_BYTES
                                or time.monotonic() - self.first_pending >= COALESCE_SECONDS):
                self._emit_streams()

    def _read(self, name: str, fd: int) -> bool:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return False
        if not data:
            return False
        text = self.decoders[name].decode(data)
        if text:
            self._add(name, text, len(data))
        return True

    def _add(self, name: str, text: str, size: int) -> None:
        if self.exec_id is not None and self.limit:
            if self.truncated:
                return
            if self.written + size > self.limit:
                text = text[: max(0, self.limit - self.written)]
                self.truncated = True
            self.written += size
        elif self.exec_id is None and self.chunk_bytes > HELD_OUTPUT_LIMIT:
            return
        if not self.chunks:
            self.first_pending = time.monotonic()
        if self.chunks and self.chunks[-1][0] == name:
            self.chunks[-1][1] += text
        else:
            self.chunks.append([name, text])
        self.chunk_bytes += size
        if self.truncated:
            self.chunks.append(["stderr", (
                f"\n[kerneld] output truncated: this execution wrote more than {self.limit} "
                "bytes (profile limits.output); further output is discarded\n")])
        if self.chunk_bytes >= p.STREAM_CHUNK_BYTES and self.exec_id is not None:
            self._emit_streams()

    def _emit_streams(self) -> None:
        if self.exec_id is None:
            return
        for name, text in self.chunks:
            if text:
                self._send(p.Output(self.exec_id, "stream", {"name": name, "text": text}))
        self.chunks.clear()
        self.chunk_bytes = 0

    def _drain_pipes(self) -> None:
        while self._read("stdout", self.out_r) or self._read("stderr", self.err_r):
            pass

    def _drain_outbox(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while self.outbox:
            item = self.outbox.popleft()
            _flush_python_streams()
            self._drain_pipes()
            if isinstance(item, tuple):
                _, self.exec_id, self.limit, switched = item
                self.written, self.truncated = 0, False
                switched.set()
            self._emit_streams()
            if isinstance(item, _Barrier):
                item.done.set()
            elif isinstance(item, p.Done):
                self._send(item)
                self.exec_id = None
            elif not isinstance(item, tuple):
                self._send(item)

    def _send(self, msg: Any) -> None:
        self.sock.send(p.encode(msg), copy=False)

    def _receive(self) -> None:
        while True:
            try:
                raw = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = p.to_worker_decoder.decode(raw)
            except p.DecodeError:
                continue
            if isinstance(msg, p.InputReply):
                self.inputs.put(msg.value)
            else:
                self.inbox.put(msg)


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.buffer.flush()  # BufferedWriter.flush is thread-safe
        except (AttributeError, ValueError, OSError):
            pass


def _capture_fds() -> tuple[int, int]:
    """Replace fds 1 and 2 with pipes (read ends returned) and rebuild sys.stdout/stderr."""
    ends = []
    for fd in (1, 2):
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        os.dup2(w, fd)
        os.close(w)
        os.set_blocking(r, False)
        ends.append(r)
    sys.stdout = _text_stream(1)
    sys.stderr = _text_stream(2)
    sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
    return ends[0], ends[1]


def _text_stream(fd: int) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    buffered = io.BufferedWriter(raw, buffer_size=64 * 1024)
    return io.TextIOWrapper(buffered, encoding="utf-8", errors="backslashreplace",
                            line_buffering=True, write_through=True)


class _Worker:
    """The main-thread loop: requests in, engine calls, replies out."""

    def __init__(self, engine: Engine, io_thread: _IO) -> None:
        self.engine, self.io = engine, io_thread
        self.exec_id: str | None = None
        self.executing = False
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.executing:
            raise KeyboardInterrupt

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        if self.exec_id is not None:
            self.io.send(p.Output(self.exec_id, type_, data))

    def _request_input(self, prompt: str, password: bool) -> str:
        self._emit("input_request", {"prompt": prompt, "password": password})
        return self.io.inputs.get()

    def serve(self) -> None:
        self.engine.attach(self._emit, _flush_python_streams, self._request_input)
        while True:
            msg = self.io.inbox.get()
            if isinstance(msg, p.Execute):
                self._execute(msg)
            elif isinstance(msg, p.Complete):
                self.io.send(p.Answer(msg.req_id, self.engine.complete(msg.code, msg.cursor_pos)))
            elif isinstance(msg, p.Inspect):
                content = self.engine.inspect(msg.code, msg.cursor_pos, msg.detail_level)
                self.io.send(p.Answer(msg.req_id, content))
            elif isinstance(msg, p.IsComplete):
                self.io.send(p.Answer(msg.req_id, self.engine.is_complete(msg.code)))
            elif isinstance(msg, p.Activate):
                os.environ.clear()
                os.environ.update(msg.env)
            elif isinstance(msg, p.Shutdown):
                self.io.sync()
                return

    def _execute(self, msg: p.Execute) -> None:
        self.exec_id = msg.exec_id
        self.io.begin(msg.exec_id, msg.output_limit)
        while True:  # drop input replies left over from an earlier execution
            try:
                self.io.inputs.get_nowait()
            except queue.Empty:
                break
        try:
            self.executing = True
            try:
                status, count, result, error = self.engine.execute(
                    msg.code, silent=msg.silent, store_history=msg.store_history,
                    allow_stdin=msg.allow_stdin)
            finally:
                self.executing = False
        except KeyboardInterrupt:  # arrived outside IPython's own handler
            error = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []}
            self._emit("execute_error", error)
            status, count, result = "error", None, None
        _flush_python_streams()
        self.io.send(p.Done(msg.exec_id, status, count, result, error))
        self.exec_id = None


def main(engine: Engine, token: bytes, endpoint: str) -> None:
    """Run the worker until Shutdown. The caller exits the process afterwards."""
    out_r, err_r = _capture_fds()
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, token)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, 10000)
    sock.connect(endpoint)
    sock.send(p.encode(p.Hello(pid=os.getpid())))
    io_thread = _IO(sock, out_r, err_r)
    io_thread.start()
    _Worker(engine, io_thread).serve()
