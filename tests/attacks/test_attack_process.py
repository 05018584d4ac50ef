"""Attack class: PROCESS. Signals and ptrace across the boundary, identity changes, new
namespaces, exec without `run` (and around it), setuid binaries, prctl/personality/ioctl
tricks, crashes — refused with the exact errno under the default profile; controls on the host
(root, unconfined) or under a profile granting `run`."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest
from _attack_support import (
    HOST,
    Case,
    Err,
    Not,
    Ok,
    ids,
    processes_in_pidns,
    processes_of_uid,
    run_on_host,
    with_child,
)
from conftest import UID_FIRST

pytestmark = pytest.mark.asyncio(loop_scope="session")


def pids(lab) -> dict:
    return {"mgr": os.getpid(), "zygote": lab.mgr.zygote.proc.pid, "tag": os.urandom(4).hex()}




PTRACE_ATTACH = """
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
try:
    syscall(101, 16, child, 0, 0)          # PTRACE_ATTACH
    os.waitpid(child, 0)
    syscall(101, 17, child, 0, 0)          # PTRACE_DETACH
    return "attached"
finally:
    os.kill(child, 9)
    os.waitpid(child, 0)
"""

VM_READV = """
import ctypes
secret = ctypes.create_string_buffer(b'in-memory-secret')
child = os.fork()
if child == 0:
    time.sleep(30)
    os._exit(0)
