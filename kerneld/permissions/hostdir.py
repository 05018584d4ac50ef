"""The host directory a kernel mounts (`filesystem.root`): opened once, checked, pinned.

Why: a request names a path, and the worker mounts it later, in another process. Anything
that resolves the path twice can be raced: swap a directory the caller owns for a symlink to
/etc between the check and the mount, and the kernel gets /etc read-write, idmapped to root.
So the path is resolved exactly once, here, into a handle:

- under `mount_roots` (the daemon), `openat2(mount_root, rel, RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: no symlink is followed anywhere below the
  mount root and nothing can lead out of it. Done *as the caller* (a short-lived thread whose
  fsuid/fsgid/groups are the caller's; see `sandbox._syscalls.thread_fs_ids`), so the kernel
  walks the path with the caller's rights, not root's;
- without `mount_roots` (embedded: the caller is the program itself), `open(O_PATH)` of the
  path, symlinks followed as the program asked.

Every check is made on that handle (`fstat`): a directory; neither world-writable nor sticky
(a directory shared by every user, such as /tmp, would be idmapped to its owner, root);
for a caller that is not root, owned by the caller (inside the mount the kernel acts as the
directory's owner: anything else would hand it another user's rights) with the owner's
read/search bits, and write for a read-write mount.

The worker then mounts *that* directory: `HostDir` carries the handle's (st_dev, st_ino); the
worker reopens the canonical path with RESOLVE_NO_SYMLINKS, proves it is the same inode and
clones the mount from its own handle (`sandbox.mounts`), failing closed otherwise. Both walks
refuse symlinks, so the only way to mount something else is to have it *be* the checked inode.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from kerneld.access import Caller
from kerneld.errors import InvalidArgument, PermissionDenied
from sandbox import _syscalls as sc

T = TypeVar("T")
_RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class HostDir:
    """The checked directory: its canonical path and the identity the worker must find."""

    path: str
    dev: int
    ino: int
    uid: int
    gid: int


def open_host_dir(path: str, *, roots: tuple[str, ...] | None, caller: Caller | None,
                  write: bool, label: str = "filesystem.root") -> HostDir:
    """Resolve `path` once into a handle and check it (see the module docstring).

    `roots` None: any directory (embedded). `caller` None: the program itself (no owner
    check). Raises PermissionDenied or InvalidArgument naming the path and the reason."""
    if caller is not None and caller.uid is None:
        raise PermissionDenied(f"{label}: a remote client has no identity on this host, so "
                               "no host directory can be mounted for it")
    if roots is None:
        fd = _open(lambda: os.open(path, _O_DIR), path, label)
        canonical = os.readlink(f"/proc/self/fd/{fd}")
    else:
        norm = os.path.normpath(path)
        if not os.path.isabs(norm):
            raise InvalidArgument(f"{label}: expected an absolute path, got {path!r}")
        root = _mount_root_of(norm, roots, label)
        rel = os.path.relpath(norm, root)
        as_caller = caller is not None and not caller.is_root

        def walk() -> int:
            rfd = os.open(root, _O_DIR)
            try:
                return sc.openat2(rfd, rel, _O_DIR, _RESOLVE)
            finally:
                os.close(rfd)

        fd = _open(_in_thread_as(caller, walk) if as_caller and caller else walk, norm, label)
        canonical = norm
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    _check(st, canonical, caller, write, label)
    return HostDir(canonical, st.st_dev, st.st_ino, st.st_uid, st.st_gid)


def _mount_root_of(path: str, roots: tuple[str, ...], label: str) -> str:
    for root in roots:
        real = os.path.realpath(root)  # the admin's own configuration: symlinks are theirs
        if path == real or path.startswith(real.rstrip("/") + "/"):
            return real
    raise PermissionDenied(f"{label} {path!r} is outside the directories this daemon lets "
                           f"kernels mount (mount_roots = {list(roots)}; name the directory "
                           "by its real path, without symbolic links)")


def _open(opener: Callable[[], int], path: str, label: str) -> int:
    try:
        return opener()
    except FileNotFoundError:
        raise InvalidArgument(f"{label}: no such directory: {path}") from None
    except NotADirectoryError:
        raise InvalidArgument(f"{label}: not a directory: {path}") from None
    except PermissionError:
        raise PermissionDenied(f"{label}: the caller may not reach {path}") from None
    except OSError as exc:
        if exc.errno in (40, 18):  # ELOOP: a symlink; EXDEV: ".." or a jump out of the root
            raise PermissionDenied(f"{label}: {path} goes through a symbolic link or out of "
                                   "its mount root; name the directory itself") from None
        raise InvalidArgument(f"{label}: cannot open {path}: {exc.strerror}") from None


def _in_thread_as(caller: Caller, fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` run in a new thread that checks file access as `caller`; the thread ends after."""

    def run() -> T:
        out: dict[str, object] = {}

        def body() -> None:
            try:
                assert caller.uid is not None and caller.gid is not None
                sc.thread_fs_ids(caller.uid, caller.gid, caller.groups)
                out["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 (re-raised in the calling thread)
                out["error"] = exc

        thread = threading.Thread(target=body, name="kerneld-as-caller")
        thread.start()
        thread.join()
        if "error" in out:
            raise out["error"]  # type: ignore[misc]
        return out["value"]  # type: ignore[return-value]

    return run


def _check(st: os.stat_result, path: str, caller: Caller | None, write: bool,
           label: str) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{label}: not a directory: {path}")
    if st.st_mode & (stat.S_IWOTH | stat.S_ISVTX):
        raise PermissionDenied(
            f"{label}: {path} is {'sticky' if st.st_mode & stat.S_ISVTX else 'world-writable'}"
            " (shared by every user of the host): mount a directory of your own")
    if caller is None or caller.is_root:
        return
    if st.st_uid != caller.uid:
        raise PermissionDenied(
            f"{label}: {path} belongs to uid {st.st_uid}, not to the caller (uid {caller.uid}):"
            " the kernel acts as the directory's owner inside the mount, so a caller may only"
            " mount a directory it owns")
    need = stat.S_IRUSR | stat.S_IXUSR | (stat.S_IWUSR if write else 0)
    if st.st_mode & need != need:
        what = "read and write" if write else "read"
        raise PermissionDenied(f"{label}: the caller may not {what} {path} (mode "
                               f"{stat.S_IMODE(st.st_mode):o}"
                               f"{'; or pass read_only' if write else ''})")
