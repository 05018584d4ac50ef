"""The worker's private mount view: a minimal root built from a tmpfs and a few bind mounts.

Why: Landlock can deny access but not hide existence (`stat` works on any path), and it cannot
subtract from a grant. A mount namespace whose root only contains what the policy grants removes
both the existence oracle and every host socket, device and config file at once.

Shape of the view (all in a private mount namespace, nothing propagates to the host):
  /                    tmpfs (read-only at the end), only directories, symlinks and mount points
  /usr /etc/ssl ...    policy.system_paths, read-only binds; merged-usr symlinks (/bin -> usr/bin,
                       /lib, /lib64, /sbin) and other symlinks are recreated, not bound
  <runtime prefix>     read-only bind
  read / write paths   read-only / read-write binds at the same path (read=ALL: every top-level
                       host directory except dev, proc, sys, run, tmp; other filesystems mounted
                       below them are not shown)
  policy.mounts        binds at their targets, idmapped (see below); policy.bind_files: files
  /tmp, /dev/shm       private tmpfs, size = limits.disk_bytes, nosuid, nodev, noexec (as every
                       writable mount, unless `ffi` or `run` covers it: see `_noexec`)
  /dev                 a directory of the root tmpfs (so read-only too) with the device nodes
                       null, zero, full, random, urandom (mknod as root, bind mounts of the
                       host nodes in a user namespace) and fd/stdin/stdout/stderr symlinks
  /proc                fresh procfs of the worker's PID namespace (only its own processes),
                       subset=pid (no /proc/sys, sysrq-trigger, kcore, net, ...); a full procfs
                       only when `sys` kinds are granted (then Landlock limits it to those
                       files). No hidepid: see `_private_mounts`.
  /sys                 absent unless `sys` grants cpus (CPU topology) or ALL (read-only sysfs)
  deny_read / deny_write  masked by an empty read-only tmpfs or file / re-bound read-only

How: mount a tmpfs over /tmp, `pivot_root` into it with the old root at /.old, build the view
with sources taken from /.old, then detach /.old. One pivot, ~15 mount calls, ~1 ms.

Idmapped `policy.mounts` (root zygote, `policy.uid` set): the host directory usually belongs to
the requesting user (often root, mode 0700), whom the kernel's unique uid cannot act as. So the
bind is made with the new mount API: `open_tree(OPEN_TREE_CLONE)` (a detached copy of the
source mount), `fstat` of that very tree for the owner (no window between stat and mount),
`mount_setattr(MOUNT_ATTR_IDMAP | flags)` with a throw-away user namespace whose uid_map reads
"OWNER KERNEL 1" (inside = the id on disk, outside = the id the caller sees: on-disk OWNER
appears as the kernel's id, and files the kernel creates are written as OWNER), then
`move_mount` to the target. Other on-disk uids appear as the overflow id: only their "other"
bits apply, and the VFS refuses to write, chmod, rename or delete inodes with an unmapped id
(EACCES/EOVERFLOW), so other users' files in the directory stay as they are. The gid_map is
"OWNER_GID KERNEL_GID 1" plus every other gid as itself (see `gid_map`). The user namespace
comes from `_syscalls.idmap_userns` (a clone(CLONE_NEWUSER | CLONE_VM) child that only runs
`_exit`; it needs the view's /proc, which `plan` mounts before any bind; `apply` reaps it).
Cost: ~0.4 ms per idmapped mount over a classic bind (measured in workers on a 2-CPU VM). A
directory already owned by the kernel's uid/gid gets the classic bind. A filesystem that
cannot be idmapped (EINVAL: ramfs, nfs, ...) fails the mount in strict mode ("idmapped mount
unsupported on ramfs ...") and falls back to the classic bind in best-effort mode. nosuid
stops setuid files *inside* the sandbox; seccomp refuses chmod with S_ISUID/S_ISGID so none is
left for the host either (writes clear those bits on files created with them).

`plan(policy)` is pure (unit-tested): the ordered operations. `build(ops, ...)` executes them.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, replace

from . import _syscalls as sc
from .policy import ALL, SYS_KINDS, Mount, Policy

OLD = "/.old"
MASK_FILE = "/.kerneld-masked"
HOSTROOT_SKIP = frozenset({"dev", "proc", "sys", "run", "tmp", "lost+found", ".old"})
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}
RO = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV
RW = sc.MS_NOSUID | sc.MS_NODEV
# MS_* per-mount flags → MOUNT_ATTR_* (mount_setattr)
_ATTRS = ((sc.MS_RDONLY, sc.MOUNT_ATTR_RDONLY), (sc.MS_NOSUID, sc.MOUNT_ATTR_NOSUID),
          (sc.MS_NODEV, sc.MOUNT_ATTR_NODEV), (sc.MS_NOEXEC, sc.MOUNT_ATTR_NOEXEC))


class MountError(Exception):
    """The view cannot be built as the policy asks (missing source, impossible mount point)."""


@dataclass(frozen=True)
class IdMap:
    """Idmapping of one bind: the kernel's `uid`/`gid` stand for the host ids `host_uid`/
    `host_gid` inside the mount (None: the owner of the source, read when mounting).
    `required`: strict policies fail when the filesystem cannot be idmapped; best-effort ones
    get a plain bind instead."""

    uid: int
    gid: int
    host_uid: int | None = None
    host_gid: int | None = None
    required: bool = True


@dataclass(frozen=True)
class Op:
    """One step: kind is bind | hostroot | tmpfs | dev | proc | sysfs | mask | readonly.
    (dev builds /dev and mounts the /dev/shm tmpfs described by `flags`/`data`.)

    bind: `source` (host path) at `target` with per-mount `flags`; optional binds whose source
    is missing are skipped, mandatory ones fail; `idmap` set: an idmapped bind (root only).
    tmpfs/proc: `data` are mount options.
    """

    kind: str
    target: str
    source: str = ""
    flags: int = 0
    data: str = ""
    optional: bool = True
    idmap: IdMap | None = None
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) the source must have


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


def _noexec(policy: Policy, path: str) -> int:
    """MS_NOEXEC for a *writable* mount unless something may run from it: neither execve nor
    mmap(PROT_EXEC) of files the kernel wrote itself (a dropped binary or .so), unless `ffi`
    (native code allowed) or `run` covers the path. Read-only mounts stay exec-able: they hold
    libraries to load, and execve is Landlock's (EXECUTE) and seccomp's business."""
    if policy.exec_paths == ALL or policy.ffi:
        return 0
    for e in policy.exec_paths:
        if e == path or e.startswith(path.rstrip("/") + "/") or path.startswith(e + "/"):
            return 0
    return sc.MS_NOEXEC


def mount_attrs(flags: int) -> int:
    """The MOUNT_ATTR_* bits for the MS_* per-mount `flags` of an Op."""
    return sum(attr for ms, attr in _ATTRS if flags & ms)


NO_ID = 0xFFFFFFFF  # (uid_t)-1: ids are 0 .. NO_ID - 1


def gid_map(host_gid: int, kernel_gid: int) -> str:
    """gid_map of an idmapped mount: `host_gid` on disk is the kernel's gid; every other gid is
    itself, except `kernel_gid` on disk (its outside id is taken), which stays unmapped.

    Why not only "host_gid kernel_gid 1": the VFS refuses every write to an inode with an
    unmapped uid *or* gid, so the owner's files with another group (owner:staff) would be
    read-only to the kernel. Mapping other gids to themselves grants nothing: the kernel has
    no supplementary groups, and chown/chgrp are not in its seccomp allowlist."""
    lines, start = [f"{host_gid} {kernel_gid} 1"], 0
    for skip in sorted({host_gid, kernel_gid}):
        if skip > start:
            lines.append(f"{start} {start} {skip - start}")
        start = skip + 1
    if start < NO_ID:
        lines.append(f"{start} {start} {NO_ID - start}")
    return "\n".join(lines) + "\n"


def _tmpfs_data(policy: Policy, mode: str) -> str:
    parts = [f"mode={mode}"]
    disk = policy.limits.disk_bytes
    if disk is not None:
        parts += [f"size={disk}", f"nr_inodes={max(1024, disk // 4096)}"]
    if policy.uid is not None:
        parts += [f"uid={policy.uid}", f"gid={policy.gid if policy.gid is not None else policy.uid}"]
    return ",".join(parts)


def _private_mounts(policy: Policy) -> list[Op]:
    mode = "0700" if policy.uid is not None else "1777"
    ops = [Op("tmpfs", "/tmp", flags=RW | _noexec(policy, "/tmp"),
              data=_tmpfs_data(policy, mode)),
           Op("dev", "/dev/shm", flags=RW | _noexec(policy, "/dev/shm"),
              data=_tmpfs_data(policy, mode))]
    full_proc = policy.sys == ALL or any(SYS_KINDS.get(k) for k in policy.sys)
    # No hidepid: the PID namespace holds only this kernel's processes, all of one uid, and
    # after the uid switch they are non-dumpable, which hidepid=invisible turns into "the
    # worker cannot see its own children" (ptrace_may_access fails on non-dumpable tasks).
    ops.append(Op("proc", "/proc", data="" if full_proc else "subset=pid"))
    if policy.sys == ALL:
        ops.append(Op("sysfs", "/sys"))
    elif "cpus" in policy.sys:
        ops.append(Op("bind", "/sys/devices/system/cpu", "/sys/devices/system/cpu", RO))
    return ops


def _idmap(policy: Policy, m: Mount) -> IdMap | None:
    """The idmapping of `policy.mounts` entry `m`: only when the worker switches uid."""
    if policy.uid is None:
        return None
    gid = policy.gid if policy.gid is not None else policy.uid
    if (m.map_uid, m.map_gid) == (policy.uid, gid):
        return None
    return IdMap(policy.uid, gid, m.map_uid, m.map_gid,
                 required=policy.enforcement == "strict")


def _user_binds(policy: Policy) -> list[Op]:
    binds: dict[str, Op] = {}
    hostroot = policy.read == ALL or policy.write == ALL
    if not hostroot:
        for p in policy.system_paths + (policy.runtime_prefix,):
            binds[p] = Op("bind", p, p, RO)
        for p in policy.read if policy.read != ALL else ():
            binds[p] = Op("bind", p, p, RO)
    if policy.write != ALL:
        for p in policy.write:
            binds[p] = Op("bind", p, p, RW | _noexec(policy, p))
    for m in policy.mounts:
        flags = RO if m.read_only else RW | _noexec(policy, m.target)
        binds[m.target] = Op("bind", m.target, m.source, flags, optional=False,
                             idmap=_idmap(policy, m), identity=m.identity)
    for src, inside in policy.bind_files:
        binds[inside] = Op("bind", inside, src, RO | sc.MS_NOEXEC, optional=False)
    if not hostroot and policy.exec_paths != ALL and policy.exec_paths:
        binds.update(_program_binds(policy))
    return sorted(binds.values(), key=lambda op: _depth(op.target))


BIN_DIRS = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


def _program_binds(policy: Policy) -> dict[str, Op]:
    """With `run` limited to a list, the program directories are noexec and each granted
    program is bound over itself, executable. Landlock must let every dynamic program map
    its ELF interpreter, and the interpreter run directly (`ld.so /usr/bin/uname`) maps any
    readable binary itself; noexec makes that mmap fail outside the granted programs."""
    assert policy.exec_paths != ALL
    dirs = (*BIN_DIRS, policy.runtime_prefix.rstrip("/") + "/bin")
    ops = {d: Op("bind", d, d, RO | sc.MS_NOEXEC) for d in dirs}
    for prog in policy.exec_paths:
        if any(prog == d or prog.startswith(d + "/") for d in dirs):
            ops[prog] = Op("bind", prog, prog, RO)
    return ops


def plan(policy: Policy) -> tuple[Op, ...]:
    """The ordered operations building `policy`'s view (pure; paths inside the view)."""
    ops = _private_mounts(policy)
    if policy.read == ALL or policy.write == ALL:
        ops.append(Op("hostroot", "/", flags=RW if policy.write == ALL else RO))
    ops += _user_binds(policy)
    ops += [Op("readonly", p) for p in policy.deny_write]
    ops += [Op("mask", p) for p in policy.deny_read]
    return tuple(ops)