try:
    class iovec(ctypes.Structure):
        _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
    out = ctypes.create_string_buffer(16)
    local = iovec(ctypes.addressof(out), 16)
    remote = iovec(ctypes.addressof(secret), 16)
    syscall(310, child, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return out.raw.decode()
finally:
    os.kill(child, 9)
    os.waitpid(child, 0)
"""

RAW_CLONE = """
flags = {flags} | 17                        # | SIGCHLD
pid = syscall(56, flags, 0, 0, 0, 0)        # clone(flags, stack=NULL): fork-like
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
return "cloned"
"""

CLONE3 = """
import struct
args = ctypes.create_string_buffer(struct.pack('QQQQQQQQQQQ', {flags}, 0, 0, 0, 17,
                                             0, 0, 0, 0, 0, 0), 88)
pid = syscall(435, args, 88)                # clone3
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
return "cloned"
"""

CAPSET_RAISE = """
import struct
hdr = ctypes.create_string_buffer(struct.pack('Ii', 0x20080522, 0))
data = ctypes.create_string_buffer(24)
syscall(125, hdr, data)                                  # capget
eff0, prm0, inh0, eff1, prm1, inh1 = struct.unpack('6I', data.raw)
want = (1 << 21)                                         # CAP_SYS_ADMIN
new = ctypes.create_string_buffer(struct.pack('6I', eff0 | want, prm0 | want, inh0,
                                              eff1, prm1, inh1))
syscall(126, hdr, new)                                   # capset
return "raised"
"""

MEMFD_EXEC = """
import subprocess
fd = os.memfd_create('payload')
os.write(fd, open('/usr/bin/true', 'rb').read())
return subprocess.run([f'/proc/self/fd/{fd}'], pass_fds=(fd,)).returncode
"""

IOCTL_NULL = "import fcntl\nfd = os.open('/dev/null', os.O_RDWR)\n"

CASES = [
    Case("ptrace-attach", PTRACE_ATTACH, Err("EPERM", "PermissionError"), HOST,
         Ok(value="attached")),
    Case("proc-pid-mem-of-child", with_child("len(open(f'/proc/{child}/mem', 'rb').name)"),
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: v > 0)),
    Case("proc-pid-mem-of-init", "return open('/proc/1/mem', 'rb').name",
         Err("EACCES", "PermissionError"), HOST, Ok(),
         control_body=with_child("open(f'/proc/{child}/mem', 'rb').name")),
    Case("process-vm-readv", VM_READV, Err("EPERM", "PermissionError"), HOST,
         Ok(value="in-memory-secret")),
    Case("process-vm-readv-the-manager",
         "import ctypes\nbuf = ctypes.create_string_buffer(8)\n"
         "local = (ctypes.c_size_t * 2)(ctypes.addressof(buf), 8)\n"
         "remote = (ctypes.c_size_t * 2)(0x1000, 8)\n"
         "return syscall(310, P['mgr'], local, 1, remote, 1, 0)",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM"), params=pids),
    Case("signal-the-manager", "os.kill(P['mgr'], 0); return 1",
         Err("ESRCH", "ProcessLookupError"), HOST, Ok(value=1), params=pids),
    Case("signal-the-zygote", "os.kill(P['zygote'], 0); return 1",
         Err("ESRCH", "ProcessLookupError"), HOST, Ok(value=1), params=pids),
    Case("pidfd-of-the-manager", "os.close(os.pidfd_open(P['mgr'])); return 1",
         Err("ESRCH", "ProcessLookupError"), HOST, Ok(value=1), params=pids),
    Case("kill-minus-one-probe", "os.kill(-1, 0); return 1",
         Err("ESRCH", "ProcessLookupError"), HOST, Ok(value=1)),
    Case("setuid-root", "os.setuid(0); return os.getuid()",
         Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("setresuid-nobody", "os.setresuid(65534, 65534, 65534); return os.getuid()",
         Err("EPERM", "PermissionError"), HOST, Ok(value=65534)),
    Case("setgroups-root", "os.setgroups([0]); return os.getgroups()",
         Err("EPERM", "PermissionError"), HOST, Ok(value=[0])),
    Case("capset-raise-sys-admin", CAPSET_RAISE, Err("EPERM", "PermissionError"), HOST,
         Ok(value="raised")),
    Case("unshare-user-namespace", "syscall(272, 0x10000000); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("unshare-net-namespace", "syscall(272, 0x40000000); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("unshare-mount-namespace", "syscall(272, 0x00020000); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("clone-new-user-namespace", RAW_CLONE.format(flags="0x10000000"),
         Err("EPERM", "PermissionError"), HOST, Ok(value="cloned")),
    Case("clone-new-pid-namespace", RAW_CLONE.format(flags="0x20000000"),
         Err("EPERM", "PermissionError"), HOST, Ok(value="cloned")),
    Case("clone3-new-user-namespace", CLONE3.format(flags="0x10000000"),
         Err("ENOSYS", "OSError"), HOST, Ok(value="cloned")),
    Case("setns-into-a-namespace",
         "fd = os.open('/proc/self/ns/net', os.O_RDONLY); syscall(308, fd, 0); return 1",
         Err("EPERM", "PermissionError"), HOST, Ok(value=1)),
    Case("execve-without-run",
         "import subprocess\nreturn subprocess.run(['/usr/bin/id', '-u'], "
         "capture_output=True).stdout.decode().strip()",
         Err("EPERM", "PermissionError"), "ctl-run",
         Ok(pred=lambda v: int(v) >= 200_000, desc="runs as the kernel's uid")),
    Case("execve-shell-for-bang-commands",
         "return get_ipython().getoutput('/usr/bin/id -u')",
         Err("EPERM", "PermissionError"), "trusted",
         Ok(pred=lambda v: int(v[0]) >= 200_000)),
    Case("execve-via-the-elf-interpreter",
         "import subprocess\nreturn subprocess.run(['/lib64/ld-linux-x86-64.so.2', "
         "'/usr/bin/true']).returncode", Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("memfd-execve", MEMFD_EXEC, Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("execve-setuid-root-binary",
         "import subprocess\nreturn subprocess.run(['/usr/bin/passwd', '-S', 'root'], "
         "capture_output=True).returncode", Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("personality-read-implies-exec", "return syscall(135, 0x0400000) >= 0",
         Err("EPERM", "PermissionError"), HOST, Ok(value=True)),
    Case("prctl-set-dumpable", "return syscall(157, 4, 1, 0, 0, 0)",
         Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("prctl-set-securebits", "return syscall(157, 28, 0, 0, 0, 0)",
         Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("prctl-capbset-drop", "return syscall(157, 24, 21, 0, 0, 0)",
         Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
    Case("prctl-set-ptracer-any", "return syscall(157, 0x59616d61, -1, 0, 0, 0)",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),
    Case("tiocsti-inject-keystroke",
         IOCTL_NULL + "fcntl.ioctl(fd, 0x5412, b'x'); return 1",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),
    Case("tiocsti-with-high-bits",
         IOCTL_NULL + "c = ctypes.c_char(b'x')\n"
         "syscall(16, fd, 0x100005412, ctypes.byref(c)); return 1",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),
    Case("tioclinux", IOCTL_NULL + "fcntl.ioctl(fd, 0x541C, b'\\x0b'); return 1",
         Err("EPERM", "PermissionError"), HOST, Not("EPERM")),
    Case("prlimit-another-process",
         with_child("__import__('resource').prlimit(child, __import__('resource').RLIMIT_NOFILE)"),
         Err("EPERM", "PermissionError"), HOST, Ok()),
    Case("ioprio-realtime-class", "return syscall(251, 1, 0, (1 << 13) | 4)",
         Err("EPERM", "PermissionError"), HOST, Ok(value=0)),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_process_attack(lab, case: Case) -> None:
    await case.run(lab)


# --- under a profile that grants `run`: exec of anything else must still fail ---------------

RUN_CASES = [
    Case("run-grant-does-not-cover-other-programs",
         "import subprocess\nreturn subprocess.run(['/usr/bin/uname', '-r']).returncode",
         Err("EACCES", "PermissionError"), HOST, Ok(value=0), attack_profile="ctl-run"),
    # `run` grants /usr/bin/id only: the ELF interpreter (executable, as every dynamic program
    # needs it) must not be a way to run /usr/bin/uname. Whatever layer refuses it (execve or
    # the interpreter's mmap), uname must not run.
    Case("run-grant-bypass-via-elf-interpreter",
         "import subprocess\ntry:\n"
         "    r = subprocess.run(['/lib64/ld-linux-x86-64.so.2', '/usr/bin/uname', '-r'],"
         " capture_output=True)\n"
         "except OSError as e:\n    return 'refused: ' + errno.errorcode[e.errno]\n"
         "return r.stdout.decode()",
         Ok(pred=lambda v: v.startswith("refused") or not v.strip(), desc="uname never ran"),
         HOST, Ok(pred=lambda v: v.strip() == os.uname().release), attack_profile="ctl-run"),
    Case("run-grant-memfd-execve", MEMFD_EXEC, Err("EACCES", "PermissionError"), HOST,
         Ok(value=0), attack_profile="ctl-run"),
    Case("run-grant-exec-from-scratch",
         "import shutil, subprocess\nshutil.copy('/usr/bin/true', '/tmp/t'); "
         "os.chmod('/tmp/t', 0o755)\nreturn subprocess.run(['/tmp/t']).returncode",
         Err("EACCES", "PermissionError"), HOST, Ok(value=0), attack_profile="ctl-run",
         control_body="import shutil, subprocess, tempfile\nd = tempfile.mkdtemp()\n"
                      "shutil.copy('/usr/bin/true', d + '/t')\n"
                      "code = subprocess.run([d + '/t']).returncode\n"
                      "shutil.rmtree(d); return code"),
    Case("run-grant-setuid-mount-gains-nothing",
         "import subprocess\nbefore = open('/proc/self/mountinfo').read()\n"
         "os.makedirs('/tmp/m', exist_ok=True)\n"
         "r = subprocess.run(['/usr/bin/mount', '-t', 'tmpfs', 'none', '/tmp/m'], "
         "capture_output=True)\n"
         "return [r.returncode != 0, open('/proc/self/mountinfo').read() == before]",
         Ok(value=[True, True], desc="mount failed, nothing mounted"), HOST,
         Ok(value=0, desc="root mounts in a private namespace"), attack_profile="ctl-run",
         control_body="import subprocess, tempfile\nd = tempfile.mkdtemp()\n"
                      "code = subprocess.run(['/usr/bin/unshare', '-m', '/usr/bin/mount', "
                      "'-t', 'tmpfs', 'none', d]).returncode\n"
                      "os.rmdir(d); return code"),
]


@pytest.mark.parametrize("case", RUN_CASES, ids=ids(RUN_CASES))
async def test_process_attack_with_run_granted(lab, case: Case) -> None:
    await case.run(lab)


# --- destructive and cross-boundary cases: fresh kernels ------------------------------------

async def _witness_answers(lab) -> None:
    witness = await lab.kernel("default")
    out = await lab.execute(witness, "return sum(range(1000))", timeout=10)
    Ok(value=499500).check(out, "another kernel answers")


async def test_kill_minus_one_reaches_nothing_outside(lab) -> None:
    """setsid + kill(-1, SIGKILL) from inside a kernel: it can only hit its own processes.
    A host process running as the *same uid* as the kernel survives; the manager and another
    kernel keep answering. Control: the same kill(-1, 0) by a host process with that uid
    reaches the host process (so -1 really means "everything this uid may signal")."""
    kid = await lab.fresh()
    uid = psutil.Process(lab.info(kid)["pid"]).uids().real
    sentinel = await asyncio.create_subprocess_exec("/usr/bin/sleep", "30", user=uid, group=uid,
                                                    extra_groups=[])
    try:
        body = """
        child = os.fork()
        if child == 0:
            os.setsid()
            os.kill(-1, 9)
            os._exit(0)
        os.waitpid(child, 0)
        return "survived"
        """
        out = await lab.execute(kid, body)
        # kill(-1) from the child killed every process of the kernel it may signal: the worker
        assert out.died is not None or out.ok, out
        await asyncio.sleep(0.2)
        assert sentinel.returncode is None, "a host process of the kernel's uid was killed"
        await _witness_answers(lab)
        ctl = await run_on_host("os.kill(-1, 0); return 1", user=uid)
        Ok(value=1).check(ctl, "control: kill(-1, 0) by a host process of that uid")
    finally:
        sentinel.kill()
        await sentinel.wait()
        await lab.mgr.destroy_kernel(kid)


def _init_host_pid(worker_pid: int) -> int:
    """Host pid of PID 1 of the worker's PID namespace."""
    ns = os.readlink(f"/proc/{worker_pid}/ns/pid")
    for pid in processes_in_pidns(ns):
        with open(f"/proc/{pid}/status") as fh:
            nspid = next(line.split()[1:] for line in fh if line.startswith("NSpid:"))
        if nspid[-1] == "1":
            return pid
    raise AssertionError("no PID 1 in the kernel's namespace")


async def test_signalling_the_kernels_init_from_inside_is_refused(lab) -> None:
    """kill(1, SIGKILL) and kill(1, SIGSTOP) from user code: refused (EPERM: PID 1 is outside
    the worker's Landlock signal scope); the init keeps running and the kernel answers.
    Control: the same kill works on a child of the snippet."""
    kid = await lab.fresh()
    try:
        init = _init_host_pid(lab.info(kid)["pid"])
        for sig in (9, 19, 15):
            out = await lab.execute(kid, f"os.kill(1, {sig}); return 1")
            Err("EPERM", "PermissionError").check(out, f"kill(1, {sig})")
        assert psutil.Process(init).status() in ("sleeping", "running"), "the init was hit"
        out = await lab.execute(kid, "child = os.fork()\nif child == 0:\n    time.sleep(30)\n"
                                     "    os._exit(0)\nos.kill(child, 9)\n"
                                     "return os.waitpid(child, 0)[1]")
        Ok(value=9).check(out, "control: SIGKILL kills an ordinary child")
    finally:
        await lab.mgr.destroy_kernel(kid)


async def test_segfault_kills_only_that_kernel(lab) -> None:
    """A segfault through ctypes: the kernel dies alone with a clear reason; the manager and
    another kernel carry on. Control: the same snippet segfaults an unconfined process too."""
    kid = await lab.fresh()
    try:
        out = await lab.execute(kid, "return ctypes.string_at(16, 1)")
        assert out.died is not None and "SIGSEGV" in out.died, out
        assert lab.info(kid)["status"] == "dead"
        await _witness_answers(lab)
        ctl = await run_on_host("return ctypes.string_at(16, 1)")
        assert ctl.died == f"rc={-signal.SIGSEGV}", ctl
    finally:
        await lab.mgr.destroy_kernel(kid)


async def test_other_kernels_processes_are_out_of_reach(lab) -> None:
    """Kernel B cannot see, signal or open kernel A's processes (by host pid)."""
    a = await lab.kernel("default")
    b = await lab.fresh()
    try:
        a_pid = lab.info(a)["pid"]
        params = {"pid": a_pid}
        out = await lab.execute(b, "os.kill(P['pid'], 0); return 1", params)
        Err("ESRCH", "ProcessLookupError").check(out, "signal another kernel")
        out = await lab.execute(b, "return open(f\"/proc/{P['pid']}/cmdline\").read()", params)
        Err("ENOENT", "FileNotFoundError").check(out, "read another kernel's /proc entry")
        out = await lab.execute(b, "return sorted(int(p) for p in os.listdir('/proc') "
                                   "if p.isdigit())")
        Ok(pred=lambda v: a_pid not in v and max(v) < 1000).check(out, "only its own pids")
        ctl = await run_on_host("os.kill(P['pid'], 0); return 1", params)
        Ok(value=1).check(ctl, "control: the host can signal it")
    finally:
        await lab.mgr.destroy_kernel(b)


async def test_fork_bomb_in_one_manager_does_not_starve_a_kernel_of_another(lab) -> None:
    """Two managers on one host (a daemon and an embedded manager, two daemons, two test
    runs) must never give two kernels the same uid: RLIMIT_NPROC counts processes per uid
    host-wide, so a fork bomb in one kernel would starve the other of processes and threads.
    Both managers get the same uid range, as two managers with the default config would (a
    range of its own keeps this test from disturbing other kernels on this host)."""
    from kerneld import KernelManager
    from kerneld.config import ManagerConfig

    first = UID_FIRST + 50
    cfg = ManagerConfig(uid_range=(first, first + 9))
    async with KernelManager(cfg) as m1, KernelManager(cfg) as m2:
        a = await m1.create_kernel(limits={"processes": 16})
        b = await m2.create_kernel(limits={"processes": 16})
        ua = psutil.Process(m1.list_kernels()[0]["pid"]).uids().real
        ub = psutil.Process(m2.list_kernels()[0]["pid"]).uids().real
        assert ua != ub, f"two managers gave their kernels the same uid {ua}"
        bomb = ("import os, time\nn = 0\ntry:\n    while True:\n        p = os.fork()\n"
                "        if p == 0:\n            time.sleep(3)\n            os._exit(0)\n"
                "        n += 1\nexcept OSError as e:\n    print(n, e)")
        await m1.execute(a, bomb)
        r = await m2.execute(b, "import os\np = os.fork()\nif p == 0:\n    os._exit(0)\n"
                                "os.waitpid(p, 0)\n'forked'")
        assert r.status == "ok" and r.result["data"]["text/plain"] == "'forked'", r.error


async def test_thread_and_process_count_stays_bounded_on_the_host(lab) -> None:
    """Processes of a kernel live in its PID namespace and uid: after destroy, none remain."""
    kid = await lab.fresh()
    info = lab.info(kid)
    uid = psutil.Process(info["pid"]).uids().real
    ns = os.readlink(f"/proc/{info['pid']}/ns/pid")
    await lab.execute(kid, "for _ in range(3):\n    if os.fork() == 0:\n        time.sleep(60)\n"
                           "        os._exit(0)\nreturn 1")
    assert len(processes_in_pidns(ns)) >= 5
    await lab.mgr.destroy_kernel(kid)
    await asyncio.sleep(0)
    assert processes_in_pidns(ns) == [] and processes_of_uid(uid) == []
