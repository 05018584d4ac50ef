"""seccomp: the allowlist of system calls the worker (and everything it spawns) may make.

Why an allowlist: the kernel's attack surface grows every release; a denylist silently allows
every new syscall. Here the default action is ERRNO(EPERM), a foreign architecture (x86 32-bit,
x32) kills the process, and every allowed entry carries a one-line reason.

Argument filters close what Landlock and namespaces do not:
- `socket`: AF_UNIX always (pyzmq ipc, socketpair); "proxy": AF_INET/AF_INET6 SOCK_STREAM with
  protocol 0 or IPPROTO_TCP only (no UDP/DNS — the proxy resolves —, no raw, no MPTCP 262);
  "host": AF_INET/AF_INET6. Never netlink, packet, vsock, alg, bluetooth, ...
- `clone` only without namespace flags; `clone3` answers ENOSYS (its flags live in memory,
  seccomp cannot read them) so glibc falls back to `clone`;
- `sendto`/`sendmsg`/`sendmmsg` without MSG_FASTOPEN (an implicit connect Landlock never sees);
- `ioctl` for any command except TIOCSTI and TIOCLINUX, written as an allowlist of masked ranges
  over the full 64-bit argument (the kernel truncates `cmd` to 32 bits: a deny rule on the low
  bits alone could be bypassed by setting high bits);
- `prctl` read-only / self-only options, `personality` PER_LINUX (or query), `prlimit64` on self;
- `execve`/`execveat` only when `policy.exec_paths` is non-empty (the worker itself never execs).
- `chmod`/`fchmod`/`fchmodat` without S_ISUID/S_ISGID (`fchmodat2` is absent): idmapped mounts
  write the kernel's files as the host directory's owner, often root.

Absent on purpose (a sample): ptrace, process_vm_*, bpf, io_uring_*, userfaultfd, keyctl family,
perf_event_open, mount/umount2/pivot_root/chroot and the new mount API, unshare, setns,
module/kexec calls, name_to_handle_at/open_by_handle_at, SysV IPC, set*id, setgroups, capset,
acct, swapon/off, reboot, syslog, quotactl, mknod, lookup_dcookie, vhangup, iopl/ioperm,
modify_ldt, kcmp, pidfd_getfd, clock/time setters, Linux AIO, fanotify, mq_*, seccomp and
landlock_* (self-restriction only, but pure kernel surface for a notebook), vmsplice, mlockall.

`build(policy)` is pure (unit-tested); `compile(rules)` turns it into BPF with libseccomp
(`bpf_for(policy)` caches it; `sandbox.fork` does it in the zygote before forking);
`install(bpf)` is one prctl in the worker (~0.2 ms with the ctypes call).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from functools import lru_cache

from . import _syscalls as sc
from .policy import Policy

try:
    import pyseccomp as _seccomp
except (ImportError, RuntimeError, OSError):  # libseccomp missing: probe reports no seccomp
    _seccomp = None

AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_TYPE_MASK = 1, 0xF
IPPROTO_TCP = 6
MSG_FASTOPEN = 0x20000000
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
NS_FLAGS = (sc.CLONE_NEWNS | sc.CLONE_NEWCGROUP | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
            | sc.CLONE_NEWUSER | sc.CLONE_NEWPID | sc.CLONE_NEWNET)
PER_LINUX, PER_QUERY = 0, 0xFFFFFFFF
U64 = (1 << 64) - 1
# S_ISUID | S_ISGID: in an idmapped filesystem mount the kernel's files are the host owner's
# (often root) on disk; a setuid/setgid bit set there would hand that owner's ids to any host
# user who can run the file (nosuid only protects the inside). Writes clear both bits on files
# created with them (no CAP_FSETID), so chmod is the one way to set them on content.
SETID_BITS = 0o6000
_NO_SETID = "mode of own files, never S_ISUID/S_ISGID (files may land on the host as its owner's)"


@dataclass(frozen=True)
class Arg:
    """One comparison on argument `index`: "eq" (== value) or "masked_eq" ((arg & mask) == value)
    or "le" (<= value); all comparisons are on the full 64-bit register."""

    index: int
    op: str
    value: int
    mask: int = 0


@dataclass(frozen=True)
class Rule:
    """Allow (or, for action="enosys", fail with ENOSYS) `name` when all `args` match."""

    name: str
    reason: str
    args: tuple[Arg, ...] = ()
    action: str = "allow"


def _allow(names: str, reason: str) -> list[Rule]:
    return [Rule(n, reason) for n in names.split()]


_BASE: list[Rule] = [
    *_allow("read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2",
            "I/O on open fds"),
    *_allow("close close_range", "close files"),
    # open/openat/creat: Landlock decides which paths; the mode may not carry S_ISUID/S_ISGID
    # (O_CREAT with 06755 would otherwise leave a setid file on the host through an idmapped
    # mount). glibc passes mode 0 when O_CREAT/O_TMPFILE is absent, Python its 0o777/0o666.
    Rule("open", _NO_SETID, (Arg(2, "masked_eq", 0, SETID_BITS),)),
    Rule("openat", _NO_SETID, (Arg(3, "masked_eq", 0, SETID_BITS),)),
    Rule("creat", _NO_SETID, (Arg(1, "masked_eq", 0, SETID_BITS),)),
    Rule("openat2", "its mode lives in a struct seccomp cannot read: ENOSYS makes libc fall "
                    "back to openat", action="enosys"),
    *_allow("stat fstat lstat newfstatat statx statfs fstatfs", "file metadata"),
    *_allow("access faccessat faccessat2", "permission checks (glibc uses faccessat2 first)"),
    *_allow("lseek getdents getdents64 getcwd chdir fchdir readlink readlinkat",
            "directory walking and cwd"),
    Rule("mkdir", _NO_SETID, (Arg(1, "masked_eq", 0, SETID_BITS),)),
    Rule("mkdirat", _NO_SETID, (Arg(2, "masked_eq", 0, SETID_BITS),)),
    *_allow("rename renameat renameat2 rmdir unlink unlinkat link linkat "
            "symlink symlinkat", "namespace ops inside writable paths (Landlock decides)"),
    *_allow("utime utimes utimensat futimesat umask",
            "times of own files (read-only mounts return EROFS), umask"),
    Rule("chmod", _NO_SETID, (Arg(1, "masked_eq", 0, SETID_BITS),)),
    Rule("fchmod", _NO_SETID, (Arg(1, "masked_eq", 0, SETID_BITS),)),
    Rule("fchmodat", _NO_SETID, (Arg(2, "masked_eq", 0, SETID_BITS),)),
    *_allow("truncate ftruncate fallocate fsync fdatasync sync_file_range fadvise64 readahead",
            "file size and cache hints"),
    *_allow("getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr setxattr lsetxattr "
            "fsetxattr removexattr lremovexattr fremovexattr", "xattrs (shutil.copystat)"),
    *_allow("flock fcntl dup dup2 dup3 pipe pipe2", "fd plumbing"),
    *_allow("sendfile copy_file_range splice tee", "in-kernel copies (shutil fast paths)"),
    *_allow("inotify_init inotify_init1 inotify_add_watch inotify_rm_watch",
            "file watching (autoreload)"),
    *_allow("memfd_create", "anonymous files (multiprocessing, JITs)"),
    *_allow("mmap munmap mprotect mremap madvise brk msync mincore", "memory management"),
    *_allow("mlock mlock2 munlock munlockall", "page locking, bounded by RLIMIT_MEMLOCK"),
    *_allow("membarrier get_mempolicy set_mempolicy mbind", "own-memory policies (BLAS, JITs)"),
    *_allow("pkey_alloc pkey_free pkey_mprotect", "memory protection keys of own memory"),
    *_allow("futex futex_waitv set_robust_list set_tid_address rseq",
            "threads and locks (glibc)"),
    *_allow("arch_prctl", "TLS setup on x86_64 (glibc, threads)"),
    *_allow("exit exit_group restart_syscall rt_sigreturn", "process/thread exit, signals"),
    *_allow("rt_sigaction rt_sigprocmask rt_sigpending rt_sigtimedwait rt_sigsuspend "
            "rt_sigqueueinfo rt_tgsigqueueinfo sigaltstack signalfd signalfd4 pause",
            "signal handling (Python)"),
    *_allow("kill tkill tgkill pidfd_open pidfd_send_signal",
            "signals (PID namespace + Landlock signal scope bound the targets)"),
    *_allow("wait4 waitid", "reap children"),
    *_allow("getpid getppid gettid getuid geteuid getgid getegid getresuid getresgid "
            "getgroups getpgrp getpgid getsid setsid setpgid capget",
            "own identity (read-only) and job control"),
    *_allow("getrlimit setrlimit getrusage times sysinfo uname getcpu getrandom",
            "process info, limits (lowering only without caps), randomness"),
    *_allow("sched_yield sched_getaffinity sched_setaffinity sched_getparam "
            "sched_getscheduler sched_get_priority_max sched_get_priority_min sched_getattr "
            "getpriority setpriority ioprio_get", "scheduling of own threads"),
    *_allow("sched_setscheduler sched_setparam sched_setattr",
            "libzmq's I/O thread re-applies its policy (asserts on failure); real-time "
            "policies need CAP_SYS_NICE or RLIMIT_RTPRIO > 0 (both absent)"),
    *_allow("nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time alarm "
            "getitimer setitimer timer_create timer_settime timer_gettime timer_getoverrun "
            "timer_delete timerfd_create timerfd_settime timerfd_gettime", "time and timers"),
    *_allow("select pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl epoll_wait "
            "epoll_pwait epoll_pwait2 eventfd eventfd2", "event loops (asyncio, pyzmq)"),
    *_allow("bind listen accept accept4 connect getsockname getpeername getsockopt "
            "setsockopt shutdown recvfrom recvmsg recvmmsg",
            "socket calls (which sockets exist is decided by socket() + netns + Landlock)"),
    *_allow("clone fork vfork", "processes and threads (fork/vfork carry no namespace flags)"),
    Rule("clone3", "glibc tries clone3 first; ENOSYS makes it fall back to filterable clone",
         action="enosys"),
]

_CLONE_ARGS = (Arg(0, "masked_eq", 0, NS_FLAGS),)

_PRCTL_OPTIONS = {
    1: "PR_SET_PDEATHSIG", 2: "PR_GET_PDEATHSIG", 3: "PR_GET_DUMPABLE", 7: "PR_GET_KEEPCAPS",
    15: "PR_SET_NAME", 16: "PR_GET_NAME", 21: "PR_GET_SECCOMP", 23: "PR_CAPBSET_READ",
    27: "PR_GET_SECUREBITS", 29: "PR_SET_TIMERSLACK", 30: "PR_GET_TIMERSLACK",
    36: "PR_SET_CHILD_SUBREAPER", 37: "PR_GET_CHILD_SUBREAPER", 38: "PR_SET_NO_NEW_PRIVS",
    39: "PR_GET_NO_NEW_PRIVS", 40: "PR_GET_TID_ADDRESS", 42: "PR_GET_THP_DISABLE",
    0x53564D41: "PR_SET_VMA (name own anonymous mappings)",
}


def masked_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover the 64-bit integer range [lo, hi] with aligned blocks: (mask, value) pairs such that
    x is in the range iff (x & mask) == value for one of them."""
    out: list[tuple[int, int]] = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 64
        while size > hi - lo + 1:
            size >>= 1
        out.append((U64 & ~(size - 1), lo))
        lo += size
    return out


