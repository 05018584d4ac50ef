"""Process and kernel-surface confinement in real children: identity, capabilities, seccomp,
PID namespace, environment. Every denial has a positive control (unconfined child or a grant)."""

from __future__ import annotations

import errno
import platform
import signal
import textwrap
import time
from typing import Any

import pytest
from _support import Driver, confined, result

pytestmark = [pytest.mark.sandbox, *confined]

NO_CG = {"cpu_shares": None}


def pol(uid: int, **kw: Any) -> dict[str, Any]:
    return {"uid": uid, "gid": uid, "limits": NO_CG, **kw}


def test_identity_capabilities_and_flags(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        st = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines()
                  if ":\\t" in l)
        st = {k: v.strip() for k, v in st.items()}
        result = {"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
                  "caps": [st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
                  "nnp": st["NoNewPrivs"], "seccomp": st["Seccomp"], "pid": os.getpid(),
                  "ppid": os.getppid(), "sid": os.getsid(0) == os.getpid(),
                  "umask": os.umask(0o077), "hostname": socket.gethostname(),
                  "oom": open("/proc/self/oom_score_adj").read().strip()}
    """)
    r = result(driver.run(pol(uid), code))
    assert r["uid"] == [uid] * 3 and r["gid"] == [uid] * 3 and r["groups"] == []
    assert r["caps"] == ["0000000000000000"] * 5
    assert (r["nnp"], r["seccomp"], r["pid"], r["ppid"]) == ("1", "2", 1, 0)
    assert r["sid"] and r["umask"] == 0o077 and r["hostname"] == "kernel" and r["oom"] == "1000"
    host = result(driver.run(pol(uid), code, unconfined=True))
    assert host["uid"] == [0, 0, 0] and host["caps"][2] != "0" * 16 and host["pid"] != 1
    assert (host["nnp"], host["seccomp"]) == ("0", "0")


def test_pid_namespace_hides_host_processes(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        pid = os.fork()
        if pid == 0:
            time.sleep(5)
            os._exit(0)
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        result = {"pids": pids, "child": pid, "kill1": errno_of(os.kill, 1, 0),
                  "host_init": errno_of(os.stat, "/proc/1/cwd")}
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    """)
    r = result(driver.run(pol(uid), code))
    assert r["pids"] == [1, r["child"]] and r["child"] == 2
    host = result(driver.run(pol(uid), code, unconfined=True))
    assert len(host["pids"]) > 5  # positive control: the host has many processes


def test_environment_is_exactly_the_policy_env(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        result = {"environ": dict(os.environ),
                  "proc_environ": errno_of(open, "/proc/self/environ"),
                  "proc1": errno_of(open, "/proc/1/environ")}
    """)
    r = result(driver.run(pol(uid, env=[["HOME", "/tmp"], ["LANG", "C.UTF-8"]]), code))
    assert r["environ"] == {"HOME": "/tmp", "LANG": "C.UTF-8"}
    assert r["proc_environ"] == errno.EACCES and r["proc1"] == errno.EACCES
    host = result(driver.run(pol(uid), code, unconfined=True))
    assert host["environ"]["SECRET_TOKEN"] == "do-not-leak"  # positive control


def test_only_kept_fds_survive(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        result = [fd for fd in range(3, 300) if errno_of(os.fstat, fd) == 0]
    """)
    (kept,) = result(driver.run(pol(uid), code))
    assert kept >= 3


