"""Attack class: FILESYSTEM. Host files, traversal, symlinks, /proc magic links, handles,
device nodes, mounts, writes to the host and the runtime — each refused with the exact errno
under the default profile, and shown to work under a profile that grants it (or, where no
grant can exist, in an unconfined process on the host)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil
import pytest
from _attack_support import HOST, Case, Err, Not, Ok, Outcome, ids, processes_of_uid, with_child

pytestmark = pytest.mark.asyncio(loop_scope="session")

RUNTIME_SITE = "/opt/kerneld/runtime/lib/python3.11/site-packages"


def targets(lab) -> dict:
    t = lab.t
    return {"secret": t.secret, "read_dir": t.read_dir, "write_dir": t.write_dir,
            "victim": t.victim, "config": os.path.join(t.config_dir, "kerneld.toml"),
            "root": t.root, "tag": os.urandom(4).hex(), "site": RUNTIME_SITE}


def _nothing_new_in_write_dir(lab, out: Outcome, params: dict) -> None:
    names = sorted(os.listdir(lab.t.write_dir))
    assert names == ["victim.txt"], f"host write dir changed: {names}"
    assert Path(lab.t.victim).read_text() == "original"


def _host_sees_pwn_file(lab, out: Outcome, params: dict) -> None:
    path = os.path.join(lab.t.write_dir, "pwn-" + params["tag"])
    assert Path(path).read_text() == "x", "the granted write did not reach the host"
    os.unlink(path)


def _host_sees_truncation(lab, out: Outcome, params: dict) -> None:
    assert Path(lab.t.victim).read_text() == "", "the granted truncate did not reach the host"
    Path(lab.t.victim).write_text("original")


def _host_tmp_untouched(lab, out: Outcome, params: dict) -> None:
    assert out.ok, out
    assert not os.path.lexists(out.value), f"{out.value} appeared on the host"


def _host_sees_control_file(lab, out: Outcome, params: dict) -> None:
    assert Path(out.value).read_text() == "x"
    os.unlink(out.value)




CASES = [
    # --- reading host files -------------------------------------------------------------------
    Case("read-host-file-by-path", "return open(P['secret']).read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("host secret"), desc="reads the secret"), params=targets),
    Case("read-etc-shadow", "return open('/etc/shadow').read(5)",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: len(v) == 5)),
    Case("read-etc-passwd", "return open('/etc/passwd').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("root:"))),
    Case("list-root-home-ssh", "return os.listdir('/root')",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: isinstance(v, list))),
    Case("read-daemon-config", "return open(P['config']).read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: "token" in v), params=targets),
    Case("read-kerneld-checkout", "return sorted(os.listdir('/work/main'))[:3]",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: len(v) == 3)),
    Case("stat-existence-oracle", "return os.stat(P['secret']).st_size",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v > 0), params=targets),
    Case("stat-oracle-for-host-dirs",
         "return [os.path.lexists(p) for p in ('/root', '/home', '/var', '/srv', '/boot',"
         " '/etc/hostname', '/run/kerneld')]",
         Ok(value=[False] * 7), HOST,
         Ok(pred=lambda v: v[0] and v[2] and v[5], desc="the host paths exist")),
    Case("dotdot-from-scratch", "return open('/tmp/../../../etc/passwd').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("root:"))),
    Case("dotdot-from-runtime",
         "return open('/opt/kerneld/runtime/../../../../etc/passwd').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("root:"))),
    Case("symlink-in-scratch-to-etc-passwd",
         """
         link = f"/tmp/l-{P['tag']}"
         os.symlink('/etc/passwd', link)
         return open(link).read()
         """, Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("root:")), params=targets),
    Case("symlink-swap-race",
         """
         import threading
         own = f"/tmp/own-{P['tag']}"
         open(own, 'w').write('mine')
         link = f"/tmp/race-{P['tag']}"
         stop = False
         def flip():
             n = 0
             while not stop:
                 tmp = f"{link}.{n % 2}"
                 os.symlink(P['secret'] if n % 2 else own, tmp)
                 os.replace(tmp, link)
                 n += 1
         t = threading.Thread(target=flip)
         os.symlink(own, link)
         t.start()
         seen = {"mine": 0, "secret": 0, "error": 0}
         deadline = time.monotonic() + 0.4
         try:
             while time.monotonic() < deadline:
                 try:
                     text = open(link).read()
                 except OSError:
                     seen["error"] += 1
                     continue
                 seen["secret" if text.startswith("host secret") else "mine"] += 1
         finally:
             stop = True
             t.join()
         return seen
         """, Ok(pred=lambda v: v["secret"] == 0 and v["mine"] > 0 and v["error"] > 0,
                 desc="never the secret"),
         "ctl-read", Ok(pred=lambda v: v["secret"] > 0, desc="the race reaches the secret"),
         params=targets),
    Case("proc-self-root-to-host-file",
         "return open('/proc/self/root' + P['secret']).read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("host secret")), params=targets),
    Case("proc-self-root-listing", "return sorted(os.listdir('/proc/self/root'))",
         Err("EACCES", "PermissionError"), "trusted",
         Ok(pred=lambda v: "usr" in v and "etc" in v)),
    # /proc/1 is the kernel's own init; on the host the control reads a child it started
    # (the host's PID 1 belongs to the VM's machinery and is left alone).
    Case("proc-1-root", "return sorted(os.listdir('/proc/1/root'))",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "etc" in v),
         control_body=with_child("sorted(os.listdir(f'/proc/{child}/root'))")),
    Case("proc-child-root", with_child("sorted(os.listdir(f'/proc/{child}/root'))"),
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "etc" in v)),
    Case("proc-1-cwd", "return os.readlink('/proc/1/cwd')",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: v.startswith("/")),
         control_body=with_child("os.readlink(f'/proc/{child}/cwd')")),
    Case("openat2-resolve-beneath",
         """
         import struct
         root = os.open('/', os.O_PATH)
         how = ctypes.create_string_buffer(struct.pack('QQQ', os.O_RDONLY, 0, 0x08), 24)
         try:
             fd = syscall(437, root, b'etc/passwd', how, 24)   # openat2, RESOLVE_BENEATH
         finally:
             os.close(root)
         return os.read(fd, 5).decode()
         """, Err("ENOSYS", "OSError"), HOST, Ok(value="root:")),
    Case("open-by-handle-at-shocker",
         """
         import struct
         buf = ctypes.create_string_buffer(struct.pack('Ii', 128, 0) + bytes(128))
         mount_id = ctypes.c_int()
         syscall(303, -100, b'/usr/bin/id', buf, ctypes.byref(mount_id), 0)  # name_to_handle_at
         mfd = os.open('/usr', os.O_RDONLY)
         fd = syscall(304, mfd, buf, os.O_RDONLY)                            # open_by_handle_at
         return len(os.read(fd, 4))
         """, Err("EPERM", "PermissionError"), HOST, Ok(value=4)),
    # --- writing ------------------------------------------------------------------------------
    Case("write-into-host-dir",
         "open(os.path.join(P['write_dir'], 'pwn-' + P['tag']), 'w').write('x'); return 1",
         Err("ENOENT", "FileNotFoundError"), "ctl-write", Ok(value=1), params=targets,
         host_check=_nothing_new_in_write_dir, control_check=_host_sees_pwn_file),
    Case("truncate-host-file", "os.truncate(P['victim'], 0); return 1",
         Err("ENOENT", "FileNotFoundError"), "ctl-write", Ok(value=1), params=targets,
         host_check=_nothing_new_in_write_dir, control_check=_host_sees_truncation),
    # read grants carry Landlock's TRUNCATE right (it shortens the kernel's path walk): the
    # read-only bind must still refuse truncation of a file any host user may write
    Case("truncate-read-granted-file", "os.truncate(P['victim'], 0); return 1",
         Err("EROFS", "OSError"), "ctl-write", Ok(value=1), params=targets,
         host_check=_nothing_new_in_write_dir, control_check=_host_sees_truncation,
         attack_profile="ro-write-dir"),
    Case("open-trunc-read-granted-file", "open(P['victim'], 'w').close(); return 1",
         Err("EROFS", "OSError"), "ctl-write", Ok(value=1), params=targets,
         host_check=_nothing_new_in_write_dir, control_check=_host_sees_truncation,
         attack_profile="ro-write-dir"),
    Case("write-host-tmp",
         "p = f'/tmp/kerneld-attack-{P[\"tag\"]}'; open(p, 'w').write('x'); return p",
         Ok(pred=lambda v: v.startswith("/tmp/")), "ctl-write", Ok(), params=targets,
         control_body="p = os.path.join(P['write_dir'], 'ok-' + P['tag']); "
                      "open(p, 'w').write('x'); return p",
         host_check=_host_tmp_untouched, control_check=_host_sees_control_file),
    Case("write-site-packages-pth",
         "p = os.path.join(P['site'], f'zz-kerneld-attack-{P[\"tag\"]}.pth'); "
         "open(p, 'w').close(); os.unlink(p); return 1",
         Err("EROFS", "OSError"), HOST, Ok(value=1), params=targets),
    Case("overwrite-runtime-interpreter",
         "f = open('/opt/kerneld/runtime/bin/python3.11', 'r+b'); f.close(); return 1",
         Err("EACCES", "PermissionError"), HOST, Ok(value=1)),
    Case("mkdir-in-view-root", "os.mkdir('/evil-' + P['tag']); return 1",
         Err("EROFS", "OSError"), HOST, Ok(value=1), params=targets,
         control_body="d = '/tmp/evil-' + P['tag']; os.mkdir(d); os.rmdir(d); return 1"),
    Case("chmod-system-binary",
         "import stat\nos.chmod('/usr/bin/id', stat.S_IMODE(os.stat('/usr/bin/id').st_mode)); "
         "return 1", Err("EROFS", "OSError"), HOST, Ok(value=1)),
    Case("utime-system-file",
         "st = os.stat('/usr/bin/id'); os.utime('/usr/bin/id', ns=(st.st_atime_ns, "
         "st.st_mtime_ns)); return 1", Err("EROFS", "OSError"), HOST, Ok(value=1)),
    Case("chown-own-file-to-root",
         "import tempfile\nfd, p = tempfile.mkstemp(); os.chown(p, 0, 0); os.unlink(p); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("file-capability-xattr",
         "import tempfile\nfd, p = tempfile.mkstemp()\n"
         "cap = bytes.fromhex('01000002' 'ffffffff' '00000000' 'ffffffff' '00000000')  # v2, all\n"
         "try:\n    os.setxattr(p, 'security.capability', cap)\nfinally:\n    os.unlink(p)\n"
         "return 1", Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("hardlink-system-file-into-scratch",
         "p = '/tmp/id-link-' + P['tag']; os.link('/usr/bin/id', p); os.unlink(p); return 1",
         Err("EXDEV", "OSError"), HOST, Ok(value=1), params=targets),
    Case("o-tmpfile-in-system-dir",
         "fd = os.open('/usr/lib', os.O_TMPFILE | os.O_RDWR, 0o600); os.close(fd); return 1",
         Err("EROFS", "OSError"), HOST, Ok(value=1)),
    Case("reopen-fd-for-write-via-proc",
         "fd = os.open('/usr/bin/id', os.O_RDONLY)\n"
         "os.close(os.open(f'/proc/self/fd/{fd}', os.O_RDWR)); return 1",
         Err("EACCES", "PermissionError"), HOST, Ok(value=1)),
    Case("reopen-fd-via-proc-to-read-host-file",
         "fd = os.open(P['secret'], os.O_RDONLY)\n"
         "return open(f'/proc/self/fd/{fd}').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-read",
         Ok(pred=lambda v: v.startswith("host secret")), params=targets),
    # --- devices, mounts, roots ---------------------------------------------------------------
    Case("mknod-char-device",
         "import stat, tempfile\nd = tempfile.mkdtemp()\n"
         "os.mknod(d + '/mem', stat.S_IFCHR | 0o600, os.makedev(1, 1))\n"
         "os.unlink(d + '/mem'); os.rmdir(d); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("open-loop-device", "os.close(os.open('/dev/loop0', os.O_RDONLY)); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1)),
    Case("open-dev-kvm", "os.close(os.open('/dev/kvm', os.O_RDWR)); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1)),
    Case("device-ioctl-on-urandom",
         "import fcntl, struct\nfd = os.open('/dev/urandom', os.O_RDONLY)\n"
         "return struct.unpack('i', fcntl.ioctl(fd, 0x80045200, b'\\0' * 4))[0]  # RNDGETENTCNT",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: v >= 0)),
    Case("immutable-flag-on-own-file",
         "import fcntl, struct, tempfile\nfd, p = tempfile.mkstemp()\n"
         "try:\n    fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0x10))   # FS_IOC_SETFLAGS +i\n"
         "    fcntl.ioctl(fd, 0x40086602, struct.pack('l', 0))\nfinally:\n    os.unlink(p)\n"
         "return 1", Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("open-dev-kmsg", "os.close(os.open('/dev/kmsg', os.O_RDONLY)); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1)),
    Case("open-dev-tty", "os.close(os.open('/dev/tty', os.O_RDWR)); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Not("ENOENT")),
    Case("list-dev", "return sorted(os.listdir('/dev'))",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "vda" in v)),
    Case("mount-tmpfs",
         "import tempfile\nd = tempfile.mkdtemp()\n"
         "syscall(165, b'none', d.encode(), b'tmpfs', 0, None); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1),
         control_body="import tempfile\nsyscall(272, 0x00020000)  # unshare(NEWNS): private\n"
                      "syscall(165, None, b'/', None, 0x40000 | 0x4000, None)\n"
                      "d = tempfile.mkdtemp()\n"
                      "syscall(165, b'none', d.encode(), b'tmpfs', 0, None)\n"
                      "syscall(166, d.encode(), 2); os.rmdir(d); return 1"),
    Case("umount-to-uncover", "syscall(166, b'/usr', 2); return 1",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM"),
         control_body="syscall(272, 0x00020000)\nsyscall(166, b'/nonexistent-dir', 2); return 1"),
    Case("chroot", "syscall(161, b'/tmp'); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("pivot-root", "syscall(155, b'/tmp', b'/tmp'); return 1",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM"),
         # never pivot the host's own mount namespace: a private one in the control process
         control_body="syscall(272, 0x00020000)\n"
                      "syscall(165, None, b'/', None, 0x40000 | 0x4000, None)\n"
                      "syscall(155, b'/tmp', b'/tmp'); return 1"),
    Case("write-proc-sys", "os.close(os.open('/proc/sys/kernel/hostname', os.O_WRONLY)); "
         "return 1", Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1)),
    Case("write-core-pattern-escape",
         "os.close(os.open('/proc/sys/kernel/core_pattern', os.O_WRONLY)); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1)),
    Case("cgroup-escape-write-procs",
         "os.close(os.open('/sys/fs/cgroup/pids/cgroup.procs', os.O_WRONLY)); return 1",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(value=1)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_filesystem_attack(lab, case: Case) -> None:
    await case.run(lab)


async def test_fd_hunt_finds_no_host_socket_or_file(lab) -> None:
    """Hunt fds 3..N for the daemon's sockets: the kernel holds only its own pipes, event fds
    and its connection to the worker hub; nothing listens, nothing names a host file."""
    body = """
    import stat
    found = []
    for name in os.listdir('/proc/self/fd'):
        fd = int(name)
        try:
            target = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            continue
        entry = {"fd": fd, "target": target}
        if target.startswith('socket:'):
            s = socket.socket(fileno=os.dup(fd))
            entry["listening"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            entry["family"] = int(s.family)
            try:
                entry["peer"] = s.getpeername()
            except OSError:
                entry["peer"] = None
            s.detach()
        found.append(entry)
    return found
    """
    kid = await lab.fresh()
    try:
        out = await lab.execute(kid, body)
    finally:
        await lab.mgr.destroy_kernel(kid)
    assert out.ok, out
    for entry in out.value:
        target = entry["target"]
        assert (target.startswith(("pipe:", "socket:", "anon_inode:", "/proc/"))
                or target == "/dev/null"), entry
        if target.startswith("socket:"):
            assert entry["listening"] == 0, entry
            assert entry["family"] == int(socket.AF_UNIX), entry
    # control: the same hunt in the manager's own (unconfined) process finds the hub listener
    hub = lab.mgr.hub.socket_path
    listeners = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            s = socket.socket(fileno=os.dup(int(name)))
            try:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and \
                        s.family == socket.AF_UNIX:
                    listeners.append(s.getsockname())
            finally:
                s.close()
    assert hub in listeners, listeners


async def test_disk_fill_one_huge_file_and_many_small_files(lab) -> None:
    """Fill the scratch disk: one huge file (ENOSPC at limits.disk, EFBIG past file_size) and
    many small files (ENOSPC, inodes) — inside the kernel's private tmpfs; the host's disk and
    /tmp are untouched. Control: the same writes within a larger limit succeed."""
    before = os.statvfs("/")
    host_tmp_before = set(os.listdir("/tmp"))
    kid = await lab.fresh(limits={"disk": "8MiB", "file_size": "4MiB"})
    uid = psutil.Process(lab.info(kid)["pid"]).uids().real
    try:
        huge = """
        with open('/tmp/huge', 'wb') as f:
            for _ in range(64):
                f.write(b'x' * (1 << 20))
                f.flush()
        """
        out = await lab.execute(kid, huge)
        Err("EFBIG", "OSError").check(out, "one file past limits.file_size")
        spread = """
        n = 0
        os.unlink('/tmp/huge')
        for i in range(64):
            with open(f'/tmp/part{i}', 'wb') as f:
                f.write(b'x' * (1 << 20)); n += 1
        return n
        """
        out = await lab.execute(kid, spread)
        Err("ENOSPC", "OSError").check(out, "files past limits.disk")
        many = """
        import glob
        for p in glob.glob('/tmp/part*'):
            os.unlink(p)
        for i in range(1_000_000):
            open(f'/tmp/f{i}', 'w').close()
        """
        out = await lab.execute(kid, many)
        Err("ENOSPC", "OSError").check(out, "many small files (inodes)")
        shm = "open('/dev/shm/fill', 'wb').write(b'x' * (16 << 20))"
        out = await lab.execute(kid, shm)
        Err("EFBIG", "OSError").check(out, "/dev/shm past file_size")
    finally:
        await lab.mgr.destroy_kernel(kid)
    after = os.statvfs("/")
    drop = (before.f_bavail - after.f_bavail) * after.f_frsize
    assert drop < 32 << 20, f"host disk free dropped by {drop} bytes"
    new = {n for n in set(os.listdir("/tmp")) - host_tmp_before
           if os.path.lexists(f"/tmp/{n}") and os.lstat(f"/tmp/{n}").st_uid == uid}
    assert not new, f"files of the kernel's uid appeared in the host /tmp: {new}"
    # control: the same 4 MiB within the default limits (64MiB disk, 64MiB file_size)
    ok = await lab.run("default", """
    with open('/tmp/ctl-huge', 'wb') as f:
        for _ in range(16):
            f.write(b'x' * (1 << 20))
    n = os.path.getsize('/tmp/ctl-huge'); os.unlink('/tmp/ctl-huge'); return n
    """)
    Ok(value=16 << 20).check(ok, "control: 16 MiB under the default disk limit")
    assert processes_of_uid(uid) == [], "processes of the destroyed kernel remain"
