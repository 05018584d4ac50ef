"""Every libc / raw-syscall call the sandbox makes, in one private module.

Why one module: ctypes is where memory-safety and errno bugs live. Keeping every foreign call
here means one place declares argument types, one place reads errno (right after the call, via
`ctypes.CDLL(None, use_errno=True)` + `ctypes.get_errno()`, never `os.errno` of some later call)
and one place turns failures into `OSError`. The rest of the package calls typed Python functions.

Calls with a glibc wrapper (mount, umount2, unshare, setns, sethostname, prctl, capset) use it;
calls without one (pivot_root, landlock_*) go through `syscall(2)` with the number for the running
architecture (x86_64 or aarch64, detected by `platform.machine()`).

Nothing here logs or allocates much: these functions run in a freshly forked worker before it is
confined.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import socket
import struct

_libc = ctypes.CDLL(None, use_errno=True)

# --- syscall numbers -------------------------------------------------------------------------

_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "pivot_root": 155, "clone": 56, "unshare": 272, "setns": 308, "mount": 165,
        "umount2": 166, "sethostname": 170, "capget": 125, "capset": 126, "prctl": 157,
        "close_range": 436, "landlock_create_ruleset": 444, "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
    "aarch64": {
        "pivot_root": 41, "clone": 220, "unshare": 97, "setns": 268, "mount": 40,
        "umount2": 39, "sethostname": 161, "capget": 90, "capset": 91, "prctl": 167,
        "close_range": 436, "landlock_create_ruleset": 444, "landlock_add_rule": 445,
        "landlock_restrict_self": 446,
    },
}
_MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                       platform.machine().lower())
NR: dict[str, int] = _SYSCALLS.get(_MACHINE, {})

# --- constants -------------------------------------------------------------------------------

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

PR_SET_PDEATHSIG = 1
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