def _ioctl_rules() -> list[Rule]:
    spans = [(0, TIOCSTI - 1), (TIOCSTI + 1, TIOCLINUX - 1), (TIOCLINUX + 1, 0xFFFFFFFF)]
    return [Rule("ioctl", "device/terminal control except TIOCSTI/TIOCLINUX (cmd is 32-bit)",
                 (Arg(1, "masked_eq", value, mask),))
            for lo, hi in spans for mask, value in masked_ranges(lo, hi)]


def _socket_rules(mode: str) -> list[Rule]:
    out = [Rule("socket", "AF_UNIX: pyzmq ipc, multiprocessing", (Arg(0, "eq", AF_UNIX),)),
           Rule("socketpair", "AF_UNIX pairs only", (Arg(0, "eq", AF_UNIX),))]
    if mode == "host":
        out += [Rule("socket", "host network: IPv4", (Arg(0, "eq", AF_INET),)),
                Rule("socket", "host network: IPv6", (Arg(0, "eq", AF_INET6),))]
    elif mode == "proxy":
        for fam in (AF_INET, AF_INET6):
            for proto in (0, IPPROTO_TCP):
                out.append(Rule("socket", "TCP to the proxy (no UDP/raw/MPTCP)", (
                    Arg(0, "eq", fam), Arg(1, "masked_eq", SOCK_STREAM, SOCK_TYPE_MASK),
                    Arg(2, "eq", proto))))
    return out


