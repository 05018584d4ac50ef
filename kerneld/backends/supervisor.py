"""The host-wide side of worker kernels: one `Supervisor` per manager, shared by every worker
backend (`backends.worker`).

Process model: lives in the manager's process and event loop (the daemon's, or the embedding
program's). `ZygoteClient` starts the zygote (`kerneld.runtime.zygote`) by exec of the runtime
interpreter with a clean environment and asks it for forks over pipes. `WorkerHub` binds the one
ROUTER socket every worker connects to; each worker's routing id is its kernel's secret token,
so a worker can only ever speak for its own kernel. The `Supervisor` owns both, the uid locks
(one unprivileged uid per confined kernel, unique host-wide), the routing of the zygote's
per-process reports (`BootFailed`, `Exited`) to the backend whose process it is (`track_pid`),
and the sweep of what managers killed without cleanup left behind.

State: pending fork requests (req id → future); the hub's token → sink map; pid → sink of the
backend owning that process; uid → lock fd; the pidfds of watched processes (`ProcessWatch`).

Liveness: the zygote reaps workers and reports `Exited`. If the zygote itself dies, its kernels
do not (each one ends with the manager's process instead: see `kerneld.runtime.zygote`); the client
reports the death through `on_exit`, and the supervisor then watches each kernel process with
a pidfd (`ProcessWatch`) and feeds their exits into the same path as the zygote's reports:
under `kerneld serve`, a child subreaper, they are the daemon's children by then, reaped there
with their exit status; in an embedding program they go to the host's reaper, and their exit
status is unknown. The next fork starts a new zygote, never before the old one's death has
been reported. Before starting a zygote the client removes the IPYTHONDIRs that dead zygotes
left in /tmp.

Failure modes: anything malformed from the zygote or a worker is logged and dropped; it never
raises into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import prctl
import zmq

import sandbox
from kerneld import protocol as p
from kerneld.config import ManagerConfig
from kerneld.errors import KernelStartError, LimitExceeded
from kerneld.systemd import Tally
from kerneld.zmqio import Drain

log = logging.getLogger(__name__)

SOURCE_DIR = str(Path(__file__).resolve().parent.parent.parent)
# SIGINT ignored and the death signal armed before the zygote's module loads (~0.5 s: it loads
# all a worker runs, see kerneld.runtime.zygote)
_BOOT = ("import signal, sys, prctl; signal.signal(signal.SIGINT, signal.SIG_IGN); "
         "prctl.set_pdeathsig(signal.SIGKILL); sys.path.insert(0, {src!r}); "
         "from kerneld.runtime.zygote import main; main(sys.argv[1:])")
IPYTHON_DIR_PREFIX = "kerneld-ipython-"  # kerneld.runtime.zygote.IPYTHON_DIR_PREFIX (not imported)
OLD_IPYTHON_DIR_AGE = 600.0  # seconds: an unnamed one (older zygotes) is stale after this
STRAY_GRACE = 1.0  # seconds for a kernel to claim a fork its dead zygote reported late
UID_LOCK_DIR = "/run/kerneld-uids"

Sink = Callable[[Any], None]


class Supervisor:
    """The zygote, the worker hub, uid locks and pid routing of one manager.

    Nothing starts before `start()` (the first worker kernel, or the daemon before READY), so
    a manager that only ever runs in-process kernels never forks a zygote. `config` is the
    manager's, replaced on reload (the uid range then applies to new kernels)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self._ctx: zmq.Context[Any] | None = None
        self._hub: WorkerHub | None = None
        self._zygote: ZygoteClient | None = None
        self._watch: ProcessWatch | None = None
        self._runtime_dir: str | None = None
        self._uid_locks: dict[int, int] = {}  # uid → fd of its lock file, while in use
        self._uid_next = self.config.uid_range[0]  # where the next scan for a free uid starts
        self._by_pid: dict[int, Sink] = {}    # a kernel process → its backend's report sink

    @property
    def started(self) -> bool:
        return self._hub is not None

    @property
    def hub(self) -> WorkerHub:
        assert self._hub is not None
        return self._hub

    @property
    def zygote(self) -> ZygoteClient:
        assert self._zygote is not None
        return self._zygote

    @property
    def deaths(self) -> int:
        """Zygotes that died on their own so far (the pool counts its failed starts by them)."""
        return self._zygote.deaths if self._zygote is not None else 0

    async def start(self) -> None:
        """The worker socket and the zygote, started if they are not (the zygote again after
        a death). Sweeps what dead managers left the first time."""
        if self._hub is None:
            base = self.config.runtime_dir or ("/run" if os.geteuid() == 0 else None)
            if base is not None:
                os.makedirs(base, exist_ok=True)
            _sweep_leftovers(base or tempfile.gettempdir())
            self._runtime_dir = tempfile.mkdtemp(prefix=f"kerneld-{os.getpid()}-", dir=base)
            os.chmod(self._runtime_dir, 0o700)  # workers see only the bind-mounted socket
            self._ctx = zmq.Context()
            self._hub = WorkerHub(self._ctx, os.path.join(self._runtime_dir, "workers.sock"))
        if self._zygote is None:
            self._zygote = ZygoteClient(self.config.runtime_python, list(self.config.preload),
                                        on_message=self._on_zygote_message,
                                        on_exit=self._on_zygote_exit)
            self._watch = ProcessWatch(self._on_zygote_message, self.config.runtime_python,
                                       busy=self._zygote.unreaped_pids)
        await self._zygote.ensure_started()

    # ------------------------------------------------------------------ uids

    def allocate_uid(self) -> int | None:
        """A kernel uid nobody else uses: not this manager, nor any other manager or daemon on
        the host (each holds an flock on /run/kerneld-uids/<uid> while the uid is in use; the
        lock dies with its holder, so a crash frees the uid). None unless running as root.

        The scan starts after the uid handed out last and wraps around, so that a create does
        not walk past every uid in use (with thousands of kernels held, scanning from the
        start made each create linear in the kernels held) and a released uid is not handed
        out again at once."""
        if os.geteuid() != 0:
            return None
        first, last = self.config.uid_range
        os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
        size = last - first + 1
        start = (self._uid_next - first) % size if first <= self._uid_next <= last else 0
        for offset in range(size):
            uid = first + (start + offset) % size
            if uid in self._uid_locks:
                continue
            fd = os.open(os.path.join(UID_LOCK_DIR, str(uid)),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._uid_locks[uid] = fd
            self._uid_next = uid + 1
            return uid
        raise LimitExceeded(f"no free kernel uid left in uid_range {first}-{last}")

    def release_uid(self, uid: int | None) -> None:
        fd = self._uid_locks.pop(uid, None) if uid is not None else None
        if fd is not None:
            os.close(fd)  # closing drops the lock

    # ------------------------------------------------------------------ pid routing

    def track_pid(self, pid: int, sink: Sink | None) -> None:
        """Deliver the zygote's reports on `pid` to `sink` (None: stop). A process forked by
        a zygote that died before it was tracked is watched from here at once."""
        if sink is None:
            self._by_pid.pop(pid, None)
            return
        self._by_pid[pid] = sink
        zygote = self._zygote
        if zygote is not None and zygote.deaths and not zygote.is_parent_of(pid):
            assert self._watch is not None
            self._watch.watch(pid)

    def _on_zygote_message(self, msg: Any) -> None:
        sink = self._by_pid.get(getattr(msg, "pid", -1))
        if sink is not None:
            sink(msg)

    def _on_zygote_exit(self) -> None:
        """The zygote died; its kernels did not: watch their processes from here on (and,
        under a subreaper, whatever else it left: `ProcessWatch.adopt`)."""
        assert self._watch is not None
        self._watch.adopt(list(self._by_pid), claimed=self._by_pid.__contains__)

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Stop the zygote and the hub and remove the worker socket (the kernels are gone)."""
        if self._zygote is not None:
            await self._zygote.close()
        if self._watch is not None:
            self._watch.close()
        if self._hub is not None:
            await self._hub.close()
        if self._ctx is not None:
            self._ctx.term()
        if self._runtime_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._runtime_dir)


def _dead_owner(name: str, prefix: str) -> bool:
    """Whether `name` is `<prefix><pid>-...` for a pid that no longer runs."""
    head = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
    return head.isdigit() and not os.path.exists(f"/proc/{head}")


def _sweep_leftovers(base: str) -> None:
    """Remove what managers killed without cleanup left: their worker-socket directories
    (`kerneld-<pid>-*`) and empty kernel cgroups (`m<pid>-*`)."""
    try:
        for name in os.listdir(base):
            if _dead_owner(name, "kerneld-"):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
    except OSError:
        pass
    if os.geteuid() == 0:
        try:
            sandbox.cgroups.sweep(lambda name: _dead_owner(name, "m"))
        except OSError:
            pass


class ZygoteClient:
    """Starts one zygote and turns fork requests into pids."""

    def __init__(self, python: str, preload: list[str], *,
                 on_message: Callable[[Any], None], on_exit: Callable[[], None]) -> None:
        self.python, self.preload = python, preload
        self.on_message, self.on_exit = on_message, on_exit
        self.proc: asyncio.subprocess.Process | None = None
        # req_id -> (the fork's future, what to call with its Forked before anything else runs)
        self._pending: dict[int, tuple[asyncio.Future[p.Forked],
                                       Callable[[p.Forked], None] | None]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._pidfd = -1  # of the current zygote: readable once it has exited
        self._procs: list[asyncio.subprocess.Process] = []  # every zygote not reaped yet
        self.deaths = 0  # zygotes that died on their own (not closed)

    @property
    def alive(self) -> bool:
        """Started and not exited. Asked of the zygote's pidfd too: asyncio learns of an exit
        a moment later (its watcher thread reaps, then tells the loop), and a fork sent to a
        zygote that has just died in that moment would fail instead of starting a new one."""
        return (self.proc is not None and self.proc.returncode is None
                and self._reader is not None and not _readable(self._pidfd))

    def unreaped_pids(self) -> set[int]:
        """Zygotes asyncio has still to reap (nobody else may)."""
        self._procs = [proc for proc in self._procs if proc.returncode is None]
        return {proc.pid for proc in self._procs}

    def is_parent_of(self, pid: int) -> bool:
        """Whether the live zygote is `pid`'s parent (false once its zygote has died)."""
        return self.alive and self.proc is not None and parent_pid(pid) == self.proc.pid

    async def ensure_started(self) -> None:
        async with self._lock:
            reader = self._reader
            if reader is not None and not self.alive:
                # the zygote has just died and its reader is reporting that: a new zygote only
                # after the manager took over the old one's kernels (`on_exit`)
                await asyncio.wait({reader})
            if not self.alive:
                await self._start()

    async def _start(self) -> None:
        if not os.path.exists(self.python):
            raise KernelStartError(f"worker runtime interpreter not found: {self.python} "
                                   "(run scripts/setup.sh, or set runtime.python in the config)")
        sweep_ipython_dirs()
        self.proc = await asyncio.create_subprocess_exec(
            self.python, "-I", "-c", _BOOT.format(src=SOURCE_DIR), *self.preload,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
            limit=p.MAX_WORKER_MESSAGE)
        self._procs.append(self.proc)
        if self._pidfd >= 0:
            os.close(self._pidfd)
        self._pidfd = os.pidfd_open(self.proc.pid)  # ours and not reaped yet: the right one
        assert self.proc.stdout is not None
        try:
            header = await asyncio.wait_for(self.proc.stdout.readexactly(4 + 5), timeout=60)
        except (TimeoutError, asyncio.IncompleteReadError) as exc:
            _kill(self.proc)
            await self.proc.wait()
            raise KernelStartError(f"the zygote failed to start ({self.python}); see the "
                                   "daemon's log for its error") from exc
        if header[4:] != b"ready":
            raise KernelStartError(f"the zygote spoke out of turn: {header!r}")
        self._reader = asyncio.create_task(self._read(self.proc), name="kerneld-zygote-reader")
        log.info("zygote started pid=%s python=%s preload=%s", self.proc.pid, self.python,
                 ",".join(self.preload))

    async def fork(self, *, on_forked: Callable[[p.Forked], None] | None = None,
                   **fields: Any) -> p.Forked:
        """Fork a worker. `on_forked` is called with its `Forked` as soon as it is read, before
        the zygote's next message is dispatched: the zygote can report the new process's
        `BootFailed` or `Exited` in the same read, and a pid must be routed (`track_pid`) by
        then, or its death would be dropped and the start would wait for a Hello that never
        comes."""
        await self.ensure_started()
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        req_id = self._next_id
        future: asyncio.Future[p.Forked] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (future, on_forked)
        self.proc.stdin.write(p.frame(p.encode(p.ForkRequest(req_id=req_id, **fields))))
        try:
            return await asyncio.wait_for(future, timeout=30)
        finally:
            self._pending.pop(req_id, None)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        buffer = bytearray()
        try:
            while chunk := await proc.stdout.read(1 << 20):
                buffer += chunk
                for payload in p.unframe(buffer):
                    self._dispatch(payload)
        except (ValueError, ConnectionError) as exc:
            log.error("zygote stream broken error=%r", exc)
        finally:
            await self._died(proc)

    def _dispatch(self, payload: bytes) -> None:
        try:
            msg = p.from_zygote_decoder.decode(payload)
        except p.DecodeError as exc:
            log.error("malformed message from zygote error=%s", exc)
            return
        if isinstance(msg, p.Forked):
            future, on_forked = self._pending.get(msg.req_id, (None, None))
            if future is not None and not future.done():
                if msg.error:
                    future.set_exception(KernelStartError(msg.error))
                else:
                    if on_forked is not None:
                        on_forked(msg)
                    future.set_result(msg)
        else:
            self.on_message(msg)

    async def _died(self, proc: asyncio.subprocess.Process) -> None:
        _kill(proc)  # its stdout closed: normally it has exited already
        code = await proc.wait()  # reaped: its children have been reparented by now
        if proc is self.proc:
            self._reader = None
        if not self._closing:
            self.deaths += 1  # before the pending forks hear of it (the pool counts deaths)
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(KernelStartError(f"the zygote exited (code {code})"))
        if not self._closing:
            log.warning("zygote exited pid=%s code=%s; its kernels carry on", proc.pid, code)
            try:
                self.on_exit()
            except Exception:
                log.exception("handling the zygote's exit failed")

    async def close(self) -> None:
        self._closing = True
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=2)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


