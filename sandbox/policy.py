"""The confinement policy of one worker: a plain, immutable description of what it may do.

`kerneld.permissions.lower` lowers a TOML profile (plus a request's narrowing) into a
`Policy`; `sandbox.apply(policy)` enforces it inside the freshly forked worker. Nothing here
touches the OS: policies are data, so they can be built, compared and unit-tested anywhere.

Paths are absolute host paths, already resolved (symlinks followed) by whoever built the policy.
`ALL` stands for Deno's `true` ("every path" / "every program" / "every kind").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ALL: Literal["*"] = "*"

Enforcement = Literal["strict", "best-effort"]

# `sys` kinds a policy may grant, and the paths (inside the kernel's view) each one exposes.
# Deno's names are accepted as aliases. "hostname" exposes no path: it keeps the host's name
# instead of `Policy.hostname` in the kernel's UTS namespace.
SYS_KINDS: dict[str, tuple[str, ...]] = {
    "hostname": (),
    "loadavg": ("/proc/loadavg",),
    "meminfo": ("/proc/meminfo",),
    "systemMemoryInfo": ("/proc/meminfo",),
    "cpus": ("/proc/cpuinfo", "/proc/stat", "/sys/devices/system/cpu"),
    "uptime": ("/proc/uptime",),
    "osUptime": ("/proc/uptime",),
    "version": ("/proc/version", "/proc/sys/kernel/osrelease"),
    "osRelease": ("/proc/version", "/proc/sys/kernel/osrelease"),
}


@dataclass(frozen=True)
class Mount:
    """A host directory shown at `target` inside the kernel's mount namespace.

    When the worker switches to `Policy.uid` (root zygote), the mount is *idmapped*: inside
    it, the host ids `map_uid`/`map_gid` appear as the kernel's uid/gid (so the owner's
    permission bits apply to the kernel) and whatever the kernel creates lands on disk owned
    by `map_uid:map_gid`; every other on-disk id appears as the overflow id (65534).
    None (the default) means the owner of `source` as `stat` sees it when the mount is made;
    `map_uid == Policy.uid` (and `map_gid == Policy.gid`) means no idmapping.
    `identity`: (st_dev, st_ino) of the directory the supervisor checked; the worker then
    reaches `source` without following any symlink, mounts only that very inode (from its own
    handle) and fails closed if the path now leads elsewhere.
    """

    source: str
    target: str
    read_only: bool = False
    map_uid: int | None = None
    map_gid: int | None = None
    identity: tuple[int, int] | None = None


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means "not limited by this layer"."""

    memory_bytes: int | None = 512 * 1024**2     # cgroup memory (and RLIMIT_AS fallback)
    cpu_seconds: int | None = 600                # RLIMIT_CPU (SIGXCPU, then SIGKILL)
    processes: int | None = 64                   # pids cgroup / RLIMIT_NPROC per unique uid
    open_files: int | None = 256                 # RLIMIT_NOFILE
    file_size_bytes: int | None = 64 * 1024**2   # RLIMIT_FSIZE (EFBIG past it)
    disk_bytes: int | None = 64 * 1024**2        # size of the private /tmp tmpfs (and /dev/shm)
    cpu_shares: float | None = 1.0               # cpu quota in cores (cgroup cpu.max / cfs)


@dataclass(frozen=True)
class NetPolicy:
    """Network access. mode="none": own netns with only `lo`. mode="proxy": own netns, and the
    only reachable TCP endpoint is the supervisor's proxy listener at 127.0.0.1:`proxy_port`
    inside the netns (the proxy enforces the allowlist). mode="host": the host's network
    (Deno's `net = true`), no namespace."""

    mode: Literal["none", "proxy", "host"] = "none"
    proxy_port: int = 3128


@dataclass(frozen=True)
class Policy:
    """Everything `sandbox.apply` needs, in the order it needs it.

    read/write: host paths the kernel may read / write (write implies read), or ALL.
    deny_read/deny_write: paths carved out of an ALL grant (deny beats allow).
    exec_paths: programs (or directories) the kernel may execve, or ALL; the runtime
        interpreter is always executable for the worker itself but never re-executable
        by user code unless listed here.
    system_paths: read+execute paths needed to run at all (the runtime prefix, /usr, /lib...).
    sys: `/proc` and `/sys` views granted (e.g. "loadavg", "meminfo", "cpus") or ALL.
    mounts: bind mounts (the seed's filesystem mounting); the first one, if any, is the cwd.
        Idmapped to their owner when `uid` is set (see `Mount`).
    bind_files: (host path, path inside) for single files to make visible (e.g. the worker's
        ZeroMQ endpoint socket).
    cgroup_dirs: cgroup directories (one per v1 controller, or one v2 dir) created by the
        supervisor that the worker joins first.
    uid/gid: the unprivileged identity to switch to; None keeps the current one (non-root).
    env: the exact environment user code starts with.
    """

    uid: int | None = None
    gid: int | None = None
    read: tuple[str, ...] | Literal["*"] = ()
    write: tuple[str, ...] | Literal["*"] = ()
    deny_read: tuple[str, ...] = ()
    deny_write: tuple[str, ...] = ()
    exec_paths: tuple[str, ...] | Literal["*"] = ()
    system_paths: tuple[str, ...] = (
        "/usr", "/lib", "/lib64", "/bin", "/sbin",
        "/etc/ssl", "/etc/ca-certificates", "/etc/fonts", "/etc/localtime", "/etc/mime.types",
    )
    runtime_prefix: str = "/opt/kerneld/runtime"  # read + execute, always
    sys: tuple[str, ...] | Literal["*"] = ()
    net: NetPolicy = field(default_factory=NetPolicy)
    mounts: tuple[Mount, ...] = ()
    bind_files: tuple[tuple[str, str], ...] = ()
    workdir: str = "/tmp"
    hostname: str = "kernel"
    limits: Limits = field(default_factory=Limits)
    cgroup_dirs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    enforcement: Enforcement = "strict"
    ffi: bool = False

