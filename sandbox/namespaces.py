"""Namespaces: the worker's own PID, mount, network, IPC, UTS and cgroup namespaces.

Process model of `fork(policy, features)`:
- root (the zygote runs as root): `unshare(CLONE_NEWPID)` in the zygote, `os.fork()`, then
  `setns()` back to the zygote's own PID namespace. The child is PID 1 of a fresh namespace;
  the zygote is unchanged. Using `os.fork()` (not a raw `clone` through ctypes) keeps glibc's
  fork bookkeeping (cached TID, atfork handlers, malloc/stdio locks) and CPython's
  PyOS_BeforeFork/AfterFork hooks exactly as a normal fork; the extra cost is two syscalls
  (~20 us). When the worker (PID 1) dies, the kernel SIGKILLs everything left in its namespace.
- not root, user namespaces usable: fork an intermediate child which creates a user namespace
  (mapping only the caller's uid/gid) and a PID namespace, then forks the worker (PID 1 inside).
  The intermediate only relays signals (SIGINT, SIGTERM, ...) to the worker and exits with the
  worker's status, so the pid the caller holds behaves like the worker's. The worker dies with
  it (PR_SET_PDEATHSIG). Supplementary groups cannot be dropped without privilege here.
- no PID namespace possible: plain `os.fork()`; `check()` reports it, strict mode refuses.

`enter(policy, ...)` (in the worker, after joining the cgroup): unshare mount, IPC, UTS, cgroup
and — unless net.mode == "host" — network namespaces (plus a user namespace when not root and
not made by `fork`). `finish(policy)` sets the hostname and brings `lo` up.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from . import _syscalls as sc
from .policy import ALL, Policy

EXIT_SETUP_FAILED = 121  # the intermediate (non-root) child could not build the namespaces
RELAYED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT, signal.SIGWINCH)

_state = {"userns": False}


def in_own_userns() -> bool:
    """True in a worker whose user namespace was created by `fork` (non-root mode)."""
    return _state["userns"]


def write_id_maps(uid: int, gid: int) -> None:
    """Map only `uid`/`gid` to themselves in a fresh user namespace (setgroups denied)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _fork_root() -> int:
    ns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            sc.setns(ns_fd, sc.CLONE_NEWPID)
            raise
        if pid != 0:
            sc.setns(ns_fd, sc.CLONE_NEWPID)
        return pid
    finally:
        os.close(ns_fd)


def _relay(child: int) -> None:
    """Intermediate process (non-root mode): forward signals, mirror the worker's exit."""
    os.closerange(3, 1 << 16)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in RELAYED_SIGNALS:
        signal.signal(sig, forward)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            os._exit(EXIT_SETUP_FAILED)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _fork_userns() -> int:
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        uid, gid = os.getuid(), os.getgid()
        sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWPID)
        write_id_maps(uid, gid)
        child = os.fork()
    except BaseException:
        os._exit(EXIT_SETUP_FAILED)
    if child == 0:
        _state["userns"] = True
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        return 0
    _relay(child)
    os._exit(EXIT_SETUP_FAILED)  # not reached


def fork(root: bool, pid_ns: bool, user_ns: bool) -> int:
    """Fork the worker: 0 in the child (PID 1 of a new PID namespace when possible)."""
    if pid_ns and root:
        return _fork_root()
    if pid_ns and user_ns:
        return _fork_userns()
    return os.fork()


def unshare_flags(policy: Policy, *, root: bool) -> int:
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWCGROUP
    if policy.net.mode != "host":
        flags |= sc.CLONE_NEWNET
    if not root and not in_own_userns():
        flags |= sc.CLONE_NEWUSER
    return flags


def enter(policy: Policy, *, root: bool) -> bool:
    """Unshare the worker's namespaces; returns True when running inside a user namespace."""
    flags = unshare_flags(policy, root=root)
    uid, gid = os.getuid(), os.getgid()
    sc.unshare(flags)
    if flags & sc.CLONE_NEWUSER:
        write_id_maps(uid, gid)
    return bool(flags & sc.CLONE_NEWUSER) or in_own_userns()


def finish(policy: Policy) -> None:
    """Hostname (unless `sys` grants the host's) and loopback of the new network namespace."""
    if not (policy.sys == ALL or "hostname" in policy.sys):
        sc.sethostname(policy.hostname)
    if policy.net.mode != "host":
        sc.loopback_up()
