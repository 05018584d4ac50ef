"""Filesystem confinement in real children: mount view + Landlock, each with a positive control."""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _support import Driver, confined, result

pytestmark = [pytest.mark.sandbox, *confined]

NO_CG = {"cpu_shares": None}


def pol(uid: int, **kw: Any) -> dict[str, Any]:
    return {"uid": uid, "gid": uid, "limits": NO_CG, **kw}


def world_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.parents]:
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o755)
    return path


HIDDEN = ["/root", "/home", "/var", "/run", "/work", "/boot", "/srv", "/etc/shadow",
          "/etc/passwd", "/etc/hostname", "/dev/mem", "/dev/kmsg", "/dev/sda", "/sys",
          "/proc/sys", "/proc/sysrq-trigger", "/proc/kcore", "/proc/net", "/proc/1/root/root"]


def test_minimal_root_hides_host_paths(driver: Driver, uid: int) -> None:
    code = f"result = {{p: errno_of(os.stat, p) for p in {HIDDEN!r}}}"
    confined_res = result(driver.run(pol(uid), code))
    assert confined_res == {p: errno.ENOENT for p in HIDDEN}
    host = result(driver.run(pol(uid), code, unconfined=True))
    for p in ("/root", "/etc/passwd", "/sys", "/proc/sys", "/dev/kmsg", "/run"):
        assert host[p] == 0, p