# x86_64 numbers; each call uses harmless invalid arguments so that the unconfined control
# fails (or succeeds) for a reason other than EPERM.
X86_64_DENIED: dict[str, tuple[int, ...]] = {
    "ptrace_attach": (101, 16, 999999), "process_vm_readv": (310, 999999, 0, 0, 0, 0, 0),
    "bpf": (321, 0xFFFF, 0, 0), "io_uring_setup": (425, 1, 0), "userfaultfd": (323, 0xFFFF),
    "keyctl": (250, 0xFFFF), "add_key": (248, 0, 0, 0, 0, 0), "request_key": (249, 0, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0), "mount": (165, 0, 0, 0, 0, 0),
    "umount2": (166, 0, 0), "pivot_root": (155, 0, 0), "chroot": (161, 0),
    "unshare_newuser": (272, 0x10000000 | 0x80000000), "setns": (308, -1, 0),
    "init_module": (175, 0, 0, 0), "finit_module": (313, -1, 0, 0),
    "kexec_load": (246, 0, 0, 0, 0xFFFF0000), "open_by_handle_at": (304, -1, 0, 0),
    "name_to_handle_at": (303, -1, 0, 0, 0, 0), "setuid0": (105, 0), "setgid0": (106, 0),
    "setgroups": (116, 0, 0), "capset": (126, 0, 0), "acct": (163, 1), "swapon": (167, 0, 0),
    "reboot": (169, 0, 0, 0, 0), "syslog": (103, 0xFFFF, 0, 0), "quotactl": (179, 0, 0, 0, 0),
    "mknod": (133, 0, 0, 0), "iopl": (172, 99), "kcmp": (312, -1, -1, 0, 0, 0),
    "pidfd_getfd": (438, -1, 0, 0), "clock_settime": (227, 0xFFFF, 0), "adjtimex": (159, 0),
    "msgctl": (71, -1, 0, 0), "semctl": (66, -1, 0, 0), "shmctl": (31, -1, 0, 0),
    "io_setup": (206, 0, 0), "fanotify_init": (300, 0xFFFFFFFF, 0), "seccomp": (317, 0xFF, 0, 0),
    "landlock_create_ruleset": (444, 0, 0, 0), "mq_open": (240, 0, 0, 0, 0),
    "sethostname": (170, 1, 5), "personality_linux32": (135, 8),
    "clone_newuser_thread": (56, 0x10000000 | 0x00010000 | 0x00000800 | 0x00000100, 0, 0, 0, 0),
    "execve": (59, 0, 0, 0), "modify_ldt": (154, 0, 0, 0), "vmsplice": (278, -1, 0, 0, 0),
}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64")
def test_seccomp_denies_kernel_surface(driver: Driver, uid: int) -> None:
    code = f"result = {{k: raw_syscall(*v) for k, v in {X86_64_DENIED!r}.items()}}"
    r = result(driver.run(pol(uid), code))
    assert {k: v[1] for k, v in r.items() if v != [-1, errno.EPERM]} == {}
    # clone3 answers ENOSYS so glibc falls back to clone (whose flags seccomp can see)
    assert result(driver.run(pol(uid), "result = raw_syscall(435, 0, 0)")) == [-1, errno.ENOSYS]
    host = result(driver.run(pol(uid), code, unconfined=True))
    eperm_anyway = {k for k, v in host.items() if v[1] == errno.EPERM}
    assert not eperm_anyway, f"positive control: these fail with EPERM even unconfined: " \
                             f"{eperm_anyway}"


def test_ioctl_tiocsti_denied_even_with_high_bits(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        import fcntl, array
        r, w = os.pipe()
        os.write(w, b"abc")
        buf = array.array("i", [0])
        fcntl.ioctl(r, 0x541B, buf)  # FIONREAD: an ordinary ioctl works
        result = {"fionread": buf[0],
                  "tiocsti": raw_syscall(16, r, 0x5412, 0)[1],
                  "tiocsti_hi": raw_syscall(16, r, (1 << 32) | 0x5412, 0)[1],
                  "tioclinux": raw_syscall(16, r, 0x541C, 0)[1],
                  "other": raw_syscall(16, r, 0x5401, 0)[1]}
    """)
    r = result(driver.run(pol(uid), code))
    assert r == {"fionread": 3, "tiocsti": errno.EPERM, "tiocsti_hi": errno.EPERM,
                 "tioclinux": errno.EPERM, "other": errno.ENOTTY}
    host = result(driver.run(pol(uid), code, unconfined=True))
    assert host["tiocsti"] == errno.ENOTTY and host["tiocsti_hi"] == errno.ENOTTY


def test_prctl_allowlist(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        name, prio1, prio0 = ctypes.create_string_buffer(b"k"), ctypes.c_int(1), ctypes.c_int(0)
        result = {"set_name": raw_syscall(157, 15, ctypes.addressof(name))[1],
                  "capbset_read": raw_syscall(157, 23, 0)[0],
                  "set_dumpable": raw_syscall(157, 4, 1)[1],
                  "set_seccomp": raw_syscall(157, 22, 1)[1],
                  "set_mm": raw_syscall(157, 35, 1, 0)[1],
                  "set_securebits": raw_syscall(157, 28, 0)[1],
                  "sched_fifo": raw_syscall(144, 0, 1, ctypes.addressof(prio1))[1],
                  "sched_other": raw_syscall(144, 0, 0, ctypes.addressof(prio0))[0]}
    """)
    r = result(driver.run(pol(uid), code))
    assert r == {"set_name": 0, "capbset_read": 0, "set_dumpable": errno.EPERM,
                 "set_seccomp": errno.EPERM, "set_mm": errno.EPERM,
                 "set_securebits": errno.EPERM, "sched_fifo": errno.EPERM, "sched_other": 0}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 exists on x86_64 only")
