"""The acceptance checks of issue 3, each as its own test, through a real KernelManager:

(a) filesystem mount: a host tmpdir at /home/kernel — read a host file there, write one the
    host sees;
(b) network: `net = ["127.0.0.1:PORT"]` reaches that host server through the proxy (urllib and
    the proxy variables) while other ports, other hosts and `localhost:PORT` are refused; with
    no `net` nothing is reachable (TCP, UDP, DNS, host UNIX sockets, the manager's endpoint);
(c) fork bomb, memory bomb, CPU spin, disk fill, fd flood: each contained in its kernel while
    the manager and ANOTHER kernel keep answering (during and after), with the exact errno or
    a clear KernelDied reason, and the host's process count / disk unaffected;
(d) whole-tree kill: destroy / force-terminate leave no process of the kernel alive, whatever
    it did (setsid, double fork, ignored SIGTERM, a fork loop) — checked in the host's process
    table by the kernel's uid and PID namespace.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from _attack_support import Err, Ok, Outcome, processes_in_pidns, processes_of_uid

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = "hello from the host test server"
BOMB_LIMITS = {"memory": "128MiB", "processes": 16, "disk": "8MiB", "cpu_seconds": 2,
               "open_files": 64}


# ============================================================================ (a) filesystem

async def test_issue3_a_filesystem_mount_reads_and_writes_host_files(lab) -> None:
    """Exactly as the issue states it: a tmpdir from `tempfile` (default permissions: owned by
    the caller, mode 0700), mounted at /home/kernel."""
    with tempfile.TemporaryDirectory() as tmpdir:
        Path(tmpdir, "from_host.txt").write_text("hello from the host")
        kid = await lab.mgr.create_kernel(
            filesystem={"enabled": True, "root": tmpdir, "mount_point": "/home/kernel"})
        try:
            out = await lab.execute(kid, """
            return [os.getcwd(), open('/home/kernel/from_host.txt').read(),
                    open('/home/kernel/from_kernel.txt', 'w').write('hello from the kernel')]
            """)
            Ok(value=["/home/kernel", "hello from the host", 21]).check(out, "mounted dir")
            written = Path(tmpdir, "from_kernel.txt")
            assert written.read_text() == "hello from the kernel"
            assert written.stat().st_uid == os.getuid(), \
                f"written file owned by uid {written.stat().st_uid}, not the requesting user"
        finally:
            await lab.mgr.destroy_kernel(kid)


async def test_issue3_a_mount_does_not_open_the_rest_of_the_host(lab) -> None:
    """The mount shows that directory only: its host parent and siblings, `..`, a symlink out
    of it and the host's /etc stay invisible; read_only mounts refuse writes (EROFS) while the
    host's file is untouched. Control: the read-write mount writes."""
    root = tempfile.mkdtemp(prefix="kerneld-attack-mount-")
    os.chmod(root, 0o755)
    os.symlink("/etc/passwd", os.path.join(root, "link-to-passwd"))
    Path(root, "data.txt").write_text("data")
    Path(root, "..", os.path.basename(root) + "-sibling").write_text("sibling")
    sibling = os.path.join(os.path.dirname(root), os.path.basename(root) + "-sibling")
    try:
        ro = await lab.mgr.create_kernel(filesystem={"root": root, "read_only": True})
        try:
            out = await lab.execute(ro, "return sorted(os.listdir('/home/kernel/..'))")
            Err("EACCES", "PermissionError").check(out, "the mount point's parent")
            out = await lab.execute(ro, "return sorted(os.listdir('/home/kernel'))")
            Ok(value=["data.txt", "link-to-passwd"]).check(out, "control: the mount itself")
            out = await lab.execute(ro, "return open('/home/kernel/link-to-passwd').read()")
            Err("ENOENT", "FileNotFoundError").check(out, "symlink out of the mount")
            out = await lab.execute(ro, "return open(P['sibling']).read()", {"sibling": sibling})
            Err("ENOENT", "FileNotFoundError").check(out, "a host sibling of the mount")
            out = await lab.execute(ro, "open('/home/kernel/data.txt', 'w').write('x')")
            Err("EROFS", "OSError").check(out, "write into a read-only mount")
            assert Path(root, "data.txt").read_text() == "data"
        finally:
            await lab.mgr.destroy_kernel(ro)
        rw = await lab.mgr.create_kernel(filesystem={"root": root})
        try:
            out = await lab.execute(rw, "open('/home/kernel/data.txt', 'w').write('new')\n"
                                        "return open('/home/kernel/data.txt').read()")
            Ok(value="new").check(out, "control: the read-write mount")
            assert Path(root, "data.txt").read_text() == "new"
        finally:
            await lab.mgr.destroy_kernel(rw)
    finally:
        os.unlink(sibling)
        for name in os.listdir(root):
            os.unlink(os.path.join(root, name))
        os.rmdir(root)