def test_landlock_denies_paths_of_the_view_outside_the_grants(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        result = {"root": errno_of(os.listdir, "/"), "etc": errno_of(os.listdir, "/etc"),
                  "dev": errno_of(os.listdir, "/dev"),
                  "ssl": errno_of(os.listdir, "/etc/ssl"),
                  "usr": errno_of(open, "/usr/lib/os-release"),
                  "runtime": errno_of(os.listdir, "/opt/kerneld/runtime/bin")}
    """)
    r = result(driver.run(pol(uid), code))
    assert r == {"root": errno.EACCES, "etc": errno.EACCES, "dev": errno.EACCES,
                 "ssl": 0, "usr": 0, "runtime": 0}
    r_all = result(driver.run(pol(uid, read="*"), code))
    assert r_all["root"] == 0 and r_all["etc"] == 0  # positive control: granted → allowed


def test_read_grant_and_deny_read(driver: Driver, uid: int, tmp_path: Path) -> None:
    data = world_dir(tmp_path / "data")
    (data / "file.txt").write_text("hello")
    (data / "file.txt").chmod(0o644)
    secret = world_dir(data / "secret")
    (secret / "key").write_text("k")
    (secret / "key").chmod(0o644)
    code = textwrap.dedent(f"""
        def read(p):
            try:
                return open(p).read()
            except OSError as e:
                return e.errno
        result = [read({str(data / "file.txt")!r}), read({str(secret / "key")!r})]
    """)
    assert result(driver.run(pol(uid, read=[str(data)]), code)) == ["hello", "k"]
    denied = result(driver.run(pol(uid, read=[str(data)], deny_read=[str(secret)]), code))
    assert denied[0] == "hello" and denied[1] in (errno.EACCES, errno.ENOENT)
    assert result(driver.run(pol(uid), code)) == [errno.ENOENT, errno.ENOENT]
    masked_file = result(driver.run(pol(uid, read=[str(data)],
                                        deny_read=[str(data / "file.txt")]), code))
    assert masked_file == [errno.EACCES, "k"]


def test_deny_write_carves_out_of_a_write_grant(driver: Driver, uid: int,
                                                tmp_path: Path) -> None:
    w = world_dir(tmp_path / "w")
    ro = world_dir(w / "ro")
    os.chmod(w, 0o777)
    os.chmod(ro, 0o777)
    (ro / "keep.txt").write_text("keep")
    (ro / "keep.txt").chmod(0o666)
    code = textwrap.dedent(f"""
        result = {{"w": errno_of(lambda: open({str(w / "a")!r}, "w").write("a")),
                   "ro_new": errno_of(lambda: open({str(ro / "b")!r}, "w").write("b")),
                   "ro_old": errno_of(lambda: open({str(ro / "keep.txt")!r}, "w")),
                   "read": open({str(ro / "keep.txt")!r}).read()}}
    """)
    res = result(driver.run(pol(uid, write=[str(w)], deny_write=[str(ro)]), code))
    assert res == {"w": 0, "ro_new": errno.EROFS, "ro_old": errno.EROFS, "read": "keep"}
    assert (ro / "keep.txt").read_text() == "keep" and not (ro / "b").exists()
    allowed = result(driver.run(pol(uid, write=[str(w)]), code))
    assert allowed["ro_new"] == 0                                  # positive control


def test_write_only_where_granted(driver: Driver, uid: int, tmp_path: Path) -> None:
    w = world_dir(tmp_path / "w")
    os.chmod(w, 0o777)
    r = world_dir(tmp_path / "r")
    marker = f"kd-host-tmp-{uid}"
    code = textwrap.dedent(f"""
        def write(p):
            try:
                with open(p, "w") as f:
                    f.write("x")
                return 0
            except OSError as e:
                return e.errno
        result = {{"w": write({str(w / "out.txt")!r}), "r": write({str(r / "new")!r}),
                   "usr": write("/usr/evil"), "runtime": write("/opt/kerneld/runtime/evil"),
                   "root": write("/evil"), "tmp": write("/tmp/{marker}"),
                   "shm": write("/dev/shm/x"), "null": write("/dev/null")}}
    """)
    res = result(driver.run(pol(uid, write=[str(w)], read=[str(r)]), code))
    assert res["w"] == 0 and res["tmp"] == 0 and res["shm"] == 0 and res["null"] == 0
    for k in ("r", "usr", "runtime", "root"):
        assert res[k] in (errno.EROFS, errno.EACCES), (k, res)
    assert (w / "out.txt").read_text() == "x"          # the grant reached the host dir
    assert not (r / "new").exists()
    assert not Path("/usr/evil").exists() and not Path(f"/tmp/{marker}").exists()  # private /tmp


def test_mount_traversal_and_symlinks_stay_inside(driver: Driver, uid: int,
                                                   tmp_path: Path) -> None:
    home = world_dir(tmp_path / "home")
    os.chmod(home, 0o777)
    code = textwrap.dedent("""
        os.symlink("/etc/passwd", "/home/kernel/link")
        result = {"cwd": os.getcwd(),
                  "dotdot": errno_of(open, "/home/kernel/../../etc/passwd"),
                  "link": errno_of(open, "/home/kernel/link"),
                  "proc_root": errno_of(open, "/proc/1/root/etc/passwd"),
                  "write": errno_of(lambda: open("/home/kernel/f", "w").write("y"))}
    """)
    res = result(driver.run(pol(uid, mounts=[{"source": str(home), "target": "/home/kernel"}],
                                workdir="/home/kernel"), code))
    assert res == {"cwd": "/home/kernel", "dotdot": errno.ENOENT, "link": errno.ENOENT,
                   "proc_root": errno.ENOENT, "write": 0}
    assert (home / "f").read_text() == "y" and os.readlink(home / "link") == "/etc/passwd"


def test_private_tmp_is_size_capped(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        def fill(path, total):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                left = total
                while left > 0:
                    left -= os.write(fd, b"x" * min(left, 65536))
                return 0
            except OSError as e:
                return e.errno
            finally:
                os.close(fd)
        n, err = 0, 0
        while n < 100000:
            try:
                os.close(os.open(f"/tmp/many{n}", os.O_CREAT | os.O_WRONLY, 0o600))
                n += 1
            except OSError as e:
                err = e.errno
                break
        for i in range(n):
            os.unlink(f"/tmp/many{i}")
        result = {"small": fill("/tmp/small", 256 * 1024), "big": fill("/tmp/big", 4 << 20),
                  "files": n, "files_err": err}
    """)
    limits = {**NO_CG, "disk_bytes": 2 << 20, "file_size_bytes": 64 << 20}
    res = result(driver.run(pol(uid, limits=limits), code))
    assert res["small"] == 0 and res["big"] == errno.ENOSPC
    assert res["files_err"] == errno.ENOSPC and res["files"] < 1024


