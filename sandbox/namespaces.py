"""Namespaces: the worker's own PID, mount, network, IPC, UTS and cgroup namespaces.

Process model of `fork(root, pid_ns, user_ns)` (called by `sandbox.fork(policy)`):
- root (the zygote runs as root): `unshare(CLONE_NEWPID)` in the zygote, optionally
  `posix_spawn` of a tiny init (then PID 1; the worker becomes PID 2, an ordinary process;
  a `supervisor` pidfd is handed to the init as its fd 3, and the init exits, ending the
  namespace, when that process exits), `os.fork()`, then `setns()` back to the zygote's own
  PID namespace. Without an init the child is PID 1 of a fresh namespace;
  the zygote is unchanged. Using `os.fork()` (not a raw `clone` through ctypes) keeps glibc's
  fork bookkeeping (cached TID, atfork handlers, malloc/stdio locks) and CPython's
  PyOS_BeforeFork/AfterFork hooks exactly as a normal fork. Measured extra cost over a plain
  os.fork: unshare ~0.02-0.04 ms + setns ~0.07-0.1 ms (+ the kernel's first-process-in-a-new-
  namespace work). When the worker (PID 1) dies, the kernel SIGKILLs everything left in its
  namespace. PID 1 also inherits orphans (reaping them is the worker's job) and ignores signals
  it has no handler for, even from inside its namespace.
- not root, user namespaces usable: fork an intermediate child which creates a user namespace
  (mapping only the caller's uid/gid) and a PID namespace, then forks the worker (PID 1 inside).
  The intermediate only relays signals (SIGINT, SIGTERM, ...) to the worker and exits with the
  worker's status, so the pid the caller holds behaves like the worker's; given a
  `supervisor` pidfd, it SIGKILLs the worker when that process exits. The worker dies with
  it (PR_SET_PDEATHSIG). Supplementary groups cannot be dropped without privilege here.
- no PID namespace possible: plain `os.fork()`; `check()` reports it, strict mode refuses.

`enter(policy, ...)` (in the worker, after joining the cgroup): unshare mount, IPC, UTS, cgroup
and — unless net.mode == "host" — network namespaces (plus a user namespace when not root and
not made by `fork`). `finish(policy)` sets the hostname and, in "proxy" mode, brings `lo` up
(in "none" mode seccomp forbids every AF_INET/AF_INET6 socket, so `lo` stays down: -0.2 ms).
"""

from __future__ import annotations

import os
import select
import signal
from typing import Any

from . import _syscalls as sc
from .policy import ALL, Policy

EXIT_SETUP_FAILED = 121  # the intermediate (non-root) child could not build the namespaces
RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT, signal.SIGWINCH)

_state: dict[str, Any] = {"userns": False, "pid_ns": False, "init_pid": None,
                          "supervised": False}


def in_own_userns() -> bool:
    """True in a worker whose user namespace was created by `fork` (non-root mode)."""
    return bool(_state["userns"])


def write_id_maps(uid: int, gid: int) -> None:
    """Map only `uid`/`gid` to themselves in a fresh user namespace (setgroups denied)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def in_new_pid_ns() -> bool:
    """True in a worker that `fork` placed in a PID namespace of its own."""
    return bool(_state["pid_ns"]) or os.getpid() == 1


def last_init_pid() -> int | None:
    """The pid (in the caller's namespace) of the init spawned by the last `fork`, if any."""
    return _state["init_pid"]  # type: ignore[no-any-return]


def supervised() -> bool:
    """In a child of `fork(..., supervisor=fd)`: whether something outside the worker ends its
    tree when the supervisor exits (its init, or the user-namespace relay). False after a
    plain fork or without an init: the caller must then tie the child's life itself."""
    return bool(_state["supervised"])


def _init_fds(supervisor: int | None) -> list[tuple[Any, ...]]:
    """The init's fds: /dev/null as stdin and stdout (it must not hold the caller's pipes open:
    it may outlive the caller), stderr inherited, `supervisor` as fd 3. DUP2 onto the same
    number also clears FD_CLOEXEC (POSIX; glibc >= 2.29)."""
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
    if supervisor is not None:
        actions.append((os.POSIX_SPAWN_DUP2, supervisor, 3))
    return actions


def _fork_root(init_argv: list[str] | None, supervisor: int | None) -> int:
    """unshare(NEWPID); spawn `init_argv` as PID 1 (if given, with `supervisor` as its fd 3);
    fork the worker; setns back.

    With an init, the worker is PID 2: an ordinary process (default signal actions apply),
    while the init reaps orphans; both are children of the caller."""
    _state["init_pid"] = None
    ns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWPID)
        try:
            if init_argv:
                _state["init_pid"] = os.posix_spawn(init_argv[0], init_argv, {},
                                                    file_actions=_init_fds(supervisor))
            pid = os.fork()
        except BaseException:
            sc.setns(ns_fd, sc.CLONE_NEWPID)
            raise
        if pid != 0:
            sc.setns(ns_fd, sc.CLONE_NEWPID)
        else:
            _state["pid_ns"] = True
            _state["supervised"] = bool(init_argv) and supervisor is not None
        return pid
    finally:
        os.close(ns_fd)


