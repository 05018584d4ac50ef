"""The zygote: a warm, single-threaded Python that forks one worker per kernel.

Process model: started by the manager as `runtime-python -I -c <boot>` with a clean environment
(never a fork of the manager, which holds sockets, threads and secrets). Importing this module
loads everything a worker will run (IPython and the engine, the worker and its request loop,
the sandbox, msgspec, zmq): a worker is confined the moment it is forked and cannot load
anything later, hence no import in `kerneld.runtime` is lazy. The boot line arms the death
signal before that import (~0.5 s), `main` then imports the configured preload modules (numpy,
matplotlib, …), warms a shell, shapes its heaps for sharing (`kerneld.runtime.heap`: filled
holes, `gc.freeze()`, huge pages), and then only forks.
No ZeroMQ context, socket or thread ever exists here (the `zmq` module is loaded, by the
worker's module, so that workers need not load it, but nothing of it is instantiated).

State: the live children (workers, kernel inits) and the boot-status pipes of those still
booting. Nothing else.

Each confined worker gets its own PID namespace whose PID 1 is `kerneld-init` (a tiny C reaper
built into the runtime by the setup), spawned just before the worker is forked as PID 2; both
are children of the zygote, and `Forked` reports both pids.

Protocol (stdin → stdout, 4-byte length + msgpack, see `kerneld.protocol`):
    ForkRequest → Forked{pid | error}
    later, unprompted: BootFailed{pid, message} (the child could not confine itself; it exits
    with EXIT_SANDBOX), Exited{pid, exit_code, signal} (reaped).

Liveness: kernels are tied to the manager's process, not to the zygote. The zygote opens a
pidfd of its parent (the manager) at start; each kernel's init gets it as fd 3 and exits
when the manager exits, which ends the kernel's PID namespace. An unconfined worker (no
init) watches the same pidfd from a thread. So a zygote that dies takes no kernel with it:
the daemon, a child subreaper, adopts its children and reaps them itself (the manager watches
their pidfds), and the next fork starts a new zygote. Only the rare worker confined without
an init of its own (no PID namespace, or no kernel uid) keeps PR_SET_PDEATHSIG tied to the
zygote, as before.
The zygote itself has PR_SET_PDEATHSIG (SIGKILL) only while it warms up, when it has no
children; once it serves, it watches the manager's pidfd and stdin instead: when the manager
is gone (pidfd readable, EOF or a broken pipe), it SIGKILLs every child and reaps them
before it exits, so that no kernel process waits for the host's PID 1 to reap it.

Failure modes: a child that fails before it runs user code writes one line on its boot-status
pipe and exits with a reserved code; the zygote never runs user code itself. A zygote killed
while it warmed up leaves its IPYTHONDIR (/tmp/kerneld-ipython-<pid>-*): the manager sweeps
those of dead zygotes before it starts one.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import traceback
from typing import Any

import msgspec
import prctl

import sandbox
from kerneld import protocol as p
from kerneld.runtime import heap, threads, worker
from kerneld.runtime.engine import Engine

EXIT_SANDBOX = 70   # the child could not apply its sandbox: never respawn automatically
EXIT_BOOT = 71      # the child failed after confinement but before serving
IPYTHON_DIR_PREFIX = "kerneld-ipython-"  # + the zygote's pid + "-": swept once that pid is gone


def _write(payload: bytes) -> None:
    data = p.frame(payload)
    while data:
        n = os.write(1, data)
        data = data[n:]


_BYTES_HEADER = sys.getsizeof(b"") - 1  # offset of a bytes object's data in CPython


def _wipe(data: bytes) -> None:
    """Overwrite a decoded secret (a kernel's token) with zeros, in place.

    Every worker is a copy of this process: what a request left in its memory, freed or not,
    would be readable by every later kernel. `bytes` are immutable to Python code, but this
    one is private to the zygote and never interned at this size."""
    if len(data) > 1:
        ctypes.memset(id(data) + _BYTES_HEADER, 0, len(data))


def _read_exact(fd: int, buf: bytearray) -> bool:
    """Fill `buf` from `fd` (no reallocation, so nothing is left behind in freed memory)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            return False
        got += n
    return True


def _preload(modules: list[str]) -> None:
    """Import the configured modules (numpy, …), so that every worker has them loaded."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 (a missing optional module must not stop it)
            print(f"zygote: preload failed module={name} error={exc!r}", file=sys.stderr)


class Zygote:
    """Fork server. `serve()` never returns; it exits once the manager is gone."""

    def __init__(self, preload: list[str], manager_fd: int) -> None:
        # IPython wants a directory for its profile while it starts; nothing reads it later
        # (workers see their own /tmp and get their environment from Activate), so it is
        # removed once the shell is warm rather than left behind by every zygote
        ipython_dir = tempfile.mkdtemp(prefix=f"{IPYTHON_DIR_PREFIX}{os.getpid()}-")
        os.environ["IPYTHONDIR"] = ipython_dir
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        os.environ.update(threads.ZYGOTE_ENV)  # workers size their pools in `threads.cap`
        try:
            _preload(preload)
            threads.prepare()
            sandbox.warm()
            worker.wrap_spawners()
            self.engine = Engine()
            self.engine.hold_traps()
            self.engine.warm()
        finally:
            shutil.rmtree(ipython_dir, ignore_errors=True)
        self.children: dict[int, int] = {}   # boot-status read fd → pid
        self.pids: set[int] = set()          # every live child: workers and kernel inits
        self.init = os.path.join(os.path.dirname(sys.executable), "kerneld-init")
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.pidfd = os.pidfd_open(os.getpid())  # readable in a child once the zygote is gone
        self.manager_fd = manager_fd             # readable once the manager is gone
        self.ballast = heap.shape()

    def serve(self) -> None:
        prctl.set_pdeathsig(0)  # from now on the manager's pidfd says when it is gone
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        header = bytearray(4)
        try:
            while self._serve_once(header, wake_r):
                pass
        except BrokenPipeError:
            pass  # stdout: the manager went away
        self._end_children()
        os._exit(0)

    def _serve_once(self, header: bytearray, wake_r: int) -> bool:
        """Wait for one round of events and handle it; False once the manager is gone."""
        try:
            ready, _, _ = select.select([0, wake_r, self.manager_fd, *self.children], [], [])
        except InterruptedError:
            return True
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            self._reap()
        for fd in ready:
            if fd in self.children:
                self._boot_status(fd)
        if self.manager_fd in ready:
            return False
        return 0 not in ready or self._request(header)

    def _end_children(self) -> None:
        """The manager is gone: SIGKILL every child and reap them all, so that none waits for
        the host's PID 1 (a kernel's init only finishes exiting once its worker is reaped).
        An alarm bounds the wait should a child never die (the zygote then dies of it)."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.alarm(5)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return

    def _request(self, header: bytearray) -> bool:
        """Read one fork request into a buffer of its exact size, fork, zero the buffer.
        False at the end of stdin (the manager closed it or went away)."""
        if not _read_exact(0, header):
            return False
        size = int.from_bytes(header, "big")
        if size > p.MAX_REQUEST_BYTES:
            os._exit(EXIT_BOOT)  # the manager never sends this: the pipe is corrupt
        payload = bytearray(size)
        try:
            if not _read_exact(0, payload):
                return False
            req = p.fork_request_decoder.decode(payload)
        finally:
            payload[:] = bytes(size)  # same length: overwritten in place
        try:
            self._fork(req)
        finally:
            _wipe(req.token)  # later workers inherit this memory: leave no secret in it
        return True

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.pids.discard(pid)
            # a worker that failed to confine itself wrote why to its status pipe before it
            # exited: report that first, so the manager never sees a bare exit instead
            for fd in [fd for fd, child in self.children.items() if child == pid]:
                self._boot_status(fd)
            code = os.waitstatus_to_exitcode(status)
            exit_code, sig = (code, None) if code >= 0 else (None, -code)
            _write(p.encode(p.Exited(pid, exit_code, sig)))

    def _boot_status(self, fd: int) -> None:
        pid = self.children.pop(fd)
        try:
            message = os.read(fd, 8192).decode("utf-8", "replace")
        finally:
            os.close(fd)
        if message:
            _write(p.encode(p.BootFailed(pid, message)))

    def _fork(self, req: Any) -> None:
        try:
            policy = msgspec.convert(req.policy, sandbox.Policy) if req.confine else None
        except msgspec.ValidationError as exc:
            _write(p.encode(p.Forked(req.req_id, error=f"invalid policy: {exc}")))
            return
        status_r, status_w = os.pipe()
        try:
            pid = (sandbox.fork(policy, init=self.init, supervisor=self.manager_fd)
                   if policy is not None else os.fork())
        except (OSError, sandbox.SandboxError) as exc:
            os.close(status_r)
            os.close(status_w)
            _write(p.encode(p.Forked(req.req_id, error=f"fork failed: {exc}")))
            return
        if pid == 0:
            os.close(status_r)
            self._child(req, policy, status_w)
        os.close(status_w)
        self.children[status_r] = pid
        init_pid = sandbox.last_init_pid() if policy is not None else None
        self.pids.update(child for child in (pid, init_pid) if child is not None)
        _write(p.encode(p.Forked(req.req_id, pid=pid, init_pid=init_pid)))

    def _child(self, req: Any, policy: Any, status_w: int) -> None:
        """In the new worker: confine, then serve. Never returns."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.dup2(self.devnull, 0)
            os.dup2(self.devnull, 1)
            if policy is not None:
                self._confine(policy, status_w)
                threads.cap(policy.limits.cpu_shares)  # before any of the kernel's code
            else:
                os.environ.clear()  # the environment arrives with Activate
                if req.cwd:
                    os.chdir(req.cwd)
                _exit_with(self.manager_fd)
            os.close(status_w)
        except BaseException as exc:  # noqa: BLE001 (report; never run code half-confined)
            try:
                os.write(status_w, f"{type(exc).__name__}: {exc}".encode()[:8000])
            finally:
                os._exit(EXIT_SANDBOX)
        code = 0
        try:
            worker.main(self.engine, req.token, req.endpoint)
        except BaseException:  # noqa: BLE001 (the worker's last words go to the daemon's log)
            traceback.print_exc()
            code = EXIT_BOOT
        os._exit(code)

    def _confine(self, policy: Any, status_w: int) -> None:
        """Apply the sandbox. Under its init (or user-namespace relay) the worker's tree ends
        with the manager and outlives the zygote; otherwise it dies with the zygote."""
        if sandbox.supervised():
            sandbox.apply(policy, keep_fds=(status_w,))  # closes both pidfds
            return
        prctl.set_pdeathsig(signal.SIGKILL)
        sandbox.apply(policy, keep_fds=(status_w, self.pidfd))  # re-arms the signal
        if select.select([self.pidfd], [], [], 0)[0]:
            os._exit(EXIT_SANDBOX)  # the zygote died before the death signal was armed
        os.close(self.pidfd)


def _exit_with(manager_fd: int) -> None:
    """An unconfined worker has no init to end it: a thread exits the process once the
    manager is gone (its pidfd turns readable; at once if it already has)."""
    def watch() -> None:
        select.select([manager_fd], [], [])
        os._exit(0)
    threading.Thread(target=watch, name="kerneld-manager-watch", daemon=True).start()


def _manager_pidfd() -> int:
    """A pidfd of the manager (our parent), or exit if it is gone already. The death signal is
    armed first, so a manager that dies after the check still takes us down; the second
    getppid() proves the pid was still our parent's (not reused) when the pidfd was opened."""
    manager = os.getppid()
    if manager == 1:
        os._exit(1)
    try:
        fd = os.pidfd_open(manager)
    except ProcessLookupError:
        os._exit(1)
    if os.getppid() != manager:
        os._exit(1)
    return fd


def main(argv: list[str]) -> None:
    """Entry point: argv = [preload module, ...]. The boot line (`_BOOT` in
    `kerneld.backends.supervisor`) has ignored SIGINT and armed the death signal (SIGKILL,
    while this zygote warms up; `serve` watches the manager's pidfd instead) before it
    imported this module."""
    zygote = Zygote(argv, _manager_pidfd())
    _write(b"ready")
    zygote.serve()