# --- execution -------------------------------------------------------------------------------

class _View:
    """Executes ops inside the new root; remembers which filesystems are our own tmpfs."""

    def __init__(self, userns: bool, root_mode: bool) -> None:
        self.userns = userns
        self.mknod = root_mode and not userns
        self.can_idmap = root_mode and not userns
        self.procfs: str | None = None  # a procfs of our PID namespace, once mounted
        self.ours = {os.stat("/").st_dev}
        self.expanded: list[str] = []  # host directories covered by `expand`

    def mountpoint(self, path: str, is_dir: bool) -> None:
        if os.path.lexists(path):
            return
        parent = os.path.dirname(path)
        if not os.path.lexists(parent):
            self.mountpoint(parent, True)
        if os.stat(parent).st_dev not in self.ours:
            self.expand(parent)
        if is_dir:
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))

    def expand(self, path: str) -> None:
        """Make room for a mount point inside `path`, a host directory bound into the view
        (e.g. /home under `read = true`, for the mount point /home/kernel): a small tmpfs over
        it holding a bind of each of its entries, with the host bind's flags. The host
        directory is never written; the tmpfs is made read-only once the view is built."""
        f = os.statvfs(path).f_flag
        flags = sum(ms for st, ms in ((os.ST_RDONLY, sc.MS_RDONLY), (os.ST_NOSUID, sc.MS_NOSUID),
                                      (os.ST_NODEV, sc.MS_NODEV), (os.ST_NOEXEC, sc.MS_NOEXEC))
                    if f & st)
        names = sorted(os.listdir(path))
        sc.mount("tmpfs", path, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755,size=16k")
        self.ours.add(os.stat(path).st_dev)
        self.expanded.append(path)
        for name in names:
            self.bind(Op("bind", f"{path}/{name}", f"{path}/{name}", flags))

    def seal(self) -> None:
        """The tmpfs of `expand` read-only: they only had to hold mount points."""
        for path in self.expanded:
            sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)

    def remount(self, target: str, flags: int) -> None:
        if self.userns:  # flags locked by the parent namespace must be kept
            f = os.statvfs(target).f_flag
            flags |= (f & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_RDONLY))
        sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_BIND | flags)

    def tmpfs(self, target: str, flags: int, data: str) -> None:
        self.mountpoint(target, True)
        sc.mount("tmpfs", target, "tmpfs", flags, data)
        self.ours.add(os.stat(target).st_dev)

    def bind(self, op: Op) -> None:
        if op.idmap is not None and self.can_idmap:
            self.bind_idmapped(op, op.idmap)
            return
        if op.identity is not None:
            self.bind_pinned(op)
            return
        src = OLD + op.source
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            if op.optional:
                return
            raise MountError(f"mount source {op.source} does not exist") from None
        if stat.S_ISLNK(st.st_mode) and op.source == op.target:
            if not os.path.lexists(op.target):
                self.mountpoint(os.path.dirname(op.target), True)
                os.symlink(os.readlink(src), op.target)
            return
        self.mountpoint(op.target, os.path.isdir(src))
        try:
            sc.mount(src, op.target, None, sc.MS_BIND)
        except OSError:
            if not self.userns:
                raise
            sc.mount(src, op.target, None, sc.MS_BIND | sc.MS_REC)  # locked submounts
        self.remount(op.target, op.flags)

    def bind_idmapped(self, op: Op, idmap: IdMap) -> None:
        """open_tree (detached copy) → fstat owner → mount_setattr(idmap + flags) → move_mount.
        The classic bind when the owner already is the kernel's uid/gid (decided by a stat
        first: closing a detached tree unused costs an RCU grace period), or (best-effort
        only) when the idmapping cannot be made."""
        try:
            if op.identity is not None:
                pinned = self.pinned(op)
                try:
                    if self.owner(os.fstat(pinned), idmap) == (idmap.uid, idmap.gid):
                        self.bind(replace(op, idmap=None))
                        return
                    fd = sc.open_tree_fd(pinned, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
                finally:
                    os.close(pinned)
            else:
                if self.owner(os.stat(OLD + op.source), idmap) == (idmap.uid, idmap.gid):
                    self.bind(replace(op, idmap=None))
                    return
                fd = sc.open_tree(OLD + op.source, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
        except FileNotFoundError:
            if op.optional:
                return
            raise MountError(f"mount source {op.source} does not exist") from None
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            self.idmap_failed(op, idmap, f"idmapped mount unsupported: open_tree: {e.strerror}")
            return
        try:
            st = os.fstat(fd)  # the tree actually mounted decides (no stat/mount window)
            uid, gid = self.owner(st, idmap)
            if (uid, gid) == (idmap.uid, idmap.gid):
                why = ""
                sc.mount_setattr(fd, mount_attrs(op.flags))
            else:
                why = self.setattr_idmapped(fd, op, idmap, uid, gid)
            if not why:
                self.mountpoint(op.target, stat.S_ISDIR(st.st_mode))
                sc.move_mount(fd, op.target)
        finally:
            os.close(fd)
        if why:
            self.idmap_failed(op, idmap, why, owner=(uid, gid))

    def pinned(self, op: Op) -> int:
        """An O_PATH handle of `op.source`, reached from the old root without following any
        symlink and proven to be the directory the supervisor checked (`op.identity`)."""
        root = os.open(OLD, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = sc.openat2(root, op.source.lstrip("/") or ".",
                            os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                            sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS)
        except FileNotFoundError:
            raise MountError(f"mount source {op.source} does not exist") from None
        except OSError as e:
            raise MountError(f"mount source {op.source}: {e.strerror} (no symbolic link may "
                             "lead to it)") from None
        finally:
            os.close(root)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != tuple(op.identity or ()):
            os.close(fd)
            raise MountError(f"mount source {op.source} is not the directory that was checked "
                             "(it was replaced after the request): refusing to mount it")
        return fd

    def bind_pinned(self, op: Op) -> None:
        """Bind the checked directory from its handle: a detached clone of it (root), or the
        handle's /proc/self/fd link, which names that very inode (user namespace: no
        open_tree of the host's mounts there)."""
        fd = self.pinned(op)
        try:
            if not self.userns:
                tree = sc.open_tree_fd(fd, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
                try:
                    sc.mount_setattr(tree, mount_attrs(op.flags))
                    self.mountpoint(op.target, True)
                    sc.move_mount(tree, op.target)
                finally:
                    os.close(tree)
                return
            self.mountpoint(op.target, True)
            link = f"{self.procfs or OLD + '/proc'}/self/fd/{fd}"
            try:
                sc.mount(link, op.target, None, sc.MS_BIND)
            except OSError:
                sc.mount(link, op.target, None, sc.MS_BIND | sc.MS_REC)  # locked submounts
            self.remount(op.target, op.flags)
        finally:
            os.close(fd)

    @staticmethod
    def owner(st: os.stat_result, idmap: IdMap) -> tuple[int, int]:
        """The host ids the kernel's uid/gid stand for in this mount."""
        return (st.st_uid if idmap.host_uid is None else idmap.host_uid,
                st.st_gid if idmap.host_gid is None else idmap.host_gid)

    def setattr_idmapped(self, fd: int, op: Op, idmap: IdMap, uid: int, gid: int) -> str:
        """Idmap (and set the flags of) the detached mount `fd`; '' on success, else why not
        (nothing was applied then: mount_setattr is all or nothing)."""
        if self.procfs is None:  # plan() mounts /proc before every bind
            raise MountError("idmapped mount needs the view's /proc first (plan order)")
        try:
            ns = sc.idmap_userns(f"{uid} {idmap.uid} 1", gid_map(gid, idmap.gid), self.procfs)
            try:
                sc.mount_setattr(fd, mount_attrs(op.flags) | sc.MOUNT_ATTR_IDMAP, userns_fd=ns)
            finally:
                os.close(ns)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return f"idmapped mount unsupported on {sc.fs_type(fd)}"
            return f"idmapped mount failed: {e.strerror}"
        return ""

    def idmap_failed(self, op: Op, idmap: IdMap, why: str,
                     owner: tuple[int, int] | None = None) -> None:
        """Strict: fail closed. Best-effort: the classic bind."""
        if idmap.required:
            who = f" {owner[0]}:{owner[1]}" if owner else ""
            raise MountError(f"{why} (mount of {op.source}: the kernel's uid {idmap.uid} "
                             f"cannot act as its owner{who})")
        self.bind(replace(op, idmap=None))

    def hostroot(self, flags: int) -> None:
        for name in sorted(os.listdir(OLD)):
            if name not in HOSTROOT_SKIP:
                self.bind(Op("bind", "/" + name, "/" + name, flags))

    def dev(self, shm_flags: int, shm_data: str) -> None:
        # /dev is a directory of the root tmpfs (read-only at the end): one mount fewer.
        self.mountpoint("/dev", True)
        for name, (major, minor) in DEVICES.items():
            path = "/dev/" + name
            if self.mknod:
                sc.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
                os.chmod(path, 0o666)  # mknod applies the inherited umask
            else:
                self.bind(Op("bind", path, path, sc.MS_NOSUID | sc.MS_NOEXEC, optional=False))
        for name, target in DEV_LINKS.items():
            os.symlink(target, "/dev/" + name)
        self.tmpfs("/dev/shm", shm_flags, shm_data)

    def proc(self, data: str) -> None:
        self.mountpoint("/proc", True)
        flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
        try:
            sc.mount("proc", "/proc", "proc", flags, data or None)
        except OSError:  # kernels before 5.8: no subset=pid
            sc.mount("proc", "/proc", "proc", flags, None)
        self.procfs = "/proc"

    def sysfs(self) -> None:
        self.mountpoint("/sys", True)
        sc.mount("sysfs", "/sys", "sysfs", RO | sc.MS_NOEXEC)

    def mask(self, target: str) -> None:
        if not os.path.lexists(target):
            return
        if os.path.isdir(target):
            sc.mount("tmpfs", target, "tmpfs", RO | sc.MS_NOEXEC, "mode=000,size=4k,nr_inodes=1")
            return
        if not os.path.lexists(MASK_FILE):
            os.close(os.open(MASK_FILE, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o000))
        sc.mount(MASK_FILE, target, None, sc.MS_BIND)
        self.remount(target, RO | sc.MS_NOEXEC)

    def readonly(self, target: str) -> None:
        if os.path.lexists(target):
            sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
            self.remount(target, RO)

    def run(self, op: Op) -> None:
        if op.kind == "bind":
            self.bind(op)
        elif op.kind == "tmpfs":
            self.tmpfs(op.target, op.flags, op.data)
        elif op.kind == "hostroot":
            self.hostroot(op.flags)
        elif op.kind == "dev":
            self.dev(op.flags, op.data)
        elif op.kind == "proc":
            self.proc(op.data)
        elif op.kind == "sysfs":
            self.sysfs()
        elif op.kind == "mask":
            self.mask(op.target)
        elif op.kind == "readonly":
            self.readonly(op.target)


def _enter_staging_root() -> None:
    """Private propagation, tmpfs over /tmp, pivot into it with the old root at /.old."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    # Not nodev: the device nodes of /dev live here (the root is read-only at the end, and
    # nothing in the worker can mknod).
    sc.mount("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID, "mode=0755,size=1m,nr_inodes=4096")
    os.mkdir("/tmp" + OLD, 0o700)
    sc.pivot_root("/tmp", "/tmp" + OLD)
    os.chdir("/")


def build(ops: tuple[Op, ...], *, userns: bool, root: bool, workdir: str) -> None:
    """Build the view in the current (fresh, unshared) mount namespace and enter it."""
    _enter_staging_root()
    view = _View(userns, root)
    for op in ops:
        view.run(op)
    view.seal()
    sc.umount2(OLD, sc.MNT_DETACH)
    os.rmdir(OLD)
    sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID)  # dev: /dev/null
    os.chdir(workdir)
