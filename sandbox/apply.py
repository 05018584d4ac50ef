"""`fork(policy)` and `apply(policy)`: turn a freshly forked process into a confined worker.

Preparation (`prepare`, run by `fork` in the zygote before forking, cached per policy): probe the
host, `check` the policy (strict mode raises here, before any child exists), plan the mount view,
build the Landlock ruleset and compile the seccomp BPF. The child inherits all of it, so `apply`
only performs system calls.

Nothing between fork and the end of `apply` logs, imports or spawns threads: imports happen at
module load (the zygote imports `sandbox` before forking; after stage 2 the checkout may not be
readable at all), and Landlock/seccomp only bind the calling thread and its future threads.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from . import _syscalls as sc
from . import caps, cgroups, landlock, mounts, namespaces, rlimits, seccomp
from .policy import ALL, SYS_KINDS, NetPolicy, Policy
from .probe import HostFeatures, check, probe


class SandboxError(Exception):
    """A confinement stage failed, or the host cannot enforce what the policy needs.

    `stage` names the stage ("probe", "cgroup", "namespaces", ..., "canary"), `message` what
    could not be enforced. Fail closed: the kernel must not start.
    """

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


@dataclass(frozen=True)
class Prepared:
    """Everything `apply` needs, computed before the fork."""

    policy: Policy
    features: HostFeatures
    missing: tuple[str, ...]
    ops: tuple[mounts.Op, ...]
    ruleset: landlock.Ruleset | None
    bpf: bytes | None
    memory_cgroup: bool


_cache: dict[str, Prepared] = {}
_timings: dict[str, float] = {}


def _has(dirs: tuple[str, ...], *files: str) -> bool:
    return any(os.path.exists(os.path.join(d, f)) for d in dirs for f in files)


def _instance_gaps(policy: Policy, f: HostFeatures) -> list[str]:
    """What this policy *instance* lacks (as opposed to the host, see `check`): a non-root uid
    when the zygote is root, and a cgroup for each limit only a cgroup enforces (memory has the
    RLIMIT_AS fallback; processes the RLIMIT_NPROC one for a unique uid)."""
    lim, dirs, out = policy.limits, policy.cgroup_dirs, []
    if f.root and policy.uid in (None, 0):
        out.append("a non-root policy.uid for the worker (uid 0 keeps DAC ownership of root's "
                   "files even without capabilities)")
    if lim.cpu_shares is not None and not _has(dirs, "cpu.max", "cpu.cfs_quota_us"):
        out.append("cpu limit: no cpu cgroup in policy.cgroup_dirs")
    unique_uid = f.root and policy.uid not in (None, 0)
    if lim.processes is not None and not unique_uid and not _has(dirs, "pids.max"):
        out.append("process limit: no pids cgroup in policy.cgroup_dirs and no unique uid")
    return out


def _view_policy(policy: Policy, landlock_on: bool) -> Policy:
    """Without Landlock a full /proc cannot be narrowed to the granted `sys` files: drop those
    grants (fail closed) and keep the pid-only /proc."""
    if landlock_on or not policy.sys:
        return policy
    kept = ("hostname",) if policy.sys == ALL else tuple(k for k in policy.sys
                                                          if not SYS_KINDS.get(k))
    return replace(policy, sys=kept)


def prepare(policy: Policy, features: HostFeatures | None = None) -> Prepared:
    """Probe, check (strict: raise), and precompute the rules for `policy` (cached)."""
    last = _cache.get("last")
    if last is not None and last.policy == policy and features in (None, last.features):
        return last
    f = features or probe()
    missing = tuple(check(policy, f) + _instance_gaps(policy, f))
    if missing and policy.enforcement == "strict":
        raise SandboxError("probe", "this host cannot enforce: " + "; ".join(missing))
    ruleset = landlock.build(policy, f.landlock_abi) if f.landlock_abi >= 1 else None
    bpf = seccomp.bpf_for(policy) if f.seccomp else None
    ops = mounts.plan(_view_policy(policy, ruleset is not None))
    prep = Prepared(policy, f, missing, ops, ruleset, bpf,
                    _has(policy.cgroup_dirs, "memory.max", "memory.limit_in_bytes"))
    _cache["last"] = prep
    return prep


def fork(policy: Policy, init: str | None = None, supervisor: int | None = None) -> int:
    """Fork a worker for `policy`: returns the child's pid in the parent, 0 in the child.

    The child is in a new PID namespace when the host allows it: PID 2 under `init` (the
    path of a reaper run as PID 1 with the policy's uid/gid, e.g. kerneld-init; its pid is
    `last_init_pid()`) when given and running as root, else PID 1 itself. `supervisor` is a
    pidfd of the process whose exit must end the child's whole tree (the daemon): the init
    gets it as its fd 3 and must exit when it turns readable (kerneld-init does); in a user
    namespace the intermediate process watches it. `supervised()` tells the child whether
    either applies. The child must call `apply(policy)` before anything else. Strict policies
    the host cannot enforce raise `SandboxError` here, in the parent.
    """
    f = prepare(policy).features
    init_argv = None
    if init is not None and f.root and policy.uid is not None:
        if not os.access(init, os.X_OK):
            raise SandboxError("namespaces", f"init program {init} is missing or not executable")
        gid = policy.gid if policy.gid is not None else policy.uid
        init_argv = [init, str(policy.uid), str(gid)]
    return namespaces.fork(f.root, "pid" in f.namespaces, "user" in f.namespaces, init_argv,
                           supervisor)


def warm() -> None:
    """Probe the host and compile every seccomp filter variant now (the zygote calls this
    before it forks anything), so no kernel pays the first-call cost (10-20 ms)."""
    if probe().seccomp:
        for mode in ("none", "proxy", "host"):
            for exec_ok in (False, True):
                seccomp.bpf_for(Policy(net=NetPolicy(mode=mode), exec_paths=ALL if exec_ok
                                       else ()))


def last_init_pid() -> int | None:
    """The host pid of the init spawned by the last `fork(policy, init=...)`, or None."""
    return namespaces.last_init_pid()


def supervised() -> bool:
    """In the child of `fork(policy, ..., supervisor=fd)`: whether its tree ends when the
    supervisor exits (see `fork`); False means the caller must tie the child's life itself."""
    return namespaces.supervised()


