"""Idmapped filesystem mounts (`policy.mounts`) in real children.

The host directory belongs to the requesting user (root here, or any other uid), typically with
mode 0700: the kernel's unique uid acts as that owner inside the mount only, and whatever it
creates lands on the host owned by the directory's owner. Every test has a positive control.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support import Driver, confined, result

from sandbox import _syscalls as sc
from sandbox import mounts

pytestmark = [pytest.mark.sandbox, *confined]

NO_CG = {"cpu_shares": None}
MP = "/home/kernel"
OVERFLOW = int(Path("/proc/sys/kernel/overflowuid").read_text())


def pol(uid: int, source: Path, enforcement: str = "strict", **mount: Any) -> dict[str, Any]:
    """A policy mounting `source` at /home/kernel (also the cwd); `mount`: more Mount fields."""
    return {"uid": uid, "gid": uid, "limits": NO_CG, "workdir": MP, "enforcement": enforcement,
            "mounts": [{"source": str(source), "target": MP, **mount}]}


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A fresh root-owned 0700 directory (tempfile.mkdtemp), like a requesting user's."""
    d = Path(tempfile.mkdtemp(prefix="kd-idmap-"))
    assert d.stat().st_mode & 0o777 == 0o700 and d.stat().st_uid == 0
    yield d
    shutil.rmtree(d, ignore_errors=True)


def owners(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_uid, p.lstat().st_gid)
            for p in sorted(root.rglob("*"))}


WORK = textwrap.dedent(f"""
    st = os.stat("{MP}")
    with open("out.txt", "w") as f:
        f.write("from the kernel")
    os.mkdir("sub")
    with open("sub/inner.txt", "w") as f:
        f.write("inner")
    result = {{"uid": os.getuid(), "cwd": os.getcwd(), "read": open("host.txt").read(),
               "root_owner": [st.st_uid, st.st_gid], "listing": sorted(os.listdir(".")),
               # the idmap helper child was reaped (waitpid(-1, WNOHANG | __WALL))
               "children": errno_of(os.waitpid, -1, os.WNOHANG | 0x40000000)}}
""")


def test_root_owned_0700_dir_is_usable_and_files_land_owned_by_root(
        driver: Driver, uid: int, host_dir: Path) -> None:
    (host_dir / "host.txt").write_text("from the host")
    (host_dir / "host.txt").chmod(0o600)
    res = result(driver.run(pol(uid, host_dir), WORK))
    assert res == {"uid": uid, "cwd": MP, "read": "from the host", "root_owner": [uid, uid],
                   "listing": ["host.txt", "out.txt", "sub"], "children": errno.ECHILD}
    assert (host_dir / "out.txt").read_text() == "from the kernel"
    assert (host_dir / "sub" / "inner.txt").read_text() == "inner"
    assert owners(host_dir) == {"host.txt": (0, 0), "out.txt": (0, 0), "sub": (0, 0),
                                "sub/inner.txt": (0, 0)}
    assert host_dir.stat().st_mode & 0o777 == 0o700


def test_without_idmapping_the_same_dir_is_closed(driver: Driver, uid: int,
                                                  host_dir: Path) -> None:
    """Control: mapping the kernel's uid to itself (no idmapping) leaves a root 0700 dir shut,
    so the access above is the idmapping's doing."""
    (host_dir / "host.txt").write_text("x")
    code = f"result = [errno_of(os.listdir, {MP!r}), os.stat({MP!r}).st_uid]"
    assert result(driver.run(pol(uid, host_dir, map_uid=uid, map_gid=uid), code)) == \
        [errno.EACCES, 0]


def test_dir_of_another_uid_gets_that_uid(driver: Driver, uid: int, host_dir: Path) -> None:
    (host_dir / "host.txt").write_text("theirs")
    os.chown(host_dir / "host.txt", 1234, 1234)
    (host_dir / "host.txt").chmod(0o600)
    os.chown(host_dir, 1234, 1234)
    res = result(driver.run(pol(uid, host_dir), WORK))
    assert res["read"] == "theirs" and res["root_owner"] == [uid, uid]
    assert res["children"] == errno.ECHILD
    assert owners(host_dir) == {"host.txt": (1234, 1234), "out.txt": (1234, 1234),
                                "sub": (1234, 1234), "sub/inner.txt": (1234, 1234)}


def test_explicit_map_ids(driver: Driver, uid: int, host_dir: Path) -> None:
    """`Mount.map_uid/map_gid` choose the host ids instead of the directory's owner; other
    gids keep their own number (the dir's group 1234 here)."""
    os.chown(host_dir, 1234, 1234)
    code = 'open("f", "w").write("x"); st = os.stat("."); result = [st.st_uid, st.st_gid]'
    res = result(driver.run(pol(uid, host_dir, map_uid=1234, map_gid=4321), code))
    assert res == [uid, 1234]
    assert owners(host_dir) == {"f": (1234, 4321)}