def test_foreign_abi_syscalls_kill_the_process(driver: Driver, uid: int) -> None:
    resp = driver.run(pol(uid), "raw_syscall(0x40000000 | 39)")  # x32 getpid
    assert resp["status"] == -signal.SIGSYS and resp["child"] is None
    ok = driver.run(pol(uid), "raw_syscall(39)")
    assert ok["status"] == 0 and ok["child"]["ok"]


def test_threads_fork_and_multiprocessing_work(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        import multiprocessing as mp
        out = []
        ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        _, st = os.waitpid(pid, 0)
        with mp.get_context("fork").Pool(2) as pool:
            squares = pool.map(abs, [-1, -2, -3])
        q = mp.get_context("fork").Queue()
        q.put("via /dev/shm semaphores")
        result = {"threads": sorted(out), "fork": os.waitstatus_to_exitcode(st),
                  "pool": squares, "queue": q.get(timeout=5)}
    """)
    r = result(driver.run(pol(uid), code, timeout=30))
    assert r == {"threads": list(range(8)), "fork": 7, "pool": [1, 2, 3],
                 "queue": "via /dev/shm semaphores"}


def test_exec_needs_run_permission(driver: Driver, uid: int) -> None:
    code = textwrap.dedent("""
        def run(argv, **kw):
            try:
                return subprocess.run(argv, capture_output=True, timeout=10, **kw).returncode
            except OSError as e:
                return e.errno
        result = {"true": run(["/usr/bin/true"]), "id": run(["/usr/bin/id"]),
                  "tmp": None, "memfd": None}
        mfd = os.memfd_create("payload", 0)
        os.write(mfd, open("/usr/bin/true", "rb").read())
        result["memfd"] = run([f"/proc/self/fd/{mfd}"], pass_fds=[mfd])
        with open("/tmp/x.sh", "w") as f:
            f.write("#!/usr/bin/true\\n")
        os.chmod("/tmp/x.sh", 0o755)
        result["tmp"] = run(["/tmp/x.sh"])
    """)
    denied = result(driver.run(pol(uid), code))
    assert denied == {"true": errno.EPERM, "id": errno.EPERM, "tmp": errno.EPERM,
                      "memfd": errno.EPERM}
    granted = result(driver.run(pol(uid, exec_paths=["/usr/bin/true"]), code))
    assert granted["true"] == 0                                   # positive control
    assert granted["id"] == errno.EACCES                          # Landlock EXECUTE
    assert granted["tmp"] in (errno.EACCES, errno.EPERM)           # noexec /tmp + Landlock
    assert granted["memfd"] == errno.EACCES                       # vm.memfd_noexec = 2
    host = result(driver.run(pol(uid), code, unconfined=True))
    assert host == {"true": 0, "id": 0, "tmp": 0, "memfd": 0}     # positive control


def test_strict_policy_refuses_a_worker_outside_a_pid_namespace(driver: Driver,
                                                                uid: int) -> None:
    resp = driver.run(pol(uid), "result = 1", plain_fork=True)
    assert resp["child"]["ok"] is False and resp["child"]["stage"] == "namespaces"
    assert "PID 1" in resp["child"]["message"]


def test_limits_without_their_cgroup_fail_closed(driver: Driver, uid: int) -> None:
    resp = driver.run({"uid": uid, "gid": uid}, "result = 1")  # default cpu_shares=1.0
    assert resp["parent_error"]["stage"] == "probe"
    assert "no cpu cgroup" in resp["parent_error"]["message"]
    relaxed = driver.run({"uid": uid, "gid": uid, "enforcement": "best-effort"},
                         "result = os.getuid()")
    assert result(relaxed) == uid


def test_rlimits_cpu_and_open_files(driver: Driver, uid: int) -> None:
    fds = textwrap.dedent("""
        opened, err = [], 0
        while len(opened) < 10000:
            try:
                opened.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as e:
                err = e.errno
                break
        import resource
        result = {"n": len(opened), "err": err,
                  "core": resource.getrlimit(resource.RLIMIT_CORE),
                  "msgqueue": resource.getrlimit(resource.RLIMIT_MSGQUEUE)}
    """)
    r = result(driver.run(pol(uid, limits={**NO_CG, "open_files": 64}), fds))
    assert r["err"] == errno.EMFILE and 55 <= r["n"] < 64
    assert r["core"] == [0, 0] and r["msgqueue"] == [0, 0]
    t0 = time.monotonic()
    spin = driver.run(pol(uid, limits={**NO_CG, "cpu_seconds": 1}), "while True: pass",
                      timeout=20)
    # PID 1 of a PID namespace ignores SIGXCPU without a handler: the hard limit's SIGKILL ends it
    assert spin["status"] == -signal.SIGKILL and 1 <= time.monotonic() - t0 < 10
