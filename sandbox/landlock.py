"""Landlock: which files the worker may read, write or execute, which TCP ports it may use, and
that it may not signal or reach abstract UNIX sockets outside its own domain.

Why Landlock on top of the mount view: the mount view decides what *exists*; Landlock decides
what may be done with it, unprivileged and inherited by every child and every thread created
afterwards (never by threads that already exist: apply it single-threaded).

Rules are built purely (`build(policy, abi) -> Ruleset`, unit-tested, no I/O) from paths as seen
INSIDE the worker's mount view (after pivot_root). `install(ruleset)` is the one function that
touches the kernel: it opens each path O_PATH (missing paths are skipped: what does not exist
cannot be reached), narrows directory rights to file rights for non-directories, adds the port
rules and restricts the calling thread.

Every right of the running ABI is handled (an unhandled right is silently allowed):
ABI 1 base FS rights, 2 REFER, 3 TRUNCATE, 4 TCP bind/connect, 5 IOCTL_DEV, 6 scopes. Granted:
- system paths + runtime prefix: read (+ TRUNCATE, inert on their read-only binds; see
  RO_TREE) (the loader maps libraries with open+mmap; EXECUTE is only
  checked by execve, so the worker, which never execs, needs none);
- exec: EXECUTE only on `policy.exec_paths` (+ the ELF interpreter when anything is executable);
  with no exec paths, execve is also absent from the seccomp allowlist;
- write paths, writable mounts, /tmp, /dev/shm: read + every write right except device creation;
- /dev/null, zero, full, random, urandom: read/write/truncate (O_TRUNC) file; never
  MAKE_CHAR/MAKE_BLOCK/IOCTL_DEV;
- /proc: read (it only shows the worker's own processes); with `sys` kinds granted, only the
  worker's own /proc/<pid> plus the files of those kinds;
- TCP: bind never; connect only to `net.proxy_port` in "proxy" mode; "host" mode leaves TCP
  unhandled; scopes: abstract UNIX sockets and signals (ABI >= 6).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from . import _syscalls as sc
from .policy import ALL, SYS_KINDS, Policy

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13          # ABI 2
TRUNCATE = 1 << 14       # ABI 3
IOCTL_DEV = 1 << 15      # ABI 5

NET_BIND_TCP = 1 << 0    # ABI 4
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ = READ_FILE | READ_DIR
WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO
         | MAKE_SYM | REFER | TRUNCATE)
RW_FILE = READ_FILE | WRITE_FILE | TRUNCATE  # open(..., "w") on /dev/null passes O_TRUNC
# Read grants on read-only bind mounts also carry TRUNCATE. It grants nothing (truncating on a
# read-only mount fails with EROFS, and writing needs WRITE_FILE), but it lets the kernel stop
# its walk at the grant: every open() of a regular file asks for TRUNCATE as an "optional"
# right, and an unresolved right makes Landlock walk on to the root through every mount
# (measured: -0.4 us per open of a file under /usr, about a third of Landlock's cost).
RO_TREE = READ | TRUNCATE

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
ELF_INTERPRETERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")


@dataclass(frozen=True)
class Ruleset:
    """A complete Landlock ruleset: handled masks, path rules and TCP port rules."""

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    paths: tuple[tuple[str, int], ...]
    ports: tuple[tuple[int, int], ...]


def handled_fs(abi: int) -> int:
    """Every filesystem right the ABI knows."""
    if abi < 1:
        return 0
    mask = (1 << 13) - 1
    if abi >= 2:
        mask |= REFER
    if abi >= 3:
        mask |= TRUNCATE
    if abi >= 5:
        mask |= IOCTL_DEV
    return mask


def _sys_paths(policy: Policy) -> list[tuple[str, int]]:
    if policy.sys == ALL:
        return [("/proc", READ), ("/sys", READ)]
    if not any(SYS_KINDS.get(k) for k in policy.sys):
        return [("/proc", READ)]
    out = [("/proc/self", READ)]
    for kind in policy.sys:
        out += [(p, READ) for p in SYS_KINDS.get(kind, ())]
    return out


def _exec_rules(policy: Policy, readable: list[str]) -> list[tuple[str, int]]:
    if policy.exec_paths == ALL:
        return [(p, EXECUTE) for p in readable]
    if not policy.exec_paths:
        return []
    out = [(p, EXECUTE | READ) for p in policy.exec_paths]
    return out + [(p, EXECUTE | READ_FILE) for p in ELF_INTERPRETERS]


def _grants(policy: Policy) -> list[tuple[str, int]]:
    """Path grants before exec: (path inside the view, access)."""
    hostroot = policy.read == ALL or policy.write == ALL
    ro = READ if hostroot else RO_TREE   # hostroot binds the host's top-level dirs instead
    out = [(p, ro) for p in policy.system_paths]
    out.append((policy.runtime_prefix, ro))
    if hostroot:
        out.append(("/", READ | (WRITE if policy.write == ALL else 0)))
    else:
        out += [(p, RO_TREE) for p in policy.read]
        out += [(p, READ | WRITE) for p in policy.write]
    out += [(m.target, RO_TREE if m.read_only else READ | WRITE) for m in policy.mounts]
    out += [(inside, RW_FILE) for _, inside in policy.bind_files]
    out += [("/tmp", READ | WRITE), ("/dev/shm", READ | WRITE)]
    out += [(d, RW_FILE) for d in DEVICES]
    return out + _sys_paths(policy)


def _net(policy: Policy, abi: int) -> tuple[int, tuple[tuple[int, int], ...]]:
    if abi < 4 or policy.net.mode == "host":
        return 0, ()
    handled = NET_BIND_TCP | NET_CONNECT_TCP
    if policy.net.mode == "proxy":
        return handled, ((policy.net.proxy_port, NET_CONNECT_TCP),)
    return handled, ()


def build(policy: Policy, abi: int) -> Ruleset:
    """The Landlock ruleset enforcing `policy` on a kernel with Landlock ABI `abi` (pure)."""
    fs = handled_fs(abi)
    grants = _grants(policy)
    readable = [p for p, a in grants if a & READ_FILE]
    paths = tuple((p, a & fs) for p, a in grants + _exec_rules(policy, readable) if a & fs)
    net, ports = _net(policy, abi)
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    return Ruleset(abi, fs, net, scoped, paths, ports)


def _add_path(ruleset_fd: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            access &= FILE_RIGHTS
        if access:
            sc.landlock_add_path_rule(ruleset_fd, fd, access)
    finally:
        os.close(fd)


def install(ruleset: Ruleset) -> None:
    """Create the ruleset, add every rule and restrict the calling thread (needs NNP first)."""
    fd = sc.landlock_create_ruleset(ruleset.handled_fs, ruleset.handled_net, ruleset.scoped,
                                    ruleset.abi)
    try:
        for path, access in ruleset.paths:
            _add_path(fd, path, access)
        for port, access in ruleset.ports:
            sc.landlock_add_port_rule(fd, port, access)
        sc.landlock_restrict_self(fd)
    finally:
        os.close(fd)