def test_rlimit_fsize_gives_efbig(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        fd = os.open("/tmp/f", os.O_WRONLY | os.O_CREAT, 0o600)
        written, err = 0, 0
        try:
            while written < 1 << 20:
                written += os.write(fd, b"y" * 4096)
        except OSError as e:
            err = e.errno
        result = [written, err]
    """)
    limits = {**NO_CG, "file_size_bytes": 100_000, "disk_bytes": 8 << 20}
    assert result(driver.run(pol(uid, limits=limits), code)) == [100_000, errno.EFBIG]
    bigger = {**limits, "file_size_bytes": 4 << 20}
    assert result(driver.run(pol(uid, limits=bigger), code)) == [1 << 20, 0]


def test_devices_are_minimal(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        import stat as st
        with open("/dev/urandom", "rb") as f:
            rnd = len(f.read(16))
        with open("/dev/null", "wb") as f:
            f.write(b"x")
        result = {"urandom": rnd, "zero": open("/dev/zero", "rb").read(4) == bytes(4),
                  "mknod_chr": errno_of(os.mknod, "/tmp/mem", 0o600 | st.S_IFCHR,
                                        os.makedev(1, 1)),
                  "mkfifo": errno_of(os.mkfifo, "/tmp/fifo"),
                  "shm": os.statvfs("/dev/shm").f_blocks > 0,
                  "dev_ro": errno_of(os.mkdir, "/dev/x")}
    """)
    res = result(driver.run(pol(uid), code))
    assert res == {"urandom": 16, "zero": True, "mknod_chr": errno.EPERM,
                   "mkfifo": errno.EPERM, "shm": True, "dev_ro": errno.EROFS}


def test_host_root_view_for_read_all(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        result = {"passwd": errno_of(open, "/etc/passwd"), "shadow": errno_of(open, "/etc/shadow"),
                  "run": errno_of(os.listdir, "/run"), "proc": sorted(os.listdir("/proc"))[:1],
                  "write": errno_of(open, "/etc/evil", "w")}
    """)
    res = result(driver.run(pol(uid, read="*"), code))
    assert res["passwd"] == 0 and res["shadow"] == errno.EACCES
    assert res["run"] == errno.ENOENT and res["proc"] == ["1"]  # no host /run, /proc, /sys
    assert res["write"] in (errno.EROFS, errno.EACCES)


def test_sys_grants_expose_only_their_files(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        files = ["/proc/loadavg", "/proc/meminfo", "/proc/cpuinfo", "/proc/sys/kernel/hostname",
                 "/proc/kcore", "/proc/self/status", "/proc/1/status", "/proc/self/net/dev",
                 "/sys/devices/system/cpu/online", "/sys/class/net/lo/address"]
        result = {f: errno_of(lambda: open(f, "rb").read(1)) for f in files}
        result["hostname"] = socket.gethostname()
    """)
    granted = result(driver.run(pol(uid, sys=["loadavg", "cpus", "hostname"]), code))
    assert granted.pop("/proc/kcore") in (errno.EACCES, errno.ENOENT)  # absent on some kernels
    assert granted == {"/proc/loadavg": 0, "/proc/meminfo": errno.EACCES, "/proc/cpuinfo": 0,
                       "/proc/sys/kernel/hostname": errno.EACCES,
                       "/proc/self/status": 0, "/proc/1/status": 0,
                       "/proc/self/net/dev": 0, "/sys/devices/system/cpu/online": 0,
                       "/sys/class/net/lo/address": errno.ENOENT,
                       "hostname": os.uname().nodename}
    default = result(driver.run(pol(uid), code))
    assert default["/proc/loadavg"] == errno.ENOENT and default["hostname"] == "kernel"
    assert default["/sys/devices/system/cpu/online"] == errno.ENOENT
    assert default["/proc/self/status"] == 0