def timings() -> dict[str, float]:
    """Milliseconds spent in each stage of the last `apply` in this process."""
    return dict(_timings)


@contextmanager
def _stage(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    except SandboxError:
        raise
    except (OSError, ValueError, mounts.MountError) as e:
        raise SandboxError(name, str(e)) from e
    finally:
        _timings[name] = (time.perf_counter() - t0) * 1000


def _close_fds(keep: Iterable[int]) -> None:
    start = 3
    for fd in sorted({k for k in keep if k >= 3}):
        if fd > start:
            sc.close_range(start, fd - 1)
        start = fd + 1
    sc.close_range(start)


def _session() -> None:
    try:
        os.setsid()
    except PermissionError:
        if os.getsid(0) != os.getpid():
            raise
    os.umask(0o077)


def _namespaces(prep: Prepared) -> None:
    p, f = prep.policy, prep.features
    if "pid" in f.namespaces and not namespaces.in_new_pid_ns() and p.enforcement == "strict":
        raise SandboxError("namespaces", "not PID 1 of a new PID namespace: fork the worker "
                                         "with sandbox.fork(policy)")
    if "mnt" not in f.namespaces or (not f.root and "user" not in f.namespaces):
        return  # best-effort without namespaces (strict already refused)
    t0 = time.perf_counter()
    userns = namespaces.enter(p, root=f.root, available=f.namespaces)
    t1 = time.perf_counter()
    # only as PID 1 of our own PID namespace: elsewhere the sysctl is the host's
    limited_run = p.exec_paths and p.exec_paths != ALL and namespaces.in_new_pid_ns()
    if limited_run and f.memfd_noexec and not namespaces.forbid_memfd_exec():
        raise SandboxError("namespaces", "could not set vm.memfd_noexec=2")
    mounts.build(prep.ops, userns=userns, root=f.root, workdir=p.workdir)
    t2 = time.perf_counter()
    namespaces.finish(p, netns="net" in f.namespaces)
    _timings["namespaces.unshare"] = (t1 - t0) * 1000
    _timings["namespaces.mounts"] = (t2 - t1) * 1000
    _timings["namespaces.finish"] = (time.perf_counter() - t2) * 1000


def _rlimits(prep: Prepared) -> None:
    p, f = prep.policy, prep.features
    unique_uid = f.root and p.uid not in (None, 0)
    vsize = 0 if prep.memory_cgroup else rlimits.vsize()
    rlimits.install(rlimits.plan(p.limits, memory_cgroup=prep.memory_cgroup, nproc=unique_uid,
                                 vsize=vsize))
    rlimits.set_oom_score_adj(1000)


def apply(policy: Policy, keep_fds: Iterable[int] = ()) -> None:
    """Confine the calling (freshly forked, single-threaded) process, in this order:

     1. cgroup: join `policy.cgroup_dirs` (created by the supervisor with `cgroups.create`);
     2. namespaces + mount view: unshare mount/IPC/UTS/cgroup (+net unless net.mode == "host",
        +user when not root), build the minimal root and pivot into it (`policy.mounts`
        idmapped to their owner when switching uid), hostname, `lo` up ("proxy" mode); the
        caller must be PID 1 of a new PID namespace (`fork`);
     3. network proxy: nothing to do here — Landlock (stage 8) allows TCP connect to
        `net.proxy_port` only, the supervisor creates that listener inside our netns;
     4. rlimits (RLIMIT_AS only without a memory cgroup) and oom_score_adj = 1000;
     5. close every fd >= 3 not in `keep_fds`; setsid(); umask(0o077);
     6. drop every capability (bounding, ambient, effective, permitted, inheritable),
        setgroups([]), setresgid/setresuid to policy.gid/uid (root only), and re-arm the
        parent-death signal the caller had set (the uid switch clears it);
     7. PR_SET_NO_NEW_PRIVS, PR_SET_DUMPABLE 0;
     8. Landlock (after checking the process is single-threaded): every FS right of the ABI
        handled, TCP bind denied, connect only to the proxy port, abstract-UNIX and signal
        scopes;
     9. seccomp allowlist, LAST (it forbids what the stages above needed);
    10. reap the helper children of idmapped mounts (`_syscalls.idmap_userns`), then the
        canary self-check: Seccomp mode 2, NoNewPrivs 1, ids and empty capability sets,
        socket(AF_NETLINK) fails, a path outside the grants cannot be read;
    11. environment: os.environ = exactly policy.env.

    Raises SandboxError(stage, message) naming what could not be enforced; the caller must then
    exit without running user code. Strict policies fail (in `prepare`, before anything) if
    `check` reports anything missing or a cgroup-only limit has no cgroup in
    `policy.cgroup_dirs`; "best-effort" ones skip the missing layers. A layer the host *has*
    that fails at run time raises in both modes. Best-effort without a mount namespace keeps
    the host's filesystem, and the Landlock grants then name host paths (/tmp, /dev/shm are
    the host's); without Landlock, `sys` file grants are dropped rather than widened.
    `timings()` returns the milliseconds of each stage afterwards (no logging in here).
    """
    _timings.clear()
    t0 = time.perf_counter()
    with _stage("prepare"):
        prep = prepare(policy)
    f = prep.features
    with _stage("cgroup"):
        cgroups.join(policy.cgroup_dirs)
    with _stage("namespaces"):
        _namespaces(prep)
    with _stage("rlimits"):
        _rlimits(prep)
    with _stage("fds"):
        _close_fds(keep_fds)
        _session()
    with _stage("caps"):
        deathsig = sc.get_pdeathsig()
        caps.drop(policy.uid, policy.gid, switch_ids=f.root and policy.uid is not None)
        if deathsig:  # changing uid clears the parent-death signal: re-arm the caller's
            sc.prctl(sc.PR_SET_PDEATHSIG, deathsig)
    with _stage("no_new_privs"):
        caps.no_new_privs()
        caps.not_dumpable()
    with _stage("landlock"):
        _single_threaded()
        if prep.ruleset is not None:
            landlock.install(prep.ruleset)
    with _stage("seccomp"):
        if prep.bpf is not None:
            seccomp.install(prep.bpf)
    with _stage("reap"):
        sc.reap_userns_helpers()  # the idmapped mounts' helper children (exited by now)
    with _stage("canary"):
        _canary(prep)
    with _stage("env"):
        os.environ.clear()
        os.environ.update(dict(policy.env))
    _timings["total"] = (time.perf_counter() - t0) * 1000


def _single_threaded() -> None:
    """Landlock and seccomp bind the calling thread and its future threads only."""
    tasks = os.listdir("/proc/self/task")
    if len(tasks) != 1:
        raise SandboxError("threads", f"{len(tasks)} threads exist: Landlock and seccomp would "
                                      "leave the others unconfined (apply right after fork)")


def _status() -> dict[str, str]:
    with open("/proc/self/status") as fh:
        return dict(line.split(":\t", 1) for line in fh.read().splitlines() if ":\t" in line)


def _forbidden_readable(policy: Policy) -> bool:
    try:
        if policy.read == ALL or policy.write == ALL:
            os.close(os.open("/etc/shadow", os.O_RDONLY | os.O_CLOEXEC))
        else:
            os.listdir("/")
    except OSError:
        return False
    return True


def _canary_problems(prep: Prepared) -> list[str]:
    p, f = prep.policy, prep.features
    st = {k: v.strip() for k, v in _status().items()}
    bad = [] if st.get("NoNewPrivs") == "1" else ["no_new_privs not set"]
    if prep.bpf is not None and st.get("Seccomp") != "2":
        bad.append(f"seccomp mode {st.get('Seccomp')} (want 2)")
    bad += [f"{k} = {st.get(k)}" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
            if int(st.get(k, "1"), 16) != 0]
    if f.root and p.uid is not None:
        gid = p.gid if p.gid is not None else p.uid
        if set(st.get("Uid", "").split()) != {str(p.uid)} or \
                set(st.get("Gid", "").split()) != {str(gid)} or st.get("Groups", ""):
            bad.append(f"ids Uid={st.get('Uid')} Gid={st.get('Gid')} Groups={st.get('Groups')}")
    if prep.bpf is not None:
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
            bad.append("socket(AF_NETLINK) allowed")
        except OSError:
            pass
    if prep.ruleset is not None and _forbidden_readable(p):
        bad.append("a path outside the read grants is readable")
    return bad


def _canary(prep: Prepared) -> None:
    bad = _canary_problems(prep)
    if bad:
        raise SandboxError("canary", "; ".join(bad))
