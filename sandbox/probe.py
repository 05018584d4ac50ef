"""What this host can enforce (`probe`), and what a policy needs that it cannot (`check`).

Why a probe: confinement must fail closed. A layer that silently does nothing (Landlock disabled,
an old ABI that ignores TCP rules, a container that forbids unshare) is worse than an error. So
`apply` in strict mode first asks `check(policy, probe())` and refuses to start a kernel when
anything the policy needs is missing; "best-effort" policies skip the missing layers instead.

`probe()` runs once per process (cached; ~2-3 ms, most of it a short-lived child that really
tries each namespace, since containers and LSMs can forbid what the kernel supports).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache

from . import _syscalls as sc
from . import cgroups, seccomp
from .policy import ALL, SYS_KINDS, Policy

NAMESPACES = {"user": sc.CLONE_NEWUSER, "mnt": sc.CLONE_NEWNS, "net": sc.CLONE_NEWNET,
              "pid": sc.CLONE_NEWPID, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS,
              "cgroup": sc.CLONE_NEWCGROUP}
_ORDER = ("user", "mnt", "net", "pid", "ipc", "uts", "cgroup")
PR_GET_SECCOMP = 21


@dataclass(frozen=True)
class HostFeatures:
    """The confinement features usable by this process on this host."""

    root: bool
    machine: str
    landlock_abi: int
    seccomp: bool
    namespaces: frozenset[str]
    cgroup_version: int | None
    cgroup_controllers: frozenset[str]
    memfd_noexec: bool = False  # per-PID-namespace vm.memfd_noexec settable (Linux >= 6.3, root)
    # mount_setattr usable (Linux >= 5.12, not blocked), as root: idmapped `policy.mounts`.
    # Whether a given filesystem supports idmapping is only known when mounting it.
    idmap_mounts: bool = False

    @property
    def user_namespaces(self) -> bool:
        return "user" in self.namespaces


def _seccomp_ok() -> bool:
    """libseccomp importable, the kernel has seccomp, and we know this architecture."""
    try:
        sc.prctl(PR_GET_SECCOMP)
    except OSError:  # EINVAL: kernel built without CONFIG_SECCOMP
        return False
    return seccomp.available() and bool(sc.NR)


def _try_namespaces(root: bool) -> int:
    """In a child: unshare each namespace (in a user namespace first when not root)."""
    ok = 0
    if not root:
        try:
            sc.unshare(sc.CLONE_NEWUSER)
            ok |= 1
        except OSError:
            return 0
    for bit, name in enumerate(_ORDER):
        if name == "user" and not root:
            continue
        try:
            sc.unshare(NAMESPACES[name])
            ok |= 1 << bit
        except OSError:
            pass
    return ok


def _namespaces(root: bool) -> frozenset[str]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            os.write(w, bytes([_try_namespaces(root)]))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 1)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    mask = data[0] if data else 0
    return frozenset(n for bit, n in enumerate(_ORDER) if mask & (1 << bit))


@lru_cache(maxsize=1)
def probe() -> HostFeatures:
    """Probe (once per process) what this host lets this process enforce."""
    root = os.geteuid() == 0
    lay = cgroups.layout()
    try:
        ctrls = lay.controllers
    except OSError:
        ctrls = frozenset()
    return HostFeatures(
        root=root, machine=platform.machine(), landlock_abi=sc.landlock_abi(),
        seccomp=_seccomp_ok(), namespaces=_namespaces(root),
        cgroup_version=lay.version, cgroup_controllers=ctrls,
        memfd_noexec=root and os.path.exists("/proc/sys/vm/memfd_noexec"),
        idmap_mounts=root and sc.mount_setattr_available())


def _ns_missing(policy: Policy, f: HostFeatures) -> list[str]:
    out = []
    if not f.root and "user" not in f.namespaces:
        out.append("user namespace (not root: needed for mount/net/pid namespaces)")
    need = ["mnt", "pid", "ipc", "uts", "cgroup"] + (["net"] if policy.net.mode != "host"
                                                       else [])
    out += [f"{n} namespace" for n in need if n not in f.namespaces]
    return out


def _landlock_missing(policy: Policy, f: HostFeatures) -> list[str]:
    if f.landlock_abi < 1:
        return ["landlock"]
    out = []
    if policy.net.mode == "proxy" and f.landlock_abi < 4:
        out.append("landlock ABI >= 4 for TCP port rules")
    if f.landlock_abi < 6 and (policy.net.mode == "host" or "pid" not in f.namespaces):
        out.append("landlock ABI >= 6 for signal and abstract-socket scoping")
    return out


def _limits_missing(policy: Policy, f: HostFeatures) -> list[str]:
    out = []
    lim = policy.limits
    unique_uid = f.root and policy.uid not in (None, 0)
    if lim.processes is not None and "pids" not in f.cgroup_controllers and not unique_uid:
        out.append("cgroup pids controller (or a unique non-root uid for RLIMIT_NPROC)")
    if lim.cpu_shares is not None and "cpu" not in f.cgroup_controllers:
        out.append("cgroup cpu controller")
    return out


def check(policy: Policy, features: HostFeatures) -> list[str]:
    """Human-readable names of what `policy` needs that this host cannot enforce ([] = all)."""
    out = [] if features.seccomp else ["seccomp"]
    out += _landlock_missing(policy, features) + _ns_missing(policy, features)
    out += _limits_missing(policy, features)
    if policy.uid is not None and policy.uid != os.getuid() and not features.root:
        out.append(f"switch to uid {policy.uid} (needs root)")
    if policy.exec_paths and policy.exec_paths != ALL and not features.memfd_noexec:
        out.append("vm.memfd_noexec (Linux >= 6.3, root): Landlock cannot stop execve of a "
                   "memfd, so `run` could not be limited to the listed programs")
    if policy.mounts and policy.uid is not None and features.root \
            and not features.idmap_mounts:
        out.append("idmapped mounts (mount_setattr, Linux >= 5.12): the kernel's uid could not "
                   "act as the owner of its filesystem mount")
    if policy.sys != ALL:
        out += [f"unknown sys kind {k!r}" for k in policy.sys if k not in SYS_KINDS]
    return out
