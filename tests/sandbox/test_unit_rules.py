"""Pure tests of rule building: Landlock rulesets, the seccomp table, mount plans, cgroup values,
rlimits. No root, no children."""

from __future__ import annotations

import itertools
import random
import resource

import pytest

from sandbox import (
    ALL,
    Limits,
    Mount,
    NetPolicy,
    Policy,
    cgroups,
    landlock,
    mounts,
    rlimits,
    seccomp,
)
from sandbox import _syscalls as sc
from sandbox.landlock import EXECUTE, READ, READ_FILE, REFER, TRUNCATE, WRITE

# --- Landlock --------------------------------------------------------------------------------


def rules_for(rs: landlock.Ruleset, path: str) -> int:
    acc = 0
    for p, a in rs.paths:
        if p == path:
            acc |= a
    return acc


@pytest.mark.parametrize(("abi", "mask"), [(1, (1 << 13) - 1), (2, (1 << 14) - 1),
                                           (3, (1 << 15) - 1), (4, (1 << 15) - 1),
                                           (5, (1 << 16) - 1), (7, (1 << 16) - 1)])
def test_every_fs_right_of_the_abi_is_handled(abi: int, mask: int) -> None:
    assert landlock.handled_fs(abi) == mask
    assert landlock.build(Policy(), abi).handled_fs == mask


def test_default_policy_grants_read_only_system_and_private_scratch() -> None:
    rs = landlock.build(Policy(), 7)
    # read-only binds: READ plus the inert TRUNCATE that ends Landlock's walk at the grant
    assert rules_for(rs, "/usr") == READ | TRUNCATE
    assert rules_for(rs, "/opt/kerneld/runtime") == READ | TRUNCATE
    assert rules_for(rs, "/tmp") == READ | WRITE
    assert rules_for(rs, "/proc") == READ
    assert rules_for(rs, "/dev/null") == READ_FILE | landlock.WRITE_FILE | TRUNCATE
    assert rules_for(rs, "/") == 0 and rules_for(rs, "/etc") == 0
    assert not any(a & EXECUTE for _, a in rs.paths), "nothing is executable without `run`"
    assert not any(a & (landlock.MAKE_CHAR | landlock.MAKE_BLOCK | landlock.IOCTL_DEV)
                   for _, a in rs.paths)


def test_write_implies_read_and_refer_truncate_follow_the_abi() -> None:
    p = Policy(write=("/w",), read=("/r",), mounts=(Mount("/h", "/home/kernel"),
                                                      Mount("/s", "/seed", read_only=True)))
    rs = landlock.build(p, 7)
    assert rules_for(rs, "/w") == READ | WRITE
    assert rules_for(rs, "/r") == READ | TRUNCATE
    assert rules_for(rs, "/home/kernel") == READ | WRITE
    assert rules_for(rs, "/seed") == READ | TRUNCATE
    rs1 = landlock.build(p, 1)
    assert rules_for(rs1, "/w") & (REFER | TRUNCATE) == 0  # not handled at ABI 1 → not granted
    assert rules_for(rs1, "/r") == READ


def test_exec_only_on_exec_paths_plus_the_loader() -> None:
    rs = landlock.build(Policy(exec_paths=("/usr/bin/true",)), 7)
    execs = {p for p, a in rs.paths if a & EXECUTE}
    assert execs == {"/usr/bin/true", *landlock.ELF_INTERPRETERS}
    rs_all = landlock.build(Policy(exec_paths=ALL), 7)
    assert rules_for(rs_all, "/usr") & EXECUTE and rules_for(rs_all, "/tmp") & EXECUTE


def test_read_all_grants_root_and_sys_kinds_narrow_proc() -> None:
    assert rules_for(landlock.build(Policy(read=ALL), 7), "/") == READ
    rs = landlock.build(Policy(sys=("loadavg",)), 7)
    assert rules_for(rs, "/proc") == 0
    assert rules_for(rs, "/proc/self") == READ and rules_for(rs, "/proc/loadavg") == READ
    assert rules_for(landlock.build(Policy(sys=ALL), 7), "/sys") == READ