# ============================================================================ (b) network

URLOPEN = "import urllib.request\nreturn urllib.request.urlopen(P['url'], timeout=10).read().decode()"


async def test_issue3_b_allowlisted_ip_port_reachable_through_the_proxy_only(lab) -> None:
    t = lab.t
    kid = await lab.kernel("ctl-net")
    env = await lab.execute(kid, "return {k: os.environ.get(k) for k in "
                                 "('HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY')}")
    Ok(value={"HTTP_PROXY": "http://127.0.0.1:3128", "HTTPS_PROXY": "http://127.0.0.1:3128",
              "ALL_PROXY": "socks5h://127.0.0.1:3128"}).check(env, "proxy variables")
    ok = await lab.execute(kid, URLOPEN, {"url": f"http://127.0.0.1:{t.http_port}/"})
    Ok(value=BODY).check(ok, "urllib to the allowed 127.0.0.1:PORT")
    refused = Err(None, "HTTPError", msg="HTTP Error 403: Forbidden")
    for what, url in (("another port", f"http://127.0.0.1:{t.other_port}/"),
                      ("another host", "http://192.0.2.1/"),
                      ("another host by name", "http://kerneld-attack.invalid/"),
                      ("localhost:PORT (a name resolving to loopback)",
                       f"http://localhost:{t.http_port}/")):
        refused.check(await lab.execute(kid, URLOPEN, {"url": url}), what)
    direct = await lab.execute(kid, "socket.create_connection(('127.0.0.1', P['port']), 2)",
                               {"port": t.http_port})
    Err("EACCES", "PermissionError").check(direct, "around the proxy")