def test_read_only_mount(driver: Driver, uid: int, host_dir: Path) -> None:
    (host_dir / "host.txt").write_text("ro")
    (host_dir / "host.txt").chmod(0o600)
    code = textwrap.dedent("""
        result = {"read": open("host.txt").read(),
                  "new": errno_of(lambda: open("new.txt", "w")),
                  "old": errno_of(lambda: open("host.txt", "a")),
                  "mkdir": errno_of(os.mkdir, "d"), "chmod": errno_of(os.chmod, "host.txt", 0o644)}
    """)
    res = result(driver.run(pol(uid, host_dir, read_only=True), code))
    assert res == {"read": "ro", "new": errno.EROFS, "old": errno.EROFS, "mkdir": errno.EROFS,
                   "chmod": errno.EROFS}
    assert owners(host_dir) == {"host.txt": (0, 0)}
    assert result(driver.run(pol(uid, host_dir), code))["new"] == 0  # positive control


def test_no_chown_no_setid_no_exec_and_third_uids_keep_their_files(
        driver: Driver, uid: int, host_dir: Path) -> None:
    for name, mode in (("third.txt", 0o644), ("third_private.txt", 0o600), ("mine.txt", 0o600),
                       ("mine_staff.txt", 0o640)):
        (host_dir / name).write_text(name)
        (host_dir / name).chmod(mode)
    for name in ("third.txt", "third_private.txt"):
        os.chown(host_dir / name, 4321, 4321)
    os.chown(host_dir / "mine_staff.txt", 0, 50)  # the owner's, another group
    code = textwrap.dedent("""
        def create(name, mode):
            fd = os.open(name, os.O_CREAT | os.O_WRONLY, mode)
            os.write(fd, b"\\x7fELF" + bytes(60))
            os.close(fd)
        open("prog", "w").write("#!/bin/sh\\n")
        os.umask(0)
        third = os.stat("third.txt")
        result = {
            "create_setid": errno_of(create, "created_setid", 0o6755),
            "create_plain": errno_of(create, "created_plain", 0o755),
            "chown_root": errno_of(os.chown, "prog", 0, 0),
            "chown_other": errno_of(os.chown, "prog", 4321, -1),
            "chgrp_other": errno_of(os.chown, "prog", -1, 4321),
            "chown_self": errno_of(os.chown, "prog", os.getuid(), os.getgid()),
            "chmod_suid": errno_of(os.chmod, "prog", 0o4755),
            "chmod_sgid": errno_of(os.chmod, "prog", 0o2755),
            "fchmod_suid": errno_of(lambda: os.fchmod(os.open("prog", os.O_RDONLY), 0o4755)),
            "chmod_plain": errno_of(os.chmod, "prog", 0o755),
            "nosuid": bool(os.statvfs(".").f_flag & os.ST_NOSUID),
            "noexec": bool(os.statvfs(".").f_flag & os.ST_NOEXEC),
            "third_owner": [third.st_uid, third.st_gid],
            "third_read": open("third.txt").read(),
            "third_write": errno_of(lambda: open("third.txt", "a")),
            "third_private": errno_of(open, "third_private.txt"),
            "third_chmod": errno_of(os.chmod, "third.txt", 0o666),
            "third_rename": errno_of(os.rename, "third.txt", "moved.txt"),
            "mine_write": errno_of(lambda: open("mine.txt", "a").write("+")),
            "mine_staff": [os.stat("mine_staff.txt").st_gid,
                           errno_of(lambda: open("mine_staff.txt", "a").write("+"))],
        }
    """)
    res = result(driver.run(pol(uid, host_dir), code))
    assert res == {
        # seccomp has no chown family at all (the kernel could not give files away anyway:
        # no CAP_CHOWN, and ids outside the idmapping are refused)
        "chown_root": errno.EPERM, "chown_other": errno.EPERM, "chgrp_other": errno.EPERM,
        "chown_self": errno.EPERM,
        # seccomp refuses S_ISUID/S_ISGID in chmod; other modes work (positive control)
        "chmod_suid": errno.EPERM, "chmod_sgid": errno.EPERM, "fchmod_suid": errno.EPERM,
        # ... and in the mode of open(O_CREAT) (positive control: a plain mode works)
        "create_setid": errno.EPERM, "create_plain": 0,
        "chmod_plain": 0, "nosuid": True, "noexec": True,
        # a third uid's files: overflow uid (gids other than the owner's keep their number),
        # only "other" bits, and the VFS refuses to change or remove inodes whose owner the
        # idmapping cannot represent (EOVERFLOW)
        "third_owner": [OVERFLOW, 4321], "third_read": "third.txt",
        "third_write": errno.EACCES, "third_private": errno.EACCES,
        "third_chmod": errno.EOVERFLOW, "third_rename": errno.EOVERFLOW,
        # positive controls: the owner's files are writable, whatever their group
        "mine_write": 0, "mine_staff": [50, 0]}
    host = {p.name: p.lstat() for p in host_dir.iterdir()}
    assert (host["prog"].st_uid, host["prog"].st_gid) == (0, 0)
    assert "created_setid" not in host
    for name in ("prog", "created_plain"):
        assert not host[name].st_mode & (stat.S_ISUID | stat.S_ISGID), (name, host[name])
    assert (host["third.txt"].st_uid, host["third.txt"].st_mode & 0o777) == (4321, 0o644)
    assert (host_dir / "mine.txt").read_text() == "mine.txt+"


