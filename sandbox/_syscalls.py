"""Every libc / raw-syscall call the sandbox makes, in one private module.

Why one module: ctypes is where memory-safety and errno bugs live. Keeping every foreign call
here means one place declares argument types, one place reads errno (right after the call, via
`ctypes.CDLL(None, use_errno=True)` + `ctypes.get_errno()`, never `os.errno` of some later call)
and one place turns failures into `OSError`. The rest of the package calls typed Python functions.

Calls with a glibc wrapper (mount, umount2, unshare, setns, sethostname, prctl, capset) use it;
calls without one (pivot_root, landlock_*, open_tree, mount_setattr, move_mount) go through
`syscall(2)` with the number for the running architecture (x86_64 or aarch64, detected by
`platform.machine()`; the new mount API has the same numbers on both).

Nothing here logs or allocates much: these functions run in a freshly forked worker before it is
confined.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import signal
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# --- syscall numbers -------------------------------------------------------------------------

_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "pivot_root": 155, "clone": 56, "unshare": 272, "setns": 308, "mount": 165,
        "umount2": 166, "sethostname": 170, "capget": 125, "capset": 126, "prctl": 157,
        "close_range": 436, "landlock_create_ruleset": 444, "landlock_add_rule": 445,
        "landlock_restrict_self": 446, "open_tree": 428, "move_mount": 429,
        "mount_setattr": 442, "openat2": 437, "setfsuid": 122, "setfsgid": 123,
        "setgroups": 116,
    },
    "aarch64": {
        "pivot_root": 41, "clone": 220, "unshare": 97, "setns": 268, "mount": 40,
        "umount2": 39, "sethostname": 161, "capget": 90, "capset": 91, "prctl": 167,
        "close_range": 436, "landlock_create_ruleset": 444, "landlock_add_rule": 445,
        "landlock_restrict_self": 446, "open_tree": 428, "move_mount": 429,
        "mount_setattr": 442, "openat2": 437, "setfsuid": 151, "setfsgid": 152,
        "setgroups": 159,
    },
}
_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                       platform.machine().lower())
NR: dict[str, int] = _SYSCALLS.get(_MACHINE, {})

# --- constants -------------------------------------------------------------------------------

CLONE_VM = 0x00000100
CLONE_VFORK = 0x00004000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# the new mount API (Linux >= 5.2; mount_setattr and idmapped mounts >= 5.12)
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_IDMAP = 0x00100000
_MOUNT_ATTR_SIZE_VER0 = 32
_WALL = 0x40000000  # waitpid: also children whose exit signal is not SIGCHLD

# statfs f_type of filesystems worth naming in errors (linux/magic.h)
FS_NAMES = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs",
            0x6969: "nfs", 0x65735546: "fuse", 0x794C7630: "overlayfs", 0x2FC12FC1: "zfs",
            0x01021997: "9p", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x4D44: "vfat",
            0x5346544E: "ntfs", 0x2011BAB0: "exfat", 0xF2F52010: "f2fs", 0x73717368: "squashfs",
            0xCA451A4E: "bcachefs", 0x858458F6: "ramfs"}

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# securebits: root gets no implicit capabilities, keep-caps and ambient raising stay off.
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

# --- prototypes ------------------------------------------------------------------------------

_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p)
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.unshare.restype = ctypes.c_int
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
_libc.setns.restype = ctypes.c_int
_libc.sethostname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_libc.sethostname.restype = ctypes.c_int
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)
_libc.prctl.restype = ctypes.c_int
_libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
_libc.capset.restype = ctypes.c_int
_libc.mknod.argtypes = (ctypes.c_char_p, ctypes.c_uint, ctypes.c_ulong)
_libc.mknod.restype = ctypes.c_int
_libc.clone.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
_libc.clone.restype = ctypes.c_int
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
_libc.fstatfs.restype = ctypes.c_int


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


assert ctypes.sizeof(_MountAttr) == _MOUNT_ATTR_SIZE_VER0

# The children of `idmap_userns` only run glibc's `_exit` (a few words of stack; the rest is
# room for a signal handler, should a process-group signal reach one). Two stacks allocated at
# import (inherited by every fork), more on demand; each is busy until its child is reaped.
_CHILD_STACK_SIZE = 16 * 1024
_exit_fn = ctypes.cast(_libc._exit, ctypes.c_void_p)
_free_stacks = [ctypes.create_string_buffer(_CHILD_STACK_SIZE) for _ in range(2)]
_userns_helpers: list[tuple[int, ctypes.Array[ctypes.c_char]]] = []
_statfs_buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64/aarch64


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _fail(what: str, path: str | None = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", path)


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        raise _fail(what, path)
    return ret


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _syscall(name: str, *args: int | ctypes.c_void_p | bytes | None) -> int:
    nr = NR.get(name)
    if nr is None:
        raise OSError(38, f"{name}: unsupported architecture {platform.machine()}")
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return int(_libc.syscall(ctypes.c_long(nr), *cargs))


# --- namespaces and mounts ---------------------------------------------------------------------

def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall("pivot_root", _b(new_root), _b(put_old)), "pivot_root", new_root)


def open_tree(path: str, flags: int) -> int:
    """open_tree(AT_FDCWD, path, flags): with OPEN_TREE_CLONE, an fd holding a detached copy
    of the mount at `path` (not recursive), to configure and then attach with `move_mount`."""
    return _check(_syscall("open_tree", AT_FDCWD, _b(path), flags), "open_tree", path)


def open_tree_fd(fd: int, flags: int) -> int:
    """open_tree(fd, "", AT_EMPTY_PATH | flags): the same, for the directory `fd` refers to."""
    return _check(_syscall("open_tree", fd, b"", AT_EMPTY_PATH | flags), "open_tree")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    """openat2(dirfd, path, {flags, 0, resolve}) (Linux >= 5.6): RESOLVE_* restrict how the
    path is walked (no symlinks, never above `dirfd`), which plain openat cannot."""
    how = _OpenHow(flags, 0, resolve)
    return _check(_syscall("openat2", dirfd, _b(path), ctypes.addressof(how),
                           ctypes.sizeof(how)), "openat2", path)


def thread_fs_ids(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """Make the *calling thread* check file access as uid/gid/groups: raw setgroups, setfsgid,
    setfsuid (glibc's setgroups would change every thread of the process; the raw calls are
    per-thread). Leaving fsuid 0 drops the thread's file capabilities (CAP_DAC_OVERRIDE, ...).
    Only for a thread that ends right after its checks: nothing here changes back."""
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    _check(_syscall("setgroups", len(groups), ctypes.addressof(arr)), "setgroups")
    _syscall("setfsgid", gid)
    _syscall("setfsuid", uid)
    # both calls return the previous value: a repeat returns the value now in force
    if _syscall("setfsgid", gid) != gid or _syscall("setfsuid", uid) != uid:
        raise PermissionError(1, f"could not switch the file-system ids to {uid}:{gid}")


def mount_setattr(fd: int, attr_set: int, attr_clr: int = 0, userns_fd: int = 0) -> None:
    """mount_setattr(fd, "", AT_EMPTY_PATH, {attr_set, attr_clr, 0, userns_fd}) on the mount
    `fd` refers to (MOUNT_ATTR_IDMAP needs `userns_fd` and a detached mount)."""
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd)
    _check(_syscall("mount_setattr", fd, b"", AT_EMPTY_PATH, ctypes.addressof(attr),
                    ctypes.sizeof(attr)), "mount_setattr")


def mount_setattr_available() -> bool:
    """True when the kernel has mount_setattr (Linux >= 5.12) and nothing (seccomp of a
    container, an LSM) blocks it: an invalid call then fails with EINVAL, not ENOSYS/EPERM."""
    if "mount_setattr" not in NR:
        return False
    ret = _syscall("mount_setattr", -1, None, 0, None, 0)
    return ret < 0 and ctypes.get_errno() == 22


def move_mount(fd: int, target: str) -> None:
    """Attach the detached mount `fd` at `target` (move_mount with MOVE_MOUNT_F_EMPTY_PATH)."""
    _check(_syscall("move_mount", fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH),
           "move_mount", target)


def fs_type(fd: int) -> str:
    """The filesystem of `fd` (fstatfs f_type), by name when known, else its magic in hex."""
    if _libc.fstatfs(fd, _statfs_buf) < 0:
        return "an unknown filesystem"
    magic = ctypes.c_long.from_buffer(_statfs_buf).value & 0xFFFFFFFF
    return FS_NAMES.get(magic, f"filesystem type {magic:#x}")


def idmap_userns(uid_map: str, gid_map: str, proc: str = "/proc") -> int:
    """An fd of a new user namespace with the given uid_map/gid_map lines, for
    MOUNT_ATTR_IDMAP. Needs CAP_SETUID/CAP_SETGID/CAP_SETFCAP (root) for arbitrary maps.
    Call `reap_userns_helpers()` before running user code.

    How (~0.2 ms in a fresh worker): glibc clone(_exit, stack, CLONE_NEWUSER | CLONE_VM). The
    user namespace is created by clone itself, in our context, so the child need not have run
    for its uid_map/gid_map to be written and its ns/user opened; and a zombie keeps its
    credentials (hence its user namespace) until reaped, so it does not matter if it has
    already exited either.
    The child shares our memory and only runs libc's `_exit` on a stack of its own. It is not
    waited for here: waiting (or CLONE_VFORK) means sleeping until the scheduler runs the
    child, milliseconds on a busy host; `reap_userns_helpers` does it later, when it has long
    exited. No copy of the address space (an os.fork of a worker with numpy loaded costs
    ~3 ms), no Python in the child, no pipe handshake. Exit signal 0: no SIGCHLD reaches the
    caller's handlers, and only waitpid(pid, __WALL) reaps it (SIGCHLD ignored would auto-
    reap it: reset to the default while its /proc entries are in use).

    `proc` must be a procfs of the caller's PID namespace (clone returns the child's pid
    there): in the worker, the view's own /proc. setgroups is left alone: no process ever
    runs in this namespace, only the mount uses its maps."""
    stack = _free_stacks.pop() if _free_stacks else ctypes.create_string_buffer(
        _CHILD_STACK_SIZE)
    top = (ctypes.addressof(stack) + _CHILD_STACK_SIZE) & ~0xF
    ignored = signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        pid = _libc.clone(_exit_fn, top, CLONE_NEWUSER | CLONE_VM, None)
        if pid < 0:
            err = _fail("clone(CLONE_NEWUSER)")
            _free_stacks.append(stack)
            raise err
        _userns_helpers.append((pid, stack))  # the stack lives until the child is reaped
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            fd = os.open(f"{proc}/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        return os.open(f"{proc}/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        if ignored:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def reap_userns_helpers() -> None:
    """Reap the children of `idmap_userns` (normally exited long ago: no wait)."""
    while _userns_helpers:
        pid, stack = _userns_helpers.pop()
        try:
            os.waitpid(pid, _WALL)
        except ChildProcessError:  # auto-reaped (SIGCHLD ignored)
            pass
        _free_stacks.append(stack)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every fd in [first, last] (close_range(2), one syscall)."""
    _check(_syscall("close_range", first, last, 0), "close_range")