@pytest.mark.parametrize(("mode", "abi", "net", "ports"), [
    ("none", 7, 3, ()), ("proxy", 7, 3, ((3128, 2),)), ("host", 7, 0, ()),
    ("proxy", 3, 0, ()),
])
def test_tcp_rules(mode: str, abi: int, net: int, ports: tuple[tuple[int, int], ...]) -> None:
    rs = landlock.build(Policy(net=NetPolicy(mode=mode)), abi)  # type: ignore[arg-type]
    assert rs.handled_net == net and rs.ports == ports


def test_scopes_from_abi_6() -> None:
    assert landlock.build(Policy(), 6).scoped == 3
    assert landlock.build(Policy(), 5).scoped == 0


def test_path_beneath_attr_is_packed() -> None:
    import ctypes
    assert ctypes.sizeof(sc._PathBeneathAttr) == 12


# --- seccomp ---------------------------------------------------------------------------------

DENIED = ["ptrace", "process_vm_readv", "process_vm_writev", "bpf", "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "keyctl", "add_key", "request_key", "perf_event_open", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fspick", "mount_setattr", "unshare", "setns", "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "open_by_handle_at", "name_to_handle_at", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semctl", "semtimedop", "shmget", "shmat", "shmdt", "shmctl", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "capset", "acct", "swapon", "swapoff", "reboot", "syslog", "quotactl", "mknod", "mknodat", "lookup_dcookie", "vhangup", "iopl", "ioperm", "kcmp", "pidfd_getfd", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "modify_ldt", "io_setup", "io_submit", "fanotify_init", "mq_open", "seccomp", "landlock_create_ruleset", "vmsplice", "mlockall", "sethostname", "chown", "fchown", "lchown", "fchownat", "sync", "syncfs", "uselib", "execve", "execveat"]


def names(rules: tuple[seccomp.Rule, ...]) -> set[str]:
    return {r.name for r in rules if r.action == "allow"}


def test_dangerous_syscalls_are_absent_from_the_allowlist() -> None:
    allowed = names(seccomp.build(Policy()))
    assert not allowed & set(DENIED), allowed & set(DENIED)


def test_every_rule_has_a_reason() -> None:
    assert all(r.reason for r in seccomp.build(Policy(exec_paths=ALL)))


def test_exec_only_with_run_permission() -> None:
    assert "execve" not in names(seccomp.build(Policy()))
    assert {"execve", "execveat"} <= names(seccomp.build(Policy(exec_paths=("/usr/bin/true",))))


def test_chmod_never_sets_setuid_or_setgid() -> None:
    rules = [r for r in seccomp.build(Policy()) if r.name in ("chmod", "fchmod", "fchmodat")]
    assert {r.name: r.args for r in rules} == {
        "chmod": (seccomp.Arg(1, "masked_eq", 0, 0o6000),),
        "fchmod": (seccomp.Arg(1, "masked_eq", 0, 0o6000),),
        "fchmodat": (seccomp.Arg(2, "masked_eq", 0, 0o6000),)}
    assert len(rules) == 3 and "fchmodat2" not in names(seccomp.build(Policy(exec_paths=ALL)))


def test_clone3_is_enosys_and_clone_has_no_namespace_flags() -> None:
    rules = seccomp.build(Policy())
    assert [r.action for r in rules if r.name == "clone3"] == ["enosys"]
    (clone,) = [r for r in rules if r.name == "clone"]
    assert clone.args == (seccomp.Arg(0, "masked_eq", 0, seccomp.NS_FLAGS),)
    for flag in ("NEWNS", "NEWUSER", "NEWPID", "NEWNET", "NEWIPC", "NEWUTS", "NEWCGROUP"):
        assert seccomp.NS_FLAGS & getattr(sc, "CLONE_" + flag)


def socket_families(mode: str) -> set[tuple[int, ...]]:
    rules = seccomp.build(Policy(net=NetPolicy(mode=mode)))  # type: ignore[arg-type]
    return {tuple(a.value for a in r.args) for r in rules if r.name == "socket"}


def test_socket_families_per_mode() -> None:
    assert socket_families("none") == {(1,)}
    assert socket_families("host") == {(1,), (2,), (10,)}
    assert socket_families("proxy") == {(1,), (2, 1, 0), (2, 1, 6), (10, 1, 0), (10, 1, 6)}


def test_sends_exclude_fastopen() -> None:
    for r in seccomp.build(Policy()):
        if r.name in ("sendto", "sendmsg", "sendmmsg"):
            assert r.args[0].op == "masked_eq" and r.args[0].mask == seccomp.MSG_FASTOPEN
            assert r.args[0].value == 0