def _relay(child: int, supervisor: int | None) -> None:
    """Intermediate process (non-root mode): forward signals, mirror the worker's exit, and
    SIGKILL the worker (PID 1 of its namespace: the namespace goes with it) when the
    `supervisor` exits. It keeps none of the caller's fds (stdin and stdout become /dev/null:
    it may outlive the caller) but stderr and `supervisor`."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.closerange(3, supervisor if supervisor is not None else 1 << 16)
    if supervisor is not None:
        os.closerange(supervisor + 1, 1 << 16)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in RELAYED_SIGNALS:
        signal.signal(sig, forward)
    if supervisor is not None:
        # wake on the worker's exit or the supervisor's (a relayed signal interrupts the
        # select, which Python then retries); the worker is ours: its pid cannot be reused
        child_fd = os.pidfd_open(child)
        ready, _, _ = select.select([child_fd, supervisor], [], [])
        if supervisor in ready:
            os.kill(child, signal.SIGKILL)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(EXIT_SETUP_FAILED)
    if os.WIFSIGNALED(status):
        died_of = os.WTERMSIG(status)
        signal.signal(died_of, signal.SIG_DFL)
        os.kill(os.getpid(), died_of)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _fork_userns(supervisor: int | None) -> int:
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        uid, gid = os.getuid(), os.getgid()
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWPID)
        write_id_maps(uid, gid)
        child = os.fork()
    except BaseException:  # noqa: BLE001 - never return into the caller's code as a stray fork
        os._exit(EXIT_SETUP_FAILED)
    if child == 0:
        _state["userns"] = True
        _state["supervised"] = supervisor is not None
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        return 0
    _relay(child, supervisor)
    os._exit(EXIT_SETUP_FAILED)  # not reached


def fork(root: bool, pid_ns: bool, user_ns: bool, init_argv: list[str] | None = None,
         supervisor: int | None = None) -> int:
    """Fork the worker: 0 in the child, in a new PID namespace when possible (PID 2 under
    `init_argv` as PID 1 when given and running as root, else PID 1 itself). `supervisor`:
    a pidfd whose process's exit ends the worker's tree where `supervised()` says so."""
    _state["supervised"] = False
    if pid_ns and root:
        return _fork_root(init_argv, supervisor)
    if pid_ns and user_ns:
        return _fork_userns(supervisor)
    return os.fork()


_FLAGS = {"mnt": sc.CLONE_NEWNS, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS,
          "cgroup": sc.CLONE_NEWCGROUP, "net": sc.CLONE_NEWNET}


def unshare_flags(policy: Policy, *, root: bool, available: frozenset[str]) -> int:
    """The unshare(2) flags for `policy`, limited to the `available` namespace kinds."""
    flags = 0
    for kind, flag in _FLAGS.items():
        if kind in available and not (kind == "net" and policy.net.mode == "host"):
            flags |= flag
    if not root and not in_own_userns():
        flags |= sc.CLONE_NEWUSER
    return flags


def enter(policy: Policy, *, root: bool, available: frozenset[str]) -> bool:
    """Unshare the worker's namespaces; returns True when running inside a user namespace."""
    flags = unshare_flags(policy, root=root, available=available)
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(flags)
    if flags & sc.CLONE_NEWUSER:
        write_id_maps(uid, gid)
    return bool(flags & sc.CLONE_NEWUSER) or in_own_userns()


MEMFD_NOEXEC = "/proc/sys/vm/memfd_noexec"


def forbid_memfd_exec() -> bool:
    """vm.memfd_noexec = 2 in the worker's PID namespace (Linux >= 6.3; the sysctl is per PID
    namespace and inherited). Landlock lets execve through for files of internal mounts, so
    without this a kernel granted *some* program could execve a memfd holding any binary.
    Must run while the host /proc is still mounted (before the view). True if set."""
    try:
        fd = os.open(MEMFD_NOEXEC, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False  # older kernel, or not privileged over the host procfs (user namespace)
    try:
        os.write(fd, b"2")
    finally:
        os.close(fd)
    return True


def hide_foreign_init() -> None:
    """Mask /proc/1 when PID 1 of our PID namespace is an init that is not this process.

    Such an init (kerneld-init, spawned by `fork` before the worker existed) stays in the
    host's mount and network namespaces, and procfs serves `/proc/<pid>/mountinfo`, `mounts`
    and `net/*` without any ptrace check: through /proc/1 the worker could read the host's
    mount table and network state (connections, UNIX socket paths, interfaces). An empty
    read-only tmpfs (mode 000) over /proc/1 hides all of it; the worker never needs it.
    Runs after the view is built (its /proc is mounted) and before the capability drop."""
    if os.getpid() == 1 or not os.path.isdir("/proc/1"):
        return
    sc.mount("tmpfs", "/proc/1", "tmpfs",
             sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             "mode=000,size=4k,nr_inodes=1")


def finish(policy: Policy, *, netns: bool) -> None:
    """Hostname (unless `sys` grants the host's), loopback of the new network namespace, and
    a foreign init's /proc entry hidden (`hide_foreign_init`)."""
    if not (policy.sys == ALL or "hostname" in policy.sys):
        sc.sethostname(policy.hostname)
    if policy.net.mode == "proxy" and netns:  # "none": no AF_INET socket can exist anyway
        sc.loopback_up()
    hide_foreign_init()
