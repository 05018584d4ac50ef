"""Worker process main: one kernel, one process tree, confined before any user byte runs.

Process model: forked by the zygote (`kerneld.runtime.zygote`); by the time `main()` runs, the
sandbox (`sandbox.apply`) is in force. Only then does the worker create its ZeroMQ context, so
ZeroMQ's I/O thread is confined like everything else.

Threads:
- main thread: receives requests and runs them one at a time on the engine, through the loop
  shared with in-process kernels (`kerneld.runtime.serve.Loop`, over this module's `_Channel`),
  and sends their results itself — the common path (`1+1`) has no hand-off between threads.
  SIGINT raises KeyboardInterrupt here, but only while a cell runs.
- `_Pump` thread: reads the pipes that replaced fds 1 and 2 (so C extensions,
  `os.write(1, …)` and subprocesses are captured too) and sends them as coalesced `stream`
  events (≤ 256 KiB, ≤ 20 ms old) while a cell runs.
- `_Flusher` thread: pushes what Python's `sys.stdout`/`sys.stderr` buffer (see `_capture_fds`)
  every 20 ms while a cell runs; asleep otherwise.

Sharing: `_Channel` holds the socket and the output buffers under one lock (ZeroMQ sockets may
change threads behind a full memory barrier, which the lock is). Between cells only the main
thread touches the socket: it waits for the next request there, without the lock. A comm
message another thread sends between cells (a widget updated from a thread) therefore goes out
on a second DEALER socket (routing id: the token + `SIDE_ROUTING_SUFFIX`), opened the first
time that happens and used under its own lock; the manager takes only such messages from it.
(Why not wake the main thread instead: waiting in Python for either a request or a wake-up
costs every worker ~0.1 MiB of private memory, measured, where a blocking recv costs none.)
A message larger than MAX_WORKER_MESSAGE (which the
manager's socket would refuse, dropping the connection) raises ValueError in the code that
sends it, instead of being sent. Ordering: every send first drains both pipes, so everything written
before `display()` or the end of a cell is emitted before it, in the order written per stream.

Liveness and shutdown: the worker exits on `Shutdown`, when killed, or when the manager's
process exits (confined: its kernel-init then exits, which ends the PID namespace; unconfined:
a thread the zygote started watches the manager); not when the zygote dies. The manager learns
of the exit from the zygote, which reaps it, or from its own pidfd watch once the zygote died.
Failure modes: a request the engine fails on (IPython raising on a completion, an inspection
or a cell) is answered with that error, as Jupyter's error content, and the kernel serves on;
a crash anywhere else simply ends the process; the manager turns that into `KernelDied` for
every running and queued execution. User code that closes fd 1 or 2 gets them back at the end
of the cell (`_restore_fds`).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import fcntl
import functools
import io
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from kerneld import protocol as p
from kerneld.runtime import threads
from kerneld.runtime.engine import Engine, failure
from kerneld.runtime.serve import Loop, OutputCap

COALESCE_SECONDS = 0.02
HELD_OUTPUT_LIMIT = 1024 * 1024  # output written between cells, kept for the next one
# After reading output, the pump lets the pipe fill for this long: waking on every 100-byte
# print() costs a GIL hand-off per line (measured ~30 MB/s), while output is coalesced for
# 20 ms anyway and the end of a cell drains the pipes itself.
PUMP_BACKOFF_SECONDS = 0.002
PUMP_BACKOFF_BELOW = 256 * 1024  # a big read means a fast writer: keep reading at once
PUMP_LISTEN_SECONDS = 0.25  # the pump polls this long after a cell starts (see _Flusher)
INPUT_POLL_MS = 50  # input() waits for its reply this long at a time, then lets the pump send


class _Channel:
    """The socket and the output buffers: the worker's `serve.Channel`. Methods named
    `_locked_*` need `self.lock` held."""

    def __init__(self, sock: zmq.Socket[bytes], out_r: int, err_r: int,
                 flusher: _Flusher, side: Callable[[], zmq.Socket[bytes]]) -> None:
        self.sock, self.out_r, self.err_r, self.flusher = sock, out_r, err_r, flusher
        self.lock = threading.Lock()
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace")
                         for name in ("stdout", "stderr")}
        self.chunks: list[list[Any]] = []  # [[name, text], ...] in arrival order
        self.chunk_bytes = 0
        self.first_pending = 0.0
        self.exec_id: str | None = None
        self.cap = OutputCap()
        self.dropped = 0
        self.main = threading.get_ident()  # the thread that serves requests
        self.open_side = side
        self.side: zmq.Socket[bytes] | None = None
        self.side_lock = threading.Lock()

    # -- with the lock held -----------------------------------------------------------------

    def _locked_read(self, name: str, fd: int) -> int:
        """Read what `fd` holds (up to 1 MiB); returns the number of bytes read."""
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return 0
        if not data:
            return 0
        text = self.decoders[name].decode(data)
        if text:
            self._locked_add(name, text, len(data))
        return len(data)

    def _locked_add(self, name: str, text: str, size: int) -> None:
        if self.exec_id is None and self.chunk_bytes > HELD_OUTPUT_LIMIT:
            self.dropped += size  # nobody to attribute it to, and no room to keep it
            return
        cut = False
        if self.exec_id is not None:
            kept = self.cap.admit(text, size)
            if kept is None:
                return
            text, cut = kept, self.cap.truncated
        if not self.chunks:
            self.first_pending = time.monotonic()
        if self.chunks and self.chunks[-1][0] == name:
            self.chunks[-1][1] += text
        else:
            self.chunks.append([name, text])
        self.chunk_bytes += size
        if cut:
            self.chunks.append(["stderr", self.cap.notice()])
        if self.chunk_bytes >= p.STREAM_CHUNK_BYTES:
            self._locked_emit()

    def _locked_drain(self) -> None:
        while self._locked_read("stdout", self.out_r) or self._locked_read("stderr", self.err_r):
            pass

    def _locked_emit(self) -> None:
        if self.exec_id is None:
            return
        if self.dropped:
            notice = f"[kerneld] {self.dropped} bytes written between executions were dropped\n"
            self.chunks.insert(0, ["stderr", notice])
            self.dropped = 0
        for name, text in self.chunks:
            if text:
                msg = p.Output(self.exec_id, "stream", {"name": name, "text": text})
                self.sock.send(p.encode(msg))
        self.chunks.clear()
        self.chunk_bytes = 0

    # -- serve.Channel, main thread; take the lock --------------------------------------------

    def receive(self) -> Any | None:
        return _decode(self.sock.recv())  # between cells only this thread uses the socket

    def serving(self) -> contextlib.nullcontext[None]:
        return _NOTHING_HELD

    def begin(self, exec_id: str, output_limit: int) -> None:
        """From now on, output belongs to `exec_id` (what was held in between, too)."""
        with self.lock:
            self._locked_drain()
            self.exec_id = exec_id
            self.cap.reset(output_limit)
        self.flusher.cell_started()

    def cell_ended(self) -> None:
        self.flusher.cell_ended()

    def flush(self) -> None:
        _flush_python_streams()

    def publish(self, msg: Any) -> None:
        """Send a message after everything already written to fds 1 and 2 (from a thread
        other than the main one between cells: through the outbox, see the module
        docstring). ValueError for one larger than the manager accepts."""
        payload = p.encode(msg)
        if len(payload) > p.MAX_WORKER_MESSAGE:
            raise ValueError(
                f"a {getattr(msg, 'type', 'message')} message of {len(payload)} bytes exceeds "
                f"the limit of {p.MAX_WORKER_MESSAGE} bytes a kernel may send at once")
        with self.lock:
            between = self.exec_id is None and threading.get_ident() != self.main
            if not between:
                self._locked_drain()
                self._locked_emit()
                self.sock.send(payload)
                return
        with self.side_lock:  # a thread, between cells: the main socket is not ours now
            if self.side is None:
                self.side = self.open_side()
            self.side.send(payload)

    def finish(self, done: p.Done) -> None:
        _restore_fds()
        _flush_python_streams()
        with self.lock:
            self._locked_drain()
            self._locked_emit()
            self.sock.send(p.encode(done))
            self.exec_id = None

    def answer(self, msg: p.Answer) -> None:
        try:
            self.publish(msg)
        except (TypeError, ValueError, OverflowError) as exc:  # content msgpack cannot carry
            self.publish(p.Answer(msg.req_id, {"status": "error", **failure(exc)}))

    def activate(self, env: dict[str, str]) -> None:
        os.environ.clear()
        os.environ.update(threads.env())  # the CPU allowance's thread counts; the kernel's
        os.environ.update(env)            # own env wins

    # -- the pump's and input()'s -------------------------------------------------------------

    def pump(self, ready: list[int]) -> int:
        """Read the ready pipes, emit what is old enough; returns the bytes read."""
        got = 0
        with self.lock:
            if self.out_r in ready:
                got += self._locked_read("stdout", self.out_r)
            if self.err_r in ready:
                got += self._locked_read("stderr", self.err_r)
            if self.chunks and time.monotonic() - self.first_pending >= COALESCE_SECONDS:
                self._locked_emit()
        return got

    def poll(self) -> Any | None:
        """Receive one request while a cell runs (input()), holding the lock briefly."""
        with self.lock:
            if not self.sock.poll(INPUT_POLL_MS):
                return None
            return _decode(self.sock.recv())


_NOTHING_HELD = contextlib.nullcontext()  # a worker serves one kernel: nothing to take turns on


def _decode(raw: bytes) -> Any | None:
    try:
        return p.to_worker_decoder.decode(raw)
    except p.DecodeError:
        return None


class _Pump(threading.Thread):
    """Streams fd 1/2 output while a cell runs; sleeps in poll() otherwise. Starts the
    flusher thread the first time a cell runs for longer than a coalescing period."""

    def __init__(self, channel: _Channel, flusher: _Flusher) -> None:
        super().__init__(name="kerneld-pump", daemon=True)
        self.channel = channel
        self.flusher = flusher

    def run(self) -> None:
        poller = select.poll()
        for fd in (self.channel.out_r, self.channel.err_r, self.flusher.wake_r):
            poller.register(fd, select.POLLIN)
        while True:
            events = poller.poll(self._timeout_ms())
            for fd, ev in events:
                if not ev & select.POLLIN:  # every writer closed, or the fd itself: it would
                    poller.unregister(fd)   # report that at once, forever (a busy loop)
            ready = [fd for fd, _ in events]
            if self.flusher.wake_r in ready:
                self.flusher.woken()
            self.flusher.start_if_due()
            got = self.channel.pump(ready)
            if 0 < got < PUMP_BACKOFF_BELOW and self.channel.exec_id is not None:
                time.sleep(PUMP_BACKOFF_SECONDS)
            if ready and self.channel.exec_id is None and self.channel.dropped:
                time.sleep(COALESCE_SECONDS)  # between cells: do not spin on a chatty writer

    def _timeout_ms(self) -> float | None:
        """20 ms while a cell runs (coalesced output falls due; a long cell must start the
        flusher). Until the flusher exists, also for a while after a cell started, so that
        the next cell of a burst needs no wake-up; otherwise sleep until output or a wake-up.
        """
        flusher = self.flusher
        if self.channel.exec_id is not None:
            return COALESCE_SECONDS * 1000
        if flusher.launched:
            return None
        if time.monotonic() - flusher.since < PUMP_LISTEN_SECONDS:
            flusher.pump_listening = True
            return COALESCE_SECONDS * 1000
        flusher.pump_listening = False
        # a cell may have started (without waking us: we were listening) since the check
        return COALESCE_SECONDS * 1000 if flusher.running else None


class _Flusher(threading.Thread):
    """Pushes buffered text out of sys.stdout/sys.stderr every 20 ms while a cell runs.

    A thread of its own: flushing takes the stream's lock, which a cell blocked on a full pipe
    holds; the pump must never wait for that lock, or nobody would empty the pipe. This thread
    sleeps on an Event while the kernel is idle. The main thread only ever sets the Event
    (`cell_started`); this thread clears it once a period passes with no cell running, so a
    stream of short cells wakes it once per 20 ms rather than once per cell.

    Started lazily, by the pump, once a cell has run for a period: a kernel that only ever
    ran short cells (their end flushes) never pays for the thread (~0.1 MiB per kernel).
    Until then the pump keeps time: a cell start wakes it (`wake_r`) unless it is still
    polling with a timeout after the previous cell (`pump_listening`). Each side writes its
    flag before reading the other's (`running` / `pump_listening`), so one of them notices."""

    def __init__(self) -> None:
        super().__init__(name="kerneld-flush", daemon=True)
        self.active = threading.Event()
        self.running = False
        self.launched = False
        self.pump_listening = False
        self.since = 0.0
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)

    def cell_started(self) -> None:
        self.since = time.monotonic()
        self.running = True
        if self.launched:
            self.active.set()  # already set while cells follow each other: no wake-up
        elif not self.pump_listening:
            try:
                _raw_os_write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pump has wake-ups pending already

    def woken(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass

    def start_if_due(self) -> None:
        """Called by the pump only (so never twice at once)."""
        if (self.running and not self.launched
                and time.monotonic() - self.since >= COALESCE_SECONDS):
            self.launched = True
            self.active.set()
            self.start()

    def cell_ended(self) -> None:
        self.running = False

    def run(self) -> None:
        while True:
            self.active.wait()
            time.sleep(COALESCE_SECONDS)
            _flush_python_streams()
            if not self.running:
                self.active.clear()
                if self.running:  # a cell started between the check and the clear
                    self.active.set()


_STREAMS: list[io.TextIOWrapper] = []  # the worker's own sys.stdout and sys.stderr
_SPARES: dict[int, int] = {}  # fd 1 / 2 → a private copy of its pipe's write end

# What starts a process whose output goes straight to fds 1/2 without running Python's
# at-fork hooks; `os.fork`, `os.forkpty` and what uses them (`os.spawn*`, `pty`,
# multiprocessing) are covered by an at-fork hook instead. Not an audit hook: CPython would
# call it on every audited event (each `open`, import and compile), ~0.23 µs an `os.open`.
_SPAWNERS = ((os, "system"), (os, "posix_spawn"), (os, "posix_spawnp"), (os, "execv"),
             (os, "execve"), (subprocess.Popen, "_execute_child"))


def _flush_python_streams() -> None:
    for stream in _STREAMS:
        try:
            stream.buffer.flush()  # BufferedWriter.flush is thread-safe
        except (ValueError, OSError, RuntimeError):  # closed, broken, or reentrant (a signal
            pass                                      # handler writing amid a write)


def _capture_fds() -> tuple[int, int]:
    """Replace fds 1 and 2 with pipes (read ends returned) and rebuild sys.stdout/stderr.

    Output order: sys.stdout is block-buffered, as Python's is on any pipe (a write(2) per
    print() line caps a print loop at ~80 MB/s; buffered it reaches ~350 MB/s); sys.stderr
    is line-buffered, as always. What could overtake buffered text on the same fd flushes it
    first: `os.write` to fd 1 or 2, the creation of a process (`_SPAWNERS`), and the worker
    itself before display data, input requests and the end of a cell; the flusher thread
    pushes it out every 20 ms while a cell runs. Not covered (as with ipykernel): C code
    writing to fd 1 itself, e.g. through ctypes, while Python text is still buffered. Order
    *between* stdout and stderr is the order the pump reads the two pipes, not guaranteed.
    """
    ends = []
    for fd in (1, 2):
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        os.dup2(w, fd)
        _SPARES[fd] = w  # close-on-exec; see _restore_fds
        os.set_blocking(r, False)
        ends.append(r)
    out = _text_stream(1, line_buffering=False)
    err = _text_stream(2, line_buffering=True)
    _STREAMS[:] = [out, err]
    sys.stdout, sys.stderr = out, err
    sys.__stdout__, sys.__stderr__ = out, err  # type: ignore[misc]
    os.write = _ordered_write
    os.register_at_fork(before=_flush_python_streams, after_in_child=_fresh_streams_in_child)
    return ends[0], ends[1]


def _restore_fds() -> None:
    """Put back fd 1 or 2 if user code closed it (`os.close(1)`): the text it printed since
    is written at the end of the cell, and later cells print as usual. Until then a write to
    the closed fd fails with EBADF (an OSError in the cell, as in any process). The spare
    copies also keep the pipes from reading EOF, which the pump would see at every poll."""
    for fd, spare in _SPARES.items():
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            try:
                os.dup2(spare, fd)
            except OSError:
                pass  # user code closed the spare too: that output is lost


def _text_stream(fd: int, *, line_buffering: bool) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    buffered = io.BufferedWriter(raw, buffer_size=64 * 1024)
    return io.TextIOWrapper(buffered, encoding="utf-8", errors="backslashreplace",
                            line_buffering=line_buffering, write_through=True)


def _fresh_streams_in_child() -> None:
    """In a process forked from the worker (os.fork, multiprocessing): new sys.stdout and
    sys.stderr objects. The inherited ones may hold text the parent still buffered (the
    parent prints it) and a lock that another thread held at the fork — a thread that does
    not exist here, so their next flush, e.g. before this child's own fork, would wait
    forever. They are kept alive for good and never touched: closing one flushes it."""
    old = list(_STREAMS)
    for stream in old:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(stream))
    out, err = _text_stream(1, line_buffering=False), _text_stream(2, line_buffering=True)
    _STREAMS[:] = [out, err]
    if sys.stdout is old[0]:
        sys.stdout = out
    if sys.stderr is old[1]:
        sys.stderr = err
    sys.__stdout__, sys.__stderr__ = out, err  # type: ignore[misc]