def in_blocks(x: int, blocks: list[tuple[int, int]]) -> bool:
    return any(x & m == v for m, v in blocks)


def test_masked_ranges_cover_exactly() -> None:
    rnd = random.Random(7)
    for lo, hi in [(0, 0x5411), (0x5413, 0x541B), (0x541D, 0xFFFFFFFF), (5, 5), (3, 17)]:
        blocks = seccomp.masked_ranges(lo, hi)
        probes = [lo, hi, lo - 1, hi + 1, 0, 0xFFFFFFFF, 1 << 32, (1 << 32) | lo]
        probes += [rnd.randrange(0, 1 << 33) for _ in range(2000)]
        for x in probes:
            if x >= 0:
                assert in_blocks(x, blocks) == (lo <= x <= hi), (hex(x), lo, hi)


def test_ioctl_allows_everything_but_tiocsti_tioclinux_and_high_bits() -> None:
    blocks = [(a.mask, a.value) for r in seccomp.build(Policy()) if r.name == "ioctl"
              for a in r.args]
    for cmd in (0x5401, 0x541B, 0x5413, 0x80045430, 0xC0045401, 0xFFFFFFFF, 0):
        assert in_blocks(cmd, blocks), hex(cmd)
    for cmd in (seccomp.TIOCSTI, seccomp.TIOCLINUX, (1 << 32) | seccomp.TIOCSTI, 1 << 40):
        assert not in_blocks(cmd, blocks), hex(cmd)


@pytest.mark.skipif(not seccomp.available(), reason="libseccomp missing")
def test_compiled_filter_defaults_and_bad_arch() -> None:
    rules = seccomp.build(Policy())
    text = seccomp.pfc(rules)
    assert "action ERRNO(1);" in text and "action KILL_PROCESS;" in text
    assert "ERRNO(38)" in text  # clone3 → ENOSYS
    bpf = seccomp.compile(rules)
    assert len(bpf) % 8 == 0 and len(bpf) // 8 < 4096


# --- mount plan -------------------------------------------------------------------------------


def kinds(ops: tuple[mounts.Op, ...]) -> list[tuple[str, str]]:
    return [(o.kind, o.target) for o in ops]


def test_default_plan_is_minimal() -> None:
    ops = mounts.plan(Policy())
    assert kinds(ops)[:3] == [("tmpfs", "/tmp"), ("dev", "/dev/shm"), ("proc", "/proc")]
    binds = {o.target for o in ops if o.kind == "bind"}
    assert binds == set(Policy().system_paths) | {"/opt/kerneld/runtime"}
    assert all(o.flags & sc.MS_RDONLY for o in ops if o.kind == "bind")
    (proc,) = [o for o in ops if o.kind == "proc"]
    assert proc.data == "subset=pid"
    assert not any(o.kind == "sysfs" or o.target.startswith("/sys") for o in ops)


def test_plan_orders_parents_first_and_sets_flags() -> None:
    p = Policy(read=("/data/a/b",), write=("/data",), mounts=(Mount("/srv/k", "/home/kernel"),),
               bind_files=(("/run/x.sock", "/run/kerneld-worker.sock"),),
               limits=Limits(disk_bytes=1 << 20), uid=64001, gid=64002)
    ops = mounts.plan(p)
    binds = [o for o in ops if o.kind == "bind"]
    depths = [o.target.count("/") for o in binds]
    assert depths == sorted(depths)
    by_target = {o.target: o for o in binds}
    assert by_target["/data"].flags & sc.MS_RDONLY == 0
    assert by_target["/data"].flags & sc.MS_NOEXEC
    assert by_target["/data/a/b"].flags & sc.MS_RDONLY
    assert by_target["/home/kernel"].source == "/srv/k" and not by_target["/home/kernel"].optional
    assert by_target["/run/kerneld-worker.sock"].source == "/run/x.sock"
    tmp = ops[0]
    assert "size=1048576" in tmp.data and "uid=64001" in tmp.data and "gid=64002" in tmp.data
    assert "mode=0700" in tmp.data