def _send_rules() -> list[Rule]:
    reason = "send without MSG_FASTOPEN (implicit connect unseen by Landlock)"
    return [Rule("sendto", reason, (Arg(3, "masked_eq", 0, MSG_FASTOPEN),)),
            Rule("sendmsg", reason, (Arg(2, "masked_eq", 0, MSG_FASTOPEN),)),
            Rule("sendmmsg", reason, (Arg(3, "masked_eq", 0, MSG_FASTOPEN),))]


def _misc_rules() -> list[Rule]:
    out = [Rule("prctl", name, (Arg(0, "eq", opt),)) for opt, name in _PRCTL_OPTIONS.items()]
    out.append(Rule("prctl", "PR_CAP_AMBIENT IS_SET (query)", (Arg(0, "eq", 47), Arg(1, "eq", 1))))
    out += [Rule("personality", "PER_LINUX only", (Arg(0, "eq", PER_LINUX),)),
            Rule("personality", "query current persona", (Arg(0, "eq", PER_QUERY),)),
            Rule("prlimit64", "own limits only (pid 0)", (Arg(0, "eq", 0),))]
    return out


@lru_cache(maxsize=8)
def _table(net_mode: str, exec_ok: bool) -> tuple[Rule, ...]:
    rules = [r if r.name != "clone" else Rule("clone", r.reason, _CLONE_ARGS) for r in _BASE]
    rules += _ioctl_rules() + _socket_rules(net_mode) + _send_rules() + _misc_rules()
    if exec_ok:
        rules += _allow("execve execveat", "run granted: Landlock EXECUTE limits which programs")
    return tuple(rules)