def _readable(fd: int) -> bool:
    return fd >= 0 and bool(select.select([fd], [], [], 0)[0])


class ProcessWatch:
    """Kernel processes that outlived their zygote, each watched through a pidfd.

    When one exits, it is reaped here if it is this process's child (the daemon is a child
    subreaper, so its zygote's orphans are) and reported as the zygote would have, through
    `on_exit(Exited)`; if it is not ours to reap (an embedding program), its exit status is
    unknown and reported as None. The pidfd is closed at once.

    Under a child subreaper (`kerneld serve`) it also takes care of the rest of what a dead
    zygote leaves this process: forks it never reported (`adopt`: killed unless a kernel
    claims them within STRAY_GRACE) and zombie children nobody waits for (reaped on SIGCHLD:
    orphans of kernels' own processes, e.g. an unconfined kernel's `sleep &`)."""

    def __init__(self, on_exit: Callable[[p.Exited], None], runtime_python: str, *,
                 busy: Callable[[], set[int]] = set) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_exit = on_exit
        self.busy = busy  # children someone else reaps (the zygotes: asyncio)
        self.fds: dict[int, int] = {}  # pid → pidfd
        bin_dir = os.path.dirname(runtime_python)
        self.exes = {os.path.realpath(runtime_python),
                     os.path.realpath(os.path.join(bin_dir, "kerneld-init"))}
        self.subreaper = bool(prctl.get_child_subreaper())
        if self.subreaper:
            self._on_sigchld(self.reap_zombies)

    def watch(self, pid: int) -> None:
        if pid in self.fds:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # reaped already (by a zygote that died before saying so)
            self.loop.call_soon(self.on_exit, p.Exited(pid, None, None))
            return
        self.fds[pid] = fd
        self.loop.add_reader(fd, self._exited, pid)

    def adopt(self, pids: Iterable[int], claimed: Callable[[int], bool]) -> None:
        """The zygote died: watch `pids` (its kernels' processes); under a subreaper, also
        watch its other children, and kill those still not `claimed` by a kernel after
        STRAY_GRACE (a fork whose `Forked` raced the zygote's death is claimed at once)."""
        for pid in pids:
            self.watch(pid)
        if not self.subreaper:
            return
        strays = [pid for pid in child_pids() - set(self.fds) - self.busy()
                  if self._kernel_process(pid)]
        for pid in strays:
            self.watch(pid)
        if strays:
            self.loop.call_later(STRAY_GRACE, self._kill_strays, strays, claimed)

    def _kernel_process(self, pid: int) -> bool:
        try:
            return os.path.realpath(os.readlink(f"/proc/{pid}/exe")) in self.exes
        except FileNotFoundError:
            return True  # a zombie (or gone): reap it
        except OSError:
            return True  # not even root may look: a confined worker

    def _kill_strays(self, strays: list[int], claimed: Callable[[int], bool]) -> None:
        for pid in strays:
            fd = self.fds.get(pid)
            if fd is not None and not claimed(pid):
                log.warning("killing a process its dead zygote forked but never reported "
                            "pid=%s", pid)
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)

    def reap_zombies(self) -> None:
        """Reap the zombie children that neither this watch nor asyncio waits for."""
        for pid in child_pids() - set(self.fds) - self.busy():
            if process_state(pid) == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)

    def _exited(self, pid: int) -> None:
        fd = self.fds.pop(pid)
        self.loop.remove_reader(fd)
        try:
            info = os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            info = None  # not our child: someone else reaps it
        finally:
            os.close(fd)
        exit_code = sig = None
        if info is not None and info.si_code == os.CLD_EXITED:
            exit_code = info.si_status
        elif info is not None:
            sig = info.si_status  # CLD_KILLED or CLD_DUMPED
        self.on_exit(p.Exited(pid, exit_code, sig))

    def _on_sigchld(self, callback: Callable[[], None] | None) -> None:
        """Run `callback` on the loop at each SIGCHLD (None: stop). Needs the main thread."""
        try:
            if callback is None:
                self.loop.remove_signal_handler(signal.SIGCHLD)
            else:
                self.loop.add_signal_handler(signal.SIGCHLD, callback)
        except (RuntimeError, ValueError) as exc:  # not the main thread
            log.warning("no SIGCHLD handler: adopted zombies are not reaped error=%s", exc)

    def close(self) -> None:
        for fd in self.fds.values():
            self.loop.remove_reader(fd)
            os.close(fd)
        self.fds.clear()
        if self.subreaper:
            self._on_sigchld(None)