def test_filesystem_mounts_are_idmapped_when_the_uid_switches() -> None:
    m = Mount("/srv/k", "/home/kernel")
    (op,) = [o for o in mounts.plan(Policy(uid=64001, gid=64002, mounts=(m,))) if o.idmap]
    assert op.target == "/home/kernel" and op.source == "/srv/k"
    assert op.idmap == mounts.IdMap(64001, 64002, None, None, required=True)
    assert op.flags == sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    best = mounts.plan(Policy(uid=64001, mounts=(Mount("/s", "/t", True, 5, 6),),
                              enforcement="best-effort"))
    (op,) = [o for o in best if o.idmap]
    assert op.idmap == mounts.IdMap(64001, 64001, 5, 6, required=False)
    assert op.flags & sc.MS_RDONLY
    # no uid switch, or the kernel's own ids asked for: a plain bind
    assert not any(o.idmap for o in mounts.plan(Policy(mounts=(m,))))
    same = Mount("/srv/k", "/home/kernel", map_uid=64001, map_gid=64001)
    assert not any(o.idmap for o in mounts.plan(Policy(uid=64001, mounts=(same,))))
    # other binds (read/write grants) are never idmapped
    assert not any(o.idmap for o in mounts.plan(Policy(uid=64001, write=("/w",), read=("/r",))))


def test_proc_is_mounted_before_any_idmapped_bind() -> None:
    """The idmap user namespace is found through the view's own /proc (our PID namespace)."""
    ops = mounts.plan(Policy(uid=1, read=ALL, mounts=(Mount("/srv/k", "/home/kernel"),)))
    kinds_ = [o.kind if not o.idmap else "idmap" for o in ops]
    assert kinds_.index("proc") < kinds_.index("idmap")


def test_mount_attrs_and_gid_map() -> None:
    assert mounts.mount_attrs(sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC) == (
        sc.MOUNT_ATTR_RDONLY | sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | sc.MOUNT_ATTR_NOEXEC)
    assert mounts.mount_attrs(sc.MS_BIND) == 0
    assert mounts.gid_map(0, 200000) == "0 200000 1\n1 1 199999\n200001 200001 4294767294\n"
    assert mounts.gid_map(1234, 200000) == ("1234 200000 1\n0 0 1234\n1235 1235 198765\n"
                                            "200001 200001 4294767294\n")
    for host, kernel in [(0, 200000), (1234, 200000), (200000, 200000), (5, 4), (0, 0),
                         (4294967294, 7)]:
        extents = [tuple(map(int, line.split())) for line in
                   mounts.gid_map(host, kernel).splitlines()]
        inside = [range(a, a + n) for a, _, n in extents]
        outside = [range(b, b + n) for _, b, n in extents]
        assert extents[0] == (host, kernel, 1) and len(extents) <= 5  # no sorting needed
        assert sum(len(r) for r in inside) == 0xFFFFFFFF - (host != kernel)
        for ranges in (inside, outside):  # injective: no id twice on either side
            spans = sorted((r.start, r.stop) for r in ranges)
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
            assert spans[-1][1] <= 0xFFFFFFFF


def test_exec_grant_lifts_noexec() -> None:
    ops = mounts.plan(Policy(write=("/w",), exec_paths=("/w/bin/tool",)))
    assert not next(o for o in ops if o.target == "/w").flags & sc.MS_NOEXEC
    assert not mounts.plan(Policy(exec_paths=ALL))[0].flags & sc.MS_NOEXEC
    assert not any(o.flags & sc.MS_NOEXEC for o in mounts.plan(Policy(write=("/w",), ffi=True)))
    assert mounts.plan(Policy())[0].flags & sc.MS_NOEXEC      # /tmp
    ro = mounts.plan(Policy(read=("/r",)))
    assert not next(o for o in ro if o.target == "/r").flags & sc.MS_NOEXEC  # libraries load


def test_read_all_binds_host_root_and_masks_denials() -> None:
    ops = mounts.plan(Policy(read=ALL, write=("/w",), deny_read=("/secret",),
                             deny_write=("/w/ro",)))
    assert ("hostroot", "/") in kinds(ops)
    assert next(o for o in ops if o.kind == "hostroot").flags & sc.MS_RDONLY
    assert not any(o.target == "/usr" for o in ops)  # part of the host root already
    assert ("bind", "/w") in kinds(ops)
    assert kinds(ops)[-2:] == [("readonly", "/w/ro"), ("mask", "/secret")]