async def test_issue3_b_no_net_reaches_nothing(lab) -> None:
    t = lab.t
    kid = await lab.kernel("default")
    params = {"port": t.http_port, "udp": t.udp_port, "unix": t.unix_path, "zmq": t.zmq_path,
              "hub": lab.mgr.hub.socket_path, "url": f"http://127.0.0.1:{t.http_port}/"}
    checks: list[tuple[str, str, Any]] = [
        ("TCP", "socket.create_connection(('127.0.0.1', P['port']), 2)",
         Err("EPERM", "PermissionError")),
        ("urllib", URLOPEN, Err(None, "URLError", msg="Operation not permitted")),
        ("UDP", ("socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                 "('127.0.0.1', P['udp']))"), Err("EPERM", "PermissionError")),
        ("DNS", "socket.getaddrinfo('localhost', 80)",
         Err(None, "gaierror", msg="Temporary failure in name resolution")),
        ("host UNIX socket", "socket.socket(socket.AF_UNIX).connect(P['unix'])",
         Err("ENOENT", "FileNotFoundError")),
        ("daemon-style ipc socket", "socket.socket(socket.AF_UNIX).connect(P['zmq'])",
         Err("ENOENT", "FileNotFoundError")),
        ("the manager's worker endpoint (host path)",
         "socket.socket(socket.AF_UNIX).connect(P['hub'])", Err("ENOENT", "FileNotFoundError")),
        ("the system daemon's socket",
         "socket.socket(socket.AF_UNIX).connect('/run/kerneld/kerneld.sock')",
         Err("ENOENT", "FileNotFoundError")),
    ]
    for what, body, expect in checks:
        expect.check(await lab.execute(kid, body, params), what)
    # positive controls: the same TCP/UDP/DNS on the host's network (trusted profile)
    trusted = await lab.kernel("trusted")
    Ok(value=1).check(await lab.execute(trusted, "socket.create_connection(('127.0.0.1', "
                                                 "P['port']), 2).close(); return 1", params),
                      "control: TCP on the host network")
    Ok().check(await lab.execute(trusted, "return len(socket.getaddrinfo('localhost', 80))"),
               "control: DNS (hosts file) on the host network")


# ============================================================================ (c) containment

async def _witness(lab, kid: str) -> float:
    t0 = time.monotonic()
    out = await lab.execute(kid, "return sum(range(1000))", timeout=10)
    Ok(value=499500).check(out, "another kernel answers")
    assert lab.mgr.list_kernels(), "the manager answers"
    return time.monotonic() - t0


async def contained(lab, body: str, *, limits: dict[str, Any] = BOMB_LIMITS,
                    watch: float = 0.0) -> tuple[Outcome, dict[str, Any]]:
    """Run `body` in a fresh kernel with small limits while ANOTHER kernel and the manager are
    asked to answer, repeatedly, during and after the attack. Returns the attack's outcome and
    what the host saw (max processes of the kernel, disk free drop, witness latencies)."""
    witness = await lab.kernel("default")
    await _witness(lab, witness)
    kid = await lab.fresh(limits=limits)
    info = lab.info(kid)
    uid = psutil.Process(info["pid"]).uids().real
    ns = os.readlink(f"/proc/{info['pid']}/ns/pid")
    disk = os.statvfs("/")
    seen: dict[str, Any] = {"max_procs": 0, "latencies": [], "uid": uid}
    task = asyncio.create_task(lab.execute(kid, body, timeout=90))
    try:
        while not task.done() or watch > 0:
            seen["max_procs"] = max(seen["max_procs"], len(processes_in_pidns(ns)))
            seen["latencies"].append(await _witness(lab, witness))
            await asyncio.sleep(0.05)
            if task.done():
                watch -= 0.1
        out = await task
        seen["latencies"].append(await _witness(lab, witness))
        seen["status"] = lab.info(kid)["status"]
    finally:
        if not task.done():
            task.cancel()
        await lab.mgr.destroy_kernel(kid)
    after = os.statvfs("/")
    seen["disk_drop"] = (disk.f_bavail - after.f_bavail) * after.f_frsize
    seen["left"] = processes_in_pidns(ns) + processes_of_uid(uid)
    assert seen["left"] == [], f"processes of the kernel survived: {seen['left']}"
    assert max(seen["latencies"]) < 5, f"the other kernel was slow: {seen['latencies']}"
    assert len(seen["latencies"]) >= 2
    return out, seen


async def test_issue3_c_fork_bomb_is_contained(lab) -> None:
    out, seen = await contained(lab, """
    kids = []
    try:
        while True:
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            kids.append(pid)
    except OSError as e:
        time.sleep(1)          # hold the processes while the witness is asked
        raise
    """)
    Err("EAGAIN", "BlockingIOError").check(out, "fork bomb")
    assert seen["max_procs"] <= 16 + 1, seen   # the pids limit (+ the init, outside the cgroup)
    assert seen["status"] == "idle"


async def test_issue3_c_memory_bomb_is_contained(lab) -> None:
    out, seen = await contained(lab, """
    hog = []
    while True:
        hog.append(bytearray(8 << 20))
        time.sleep(0.02)
    """)
    assert out.died is not None, out
    assert "out-of-memory" in out.died, out.died
    assert seen["status"] == "dead"


async def test_issue3_c_cpu_spin_is_contained(lab) -> None:
    out, _seen = await contained(lab, "while True:\n    pass")
    assert out.died is not None and "SIGXCPU" in out.died and "CPU time limit" in out.died, out


async def test_issue3_c_disk_fill_is_contained(lab) -> None:
    out, seen = await contained(lab, """
    n = 0
    try:
        while True:
            with open(f'/tmp/fill{n}', 'wb') as f:
                f.write(b'x' * (1 << 20))
            n += 1
    except OSError:
        time.sleep(0.5)
        raise
    """)
    Err("ENOSPC", "OSError").check(out, "disk fill")
    assert seen["disk_drop"] < 64 << 20, f"the host's disk lost {seen['disk_drop']} bytes"


async def test_issue3_c_fd_flood_is_contained(lab) -> None:
    out, seen = await contained(lab, """
    fds = []
    try:
        while True:
            fds.append(os.open('/dev/null', os.O_RDONLY))
    except OSError:
        time.sleep(0.5)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    """)
    Err("EMFILE", "OSError").check(out, "fd flood")
    assert seen["status"] == "idle"


# ============================================================================ (d) whole tree

ESCAPE = """
import signal
def daemon(body):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:               # double fork: reparented to the init
            for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
                signal.signal(s, signal.SIG_IGN)
            body()
        os._exit(0)
    os.waitpid(pid, 0)

def sleeper():
    while True:
        time.sleep(0.05)

def respawner():                          # a fork loop: its tree is always being replaced
    while True:
        if os.fork() == 0:
            time.sleep(0.01)
            os._exit(0)
        try:
            os.wait()
        except ChildProcessError:
            pass

for _ in range(3):
    daemon(sleeper)
daemon(respawner)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(0.2)
return 1
"""


def _snapshot(lab, kid: str) -> tuple[int, str, list[psutil.Process]]:
    info = lab.info(kid)
    uid = psutil.Process(info["pid"]).uids().real
    ns = os.readlink(f"/proc/{info['pid']}/ns/pid")
    procs = []
    for pid in processes_in_pidns(ns):
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return uid, ns, procs


def _nothing_left(uid: int, ns: str, procs: list[psutil.Process]) -> None:
    alive = [p.pid for p in procs if p.is_running()]
    assert alive == [], f"processes of the kernel still alive: {alive}"
    assert processes_in_pidns(ns) == [], "the kernel's PID namespace still has processes"
    assert processes_of_uid(uid) == [], f"the host still has processes of uid {uid}"


async def test_issue3_d_destroy_kills_the_whole_tree(lab) -> None:
    kid = await lab.fresh()
    Ok(value=1).check(await lab.execute(kid, ESCAPE), "daemons started")
    uid, ns, procs = _snapshot(lab, kid)
    # the respawner's child is absent while it forks the next one: 6 is the floor
    assert len(procs) >= 6, f"expected init + worker + 4 daemons (+ children): {procs}"
    assert all(p.uids().real == uid for p in procs)
    await lab.mgr.destroy_kernel(kid)
    _nothing_left(uid, ns, procs)


async def test_issue3_d_force_terminate_kills_the_whole_tree_mid_execution(lab) -> None:
    kid = await lab.fresh()
    Ok(value=1).check(await lab.execute(kid, ESCAPE), "daemons started")
    uid, ns, procs = _snapshot(lab, kid)
    busy = asyncio.create_task(lab.mgr.execute(
        kid, "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass"))
    await asyncio.sleep(0.3)
    assert await lab.mgr.force_terminate_kernel(kid, "attack suite")
    res = await asyncio.wait_for(busy, 5)
    assert res.error["ename"] == "KernelForcedTermination"
    assert res.error["evalue"] == "attack suite"
    _nothing_left(uid, ns, procs)


async def test_issue3_d_restart_kills_the_old_tree(lab) -> None:
    kid = await lab.fresh()
    try:
        Ok(value=1).check(await lab.execute(kid, ESCAPE), "daemons started")
        _uid, ns, procs = _snapshot(lab, kid)
        assert await lab.mgr.restart_kernel(kid)
        alive = [p.pid for p in procs if p.is_running()]
        assert alive == [], f"processes of the old kernel alive after restart: {alive}"
        assert processes_in_pidns(ns) == []
        Ok(value=2).check(await lab.execute(kid, "return 1 + 1"), "the restarted kernel")
    finally:
        await lab.mgr.destroy_kernel(kid)


async def test_issue3_a_no_setuid_file_lands_on_the_host(lab) -> None:
    """The mount is idmapped: what the kernel writes is the host owner's (root's, for a root
    tmpdir). A setuid/setgid bit on such a file would be a setuid-root file on the host. Every
    way to set one must fail or leave none: chmod(04755) (EPERM), and creating the file with
    the bit in open()/mkdir()'s mode. Control: root on the host can create one."""
    with tempfile.TemporaryDirectory() as tmpdir:
        kid = await lab.mgr.create_kernel(filesystem={"root": tmpdir})
        try:
            out = await lab.execute(kid, "open('/home/kernel/a', 'w').write('x')\n"
                                         "os.chmod('/home/kernel/a', 0o4755)")
            Err("EPERM", "PermissionError").check(out, "chmod u+s")
            await lab.execute(kid, "os.close(os.open('/home/kernel/b', os.O_CREAT | os.O_WRONLY,"
                                   " 0o6755)); os.mkdir('/home/kernel/c', 0o2777); return 1")
            for name in ("a", "b", "c"):
                path = Path(tmpdir, name)
                if path.exists():
                    mode = path.stat().st_mode
                    assert not mode & 0o6000, f"{name} on the host: mode {oct(mode)}, " \
                                              f"owner {path.stat().st_uid}"
        finally:
            await lab.mgr.destroy_kernel(kid)
        ctl = Path(tmpdir, "ctl")
        fd = os.open(ctl, os.O_CREAT | os.O_WRONLY, 0o4755)
        os.close(fd)
        os.chmod(ctl, 0o4755)
        assert ctl.stat().st_mode & 0o4000, "control: root on the host sets the bit"