def process_state(pid: int) -> str | None:
    """The state letter of `pid` in /proc (`R`, `S`, `Z`, …), or None once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def parent_pid(pid: int) -> int | None:
    """`pid`'s parent from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def child_pids() -> set[int]:
    """This process's children (of all its threads: a subreaper's adoptees may be any's)."""
    out: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out.update(int(pid) for pid in f.read().split())
        except OSError:
            pass  # that thread has exited
    return out


def sweep_ipython_dirs(bases: Iterable[str] | None = None) -> int:
    """Remove the IPYTHONDIRs of zygotes that died while warming up: `kerneld-ipython-<pid>-*`
    whose pid no longer runs (gone, or a zombie not reaped yet), and unnamed ones (left by older zygotes) older than
    OLD_IPYTHON_DIR_AGE. A live zygote's is never touched. Returns how many went."""
    removed = 0
    for base in dict.fromkeys(bases if bases is not None else ("/tmp", tempfile.gettempdir())):
        try:
            names = [n for n in os.listdir(base) if n.startswith(IPYTHON_DIR_PREFIX)]
        except OSError:
            continue
        for name in names:
            path = os.path.join(base, name)
            head, dash, _ = name[len(IPYTHON_DIR_PREFIX):].partition("-")
            try:
                if dash and head.isdigit():
                    stale = process_state(int(head)) in (None, "Z")  # gone, or dead
                else:  # mkdtemp's suffix has no "-": a directory of the old kind
                    stale = time.time() - os.lstat(path).st_mtime > OLD_IPYTHON_DIR_AGE
            except OSError:
                continue
            if stale and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the zygote unless asyncio already knows it exited.

    Not `proc.kill()`: `subprocess.Popen.send_signal` first polls with waitpid(WNOHANG) and
    so can reap a zygote that has just exited, before asyncio's child watcher does; the
    watcher then logs "Unknown child process" and reports exit code 255. A signal to a
    zombie does nothing, and its pid cannot be reused before the watcher reaps it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