def test_setuid_root_file_of_the_host_grants_nothing_inside(driver: Driver, uid: int,
                                                            host_dir: Path) -> None:
    """A setuid-root program already in the directory runs with the kernel's own ids (`run`
    granted on the mount so it may execute at all). Three layers each suffice: nosuid on the
    mount, no_new_privs, and the idmapping (inside, the file belongs to the kernel's uid)."""
    shutil.copy("/usr/bin/id", host_dir / "suid-id")
    os.chmod(host_dir / "suid-id", 0o4755)
    code = textwrap.dedent("""
        out = subprocess.run(["./suid-id", "-u"], capture_output=True, text=True)
        result = [out.returncode, out.stdout.strip()]
    """)
    policy = {**pol(uid, host_dir), "exec_paths": [MP]}
    assert result(driver.run(policy, code)) == [0, str(uid)]


@pytest.fixture
def ramfs_dir() -> Iterator[Path]:
    """A host directory on ramfs, which cannot be idmapped."""
    d = Path(tempfile.mkdtemp(prefix="kd-ramfs-"))
    sc.mount("ramfs", str(d), "ramfs", 0, "mode=0700")
    try:
        (d / "host.txt").write_text("ram")
        yield d
    finally:
        sc.umount2(str(d), sc.MNT_DETACH)
        d.rmdir()


def test_unsupported_filesystem_fails_closed_in_strict_mode(driver: Driver, uid: int,
                                                            ramfs_dir: Path) -> None:
    strict = driver.run(pol(uid, ramfs_dir), "result = 1")["child"]
    assert strict["ok"] is False and strict["stage"] == "namespaces", strict
    assert "idmapped mount unsupported on ramfs" in strict["message"], strict
    code = f"result = [os.stat({MP!r}).st_uid, errno_of(os.listdir, {MP!r})]"
    best = result(driver.run(pol(uid, ramfs_dir, enforcement="best-effort"), code))
    assert best == [0, errno.EACCES]  # a plain bind: the kernel is not the owner there


@pytest.mark.parametrize("sigchld", [signal.SIG_DFL, signal.SIG_IGN])
def test_idmap_userns_helper(sigchld: Any) -> None:
    """`idmap_userns` (here in the test process, as root): a user namespace fd with the maps
    asked for, a helper child reaped by `reap_userns_helpers`, SIGCHLD disposition kept."""
    old = signal.signal(signal.SIGCHLD, sigchld)
    try:
        fds = [sc.idmap_userns("0 200000 1", mounts.gid_map(0, 200000)) for _ in range(3)]
        pids = [pid for pid, _ in sc._userns_helpers]
        assert len(pids) == 3 and signal.getsignal(signal.SIGCHLD) == sigchld
        for fd in fds:
            assert os.readlink(f"/proc/self/fd/{fd}").startswith("user:[")
        assert len({os.fstat(fd).st_ino for fd in fds}) == 3  # three distinct namespaces
        if sigchld == signal.SIG_DFL:  # (ignored: an exited helper may be auto-reaped by now)
            proc = Path(f"/proc/{pids[0]}")
            assert (proc / "uid_map").read_text().split() == ["0", "200000", "1"]
            assert (proc / "gid_map").read_text().split()[:3] == ["0", "200000", "1"]
        sc.reap_userns_helpers()
        assert sc._userns_helpers == [] and len(sc._free_stacks) >= 3
        for pid in pids:  # reaped, not left as zombies
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG | 0x40000000)
        for fd in fds:
            os.close(fd)
    finally:
        signal.signal(signal.SIGCHLD, old)