def test_sys_kinds_select_proc_and_sys() -> None:
    full = next(o for o in mounts.plan(Policy(sys=("meminfo",))) if o.kind == "proc")
    assert full.data == ""
    assert ("bind", "/sys/devices/system/cpu") in kinds(mounts.plan(Policy(sys=("cpus",))))
    assert ("sysfs", "/sys") in kinds(mounts.plan(Policy(sys=ALL)))
    hostname_only = next(o for o in mounts.plan(Policy(sys=("hostname",))) if o.kind == "proc")
    assert "subset=pid" in hostname_only.data


# --- cgroup values and layout -------------------------------------------------------------------


def test_v2_values() -> None:
    v = cgroups.v2_values(Limits(memory_bytes=1 << 20, processes=8, cpu_shares=0.5))
    assert v == {"memory.max": "1048576", "memory.swap.max": "0", "memory.oom.group": "1",
                 "pids.max": "8", "cpu.max": "50000 100000"}
    unlimited = cgroups.v2_values(Limits(memory_bytes=None, processes=None, cpu_shares=None))
    assert unlimited == {"memory.oom.group": "1", "pids.max": "max", "cpu.max": "max 100000"}


def test_v1_values() -> None:
    lim = Limits(memory_bytes=1 << 20, processes=8, cpu_shares=2.0)
    assert list(cgroups.v1_values("memory", lim)) == [
        "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.swappiness"]
    assert cgroups.v1_values("pids", lim) == {"pids.max": "8"}
    assert cgroups.v1_values("cpu", lim) == {"cpu.cfs_period_us": "100000",
                                             "cpu.cfs_quota_us": "200000"}
    assert cgroups.v1_values("freezer", lim) == {}


def test_layout_parsing_v1_and_v2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    v1 = tmp_path / "v1"
    for c in ("memory", "pids"):
        (v1 / c / "svc").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("2:memory:/svc\n1:pids:/svc\n0::/\n")
    (proc / "self" / "mountinfo").write_text(
        f"30 20 0:26 / {v1}/memory rw - cgroup cgroup rw,memory\n"
        f"31 20 0:27 / {v1}/pids rw - cgroup cgroup rw,pids\n")
    lay = cgroups.layout.__wrapped__(str(proc))
    assert lay == cgroups.Layout(1, (("memory", f"{v1}/memory/svc"), ("pids", f"{v1}/pids/svc")))
    v2 = tmp_path / "v2" / "svc"
    v2.mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    (proc / "self" / "cgroup").write_text("0::/svc\n")
    (proc / "self" / "mountinfo").write_text(
        f"40 20 0:30 / {tmp_path}/v2 rw - cgroup2 cgroup2 rw\n")
    lay2 = cgroups.layout.__wrapped__(str(proc))
    assert lay2 == cgroups.Layout(2, (("unified", str(v2)),))
    assert lay2.controllers == {"cpu", "memory", "pids"}


def test_cgroup_names_are_validated() -> None:
    for bad in ("", "..", "a/b", "x\0"):
        with pytest.raises(ValueError):
            cgroups.create(bad, Limits(), lay=cgroups.Layout(None, ()))


# --- rlimits -----------------------------------------------------------------------------------


def test_rlimits_plan() -> None:
    lim = Limits(memory_bytes=100, cpu_seconds=10, processes=5, open_files=50,
                 file_size_bytes=7)
    plan = {r: (s, h) for r, s, h in rlimits.plan(lim, memory_cgroup=True, nproc=True,
                                                  vsize=1000)}
    assert plan[resource.RLIMIT_CORE] == (0, 0) and plan[resource.RLIMIT_MSGQUEUE] == (0, 0)
    assert plan[resource.RLIMIT_CPU] == (10, 12)
    assert plan[resource.RLIMIT_FSIZE] == (7, 7) and plan[resource.RLIMIT_NOFILE] == (50, 50)
    assert plan[resource.RLIMIT_NPROC] == (5, 5)
    assert resource.RLIMIT_AS not in plan, "no RLIMIT_AS when a memory cgroup bounds the worker"
    fallback = {r: (s, h) for r, s, h in rlimits.plan(lim, memory_cgroup=False, nproc=False,
                                                      vsize=1000)}
    assert fallback[resource.RLIMIT_AS] == (1100, 1100)
    assert resource.RLIMIT_NPROC not in fallback, "NPROC is meaningless without a unique uid"