def build(policy: Policy) -> tuple[Rule, ...]:
    """The seccomp rule table for `policy` (pure; it depends on net.mode and exec only)."""
    return _table(policy.net.mode, bool(policy.exec_paths))


def available() -> bool:
    return _seccomp is not None


def _arg(a: Arg) -> object:
    assert _seccomp is not None
    if a.op == "eq":
        return _seccomp.Arg(a.index, _seccomp.EQ, a.value)
    if a.op == "le":
        return _seccomp.Arg(a.index, _seccomp.LE, a.value)
    return _seccomp.Arg(a.index, _seccomp.MASKED_EQ, a.mask, a.value)


def _filter(rules: tuple[Rule, ...]) -> object:
    s = _seccomp
    assert s is not None
    f = s.SyscallFilter(s.ERRNO(errno.EPERM))
    f.set_attr(s.Attr.ACT_BADARCH, s.KILL_PROCESS)
    f.set_attr(s.Attr.CTL_OPTIMIZE, 2)  # binary tree over syscall numbers
    for r in rules:
        nr = s.resolve_syscall(s.Arch.NATIVE, r.name)
        if nr < 0:
            continue  # not a syscall on this architecture (e.g. open/stat/fork on aarch64)
        action = s.ALLOW if r.action == "allow" else s.ERRNO(errno.ENOSYS)
        f.add_rule(action, nr, *[_arg(a) for a in r.args])
    return f


class _Fd:
    """The minimal file object libseccomp's exporters need (they write to `fileno()`)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def _export(rules: tuple[Rule, ...], kind: str) -> bytes:
    f = _filter(rules)
    fd = os.memfd_create(f"seccomp-{kind}", os.MFD_CLOEXEC)
    try:
        getattr(f, f"export_{kind}")(_Fd(fd))
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def compile(rules: tuple[Rule, ...]) -> bytes:
    """BPF program (array of struct sock_filter) for `rules`, built by libseccomp."""
    return _export(rules, "bpf")


@lru_cache(maxsize=8)
def _bpf(net_mode: str, exec_ok: bool) -> bytes:
    return compile(_table(net_mode, exec_ok))


def bpf_for(policy: Policy) -> bytes:
    """The compiled filter for `policy`, cached per (net.mode, exec) in this process (~2.5 ms
    the first time, done by `sandbox.fork` in the zygote before forking)."""
    return _bpf(policy.net.mode, bool(policy.exec_paths))


def pfc(rules: tuple[Rule, ...]) -> str:
    """Human-readable pseudo filter code (for tests and `kerneld profile check`)."""
    return _export(rules, "pfc").decode()


def install(bpf: bytes) -> None:
    """Load the filter into the calling thread (needs no_new_privs; single-threaded)."""
    sc.seccomp_load_bpf(bpf)