_raw_os_write = os.write


def _ordered_write(fd: int, data: Any, /) -> int:
    """os.write, after the text sys.stdout/sys.stderr still buffer when `fd` is 1 or 2."""
    if fd in (1, 2):
        _flush_python_streams()
    return _raw_os_write(fd, data)


_ordered_write.__doc__ = _raw_os_write.__doc__


def wrap_spawners() -> None:
    """Make each of `_SPAWNERS` flush the worker's buffered output first. Called by the
    zygote, once: the wrappers are then shared by every worker instead of being built (and
    their pages copied) in each. Until `_capture_fds` fills `_STREAMS` they flush nothing."""
    for owner, name in _SPAWNERS:
        setattr(owner, name, _flushing_first(getattr(owner, name)))


def _flushing_first(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func`, after the text sys.stdout/sys.stderr still buffer (see `_SPAWNERS`)."""
    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        _flush_python_streams()
        try:
            return func(*args, **kwargs)
        except PermissionError as exc:  # an exec refused by Landlock/seccomp: say which rule
            if exc.strerror and "`run`" not in exc.strerror:
                exc.strerror += " (running programs is limited by the kernel profile's `run` " \
                                "permission)"
                exc.args = (exc.errno, exc.strerror)
            raise
    return call


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

    def side() -> zmq.Socket[bytes]:
        extra = ctx.socket(zmq.DEALER)
        extra.setsockopt(zmq.ROUTING_ID, token + p.SIDE_ROUTING_SUFFIX)
        extra.setsockopt(zmq.LINGER, 1000)
        extra.setsockopt(zmq.SNDHWM, 10000)
        extra.connect(endpoint)
        return extra

    flusher = _Flusher()
    channel = _Channel(sock, out_r, err_r, flusher, side)
    _Pump(channel, flusher).start()
    loop = Loop(engine, channel)
    signal.signal(signal.SIGINT, _on_sigint(loop))
    loop.run()


def _on_sigint(loop: Loop) -> Callable[[int, Any], None]:
    """SIGINT (the manager's interrupt) raises KeyboardInterrupt in the cell, if one runs."""
    def on_sigint(signum: int, frame: Any) -> None:
        if loop.executing:
            raise KeyboardInterrupt
    return on_sigint