def mknod(path: str, mode: int, dev: int) -> None:
    _check(_libc.mknod(_b(path), mode, dev), "mknod", path)


def loopback_up() -> None:
    """Bring `lo` up in the current network namespace (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


# --- process attributes ----------------------------------------------------------------------

def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def get_pdeathsig() -> int:
    """The calling process's parent-death signal (0 = none)."""
    value = ctypes.c_int(0)
    _check(_libc.prctl(PR_GET_PDEATHSIG, ctypes.addressof(value), 0, 0, 0),
           "prctl(PR_GET_PDEATHSIG)")
    return value.value


def drop_bounding_set() -> int:
    """Drop every capability from the bounding set; returns how many were known to the kernel."""
    cap = 0
    while True:
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == 22:  # EINVAL: past CAP_LAST_CAP
                return cap
            raise _fail(f"PR_CAPBSET_DROP({cap})")
        cap += 1


def capset_empty() -> None:
    """Clear effective, permitted and inheritable capability sets of the calling thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


# --- seccomp ---------------------------------------------------------------------------------

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load_bpf(bpf: bytes) -> None:
    """Install a classic-BPF seccomp program (an array of 8-byte struct sock_filter)."""
    if not bpf or len(bpf) % 8:
        raise ValueError("seccomp: BPF program must be a non-empty array of 8-byte insns")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0),
           "PR_SET_SECCOMP")


# --- Landlock --------------------------------------------------------------------------------

class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


assert ctypes.sizeof(_PathBeneathAttr) == 12  # the kernel's struct is __attribute__((packed))


def landlock_abi() -> int:
    """The Landlock ABI version, or 0 when Landlock is unsupported or disabled."""
    ret = _syscall("landlock_create_ruleset", None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(0, ret)


def landlock_create_ruleset(fs: int, net: int, scoped: int, abi: int) -> int:
    words = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    return _check(_syscall("landlock_create_ruleset", ctypes.cast(words, ctypes.c_void_p).value,
                           size, 0), "landlock_create_ruleset")


def landlock_add_path_rule(ruleset_fd: int, parent_fd: int, access: int) -> None:
    attr = _PathBeneathAttr(access, parent_fd)
    _check(_syscall("landlock_add_rule", ruleset_fd, LANDLOCK_RULE_PATH_BENEATH,
                    ctypes.addressof(attr), 0), "landlock_add_rule(path)")


def landlock_add_port_rule(ruleset_fd: int, port: int, access: int) -> None:
    attr = _NetPortAttr(access, port)
    _check(_syscall("landlock_add_rule", ruleset_fd, LANDLOCK_RULE_NET_PORT,
                    ctypes.addressof(attr), 0), "landlock_add_rule(port)")


def landlock_restrict_self(ruleset_fd: int) -> None:
    _check(_syscall("landlock_restrict_self", ruleset_fd, 0), "landlock_restrict_self")