class WorkerHub:
    """The ROUTER socket every worker connects to, keyed by secret tokens.

    A plain (non-asyncio) ZeroMQ socket drained edge-triggered (`kerneld.zmqio.Drain`): each
    wake-up hands every waiting message to its kernel at once — no future or task per message
    (about 50 µs a round trip, measured); after every send the socket is re-checked for input."""

    def __init__(self, ctx: zmq.Context[Any], socket_path: str) -> None:
        self.socket_path = socket_path
        self.endpoint = f"ipc://{socket_path}"
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_WORKER_MESSAGE)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.bind(self.endpoint)
        os.chmod(socket_path, 0o666)  # its directory (0700) keeps host users out
        self.sinks: dict[bytes, Sink] = {}
        self._malformed = Tally(log, "malformed message from a worker dropped")
        self.loop = asyncio.get_running_loop()
        self._drain = Drain(self.loop, self.sock, self._dispatch, batch=None,
                            on_error=lambda exc: log.error("worker hub recv failed error=%s",
                                                           exc))

    def register(self, token: bytes, sink: Sink) -> None:
        self.sinks[token] = sink

    def unregister(self, token: bytes) -> None:
        self.sinks.pop(token, None)

    def send(self, token: bytes, msg: Any) -> None:
        try:
            self.sock.send_multipart([token, p.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("send to worker failed error=%s", exc)
        self._drain.after_send()

    def _dispatch(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        sink = self.sinks.get(frames[0])
        if sink is None:
            return
        try:
            msg = p.from_worker_decoder.decode(frames[1])
        except (p.DecodeError, RecursionError) as exc:  # msgspec recurses into nesting
            self._malformed.note(f"error={str(exc)[:200]!r}")  # a kernel cannot flood the log
            return
        try:
            sink(msg)
        except Exception:
            log.exception("worker message handler failed")

    async def close(self) -> None:
        if not self.sock.closed:
            self._drain.close()
            self.sock.close(linger=0)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


__all__ = ["SOURCE_DIR", "ProcessWatch", "Supervisor", "WorkerHub", "ZygoteClient"]
