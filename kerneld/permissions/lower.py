"""The one lowering: a profile + one kernel's request → everything that kernel starts with.

Every part of starting a kernel needs some of the same decision: the sandbox policy (the
worker's confinement), its environment, the host directory it mounts, the rules its network
proxy enforces, its cgroup limits. Each used to be derived where it was needed, so one option
was parsed several times (the filesystem when the host directory was opened and again when the
policy was built; net rules for the policy and again for the proxy; the env by the manager
and by the profile, with two error classes). Here the request is validated and lowered once
per kernel into a frozen `Lowered`; the kernel record keeps it (a restart reuses it) and the
backends only read it:

    lowered = lower(profile, env=..., filesystem=..., permissions=..., limits=...)
    lowered.env  .filesystem  .net_mode  .net_allow/.net_deny  .limits()
    host_dir = lowered.open_host_dir(mount_roots=..., caller=...)        → HostDir | None
    lowered.policy(uid=..., gid=..., host_env=os.environ, host_dir=host_dir) → sandbox.Policy

This is also the only request validation of env, filesystem and net (net entries through
`narrow`): errors are `ProfileError`s citing `request:env...`, `request:filesystem...`,
`request:permissions...`, `request:limits...`, or `PermissionDenied` when a request would widen
its profile. `lower` touches the host only for `check_filesystem`'s `isdir` of the root; the
directory itself is opened, checked and pinned once, by `Lowered.open_host_dir` (`hostdir`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from kerneld.access import Caller
from kerneld.net.match import NetRule, Rules, parse_rules
from kerneld.permissions import values as v
from kerneld.permissions.hostdir import HostDir, open_host_dir
from kerneld.permissions.narrow import narrow
from kerneld.permissions.profile import NetMode, Profile
from kerneld.permissions.values import (
    DEFAULT_RUNTIME_PREFIX,
    REQUEST,
    SYS_KINDS,
    FilesystemSpec,
    Grant,
)
from sandbox.policy import ALL, Limits, Mount, NetPolicy, Policy

DEFAULT_PROXY_PORT = 3128
_ENV_KEY = re.compile(r"^[^=\0]+$")


@dataclass(frozen=True)
class Lowered:
    """One kernel's permissions, decided: build with `lower`.

    profile: the profile narrowed by the request (timeouts, on_stall, limits, enforcement).
    env: the caller's environment, validated (always set in the kernel; wins over the rest).
    filesystem: the profile's `[filesystem]` with the request's keys laid over it, checked.
    root_from_request: the request named the root, so `mount_roots` and the caller's rights
        apply to it (a profile's root is the admin's).
    net_mode / net_allow / net_deny: the network: "none", "proxy" (with these rules for the
        kernel's proxy) or "host".
    """

    profile: Profile
    env: Mapping[str, str]
    filesystem: FilesystemSpec
    root_from_request: bool
    net_mode: NetMode
    net_allow: Rules
    net_deny: tuple[NetRule, ...]
    runtime_prefix: str = DEFAULT_RUNTIME_PREFIX

    def limits(self) -> Limits:
        """The sandbox's (and the cgroup's) resource limits."""
        lim = self.profile.limits
        return Limits(memory_bytes=lim.memory, cpu_seconds=lim.cpu_seconds,
                      processes=lim.processes, open_files=lim.open_files,
                      file_size_bytes=lim.file_size, disk_bytes=lim.disk, cpu_shares=lim.cpus)

    def open_host_dir(self, *, mount_roots: tuple[str, ...] | None,
                      caller: Caller | None) -> HostDir | None:
        """The directory this kernel mounts, resolved once into a checked, pinned handle
        (`hostdir`); None when it mounts nothing. A root the request named is held to
        `mount_roots` and checked as `caller`; one from the profile is the admin's."""
        fs = self.filesystem
        if not fs.enabled or fs.root is None:
            return None
        mine = self.root_from_request
        return open_host_dir(fs.root, write=not fs.read_only,
                             roots=mount_roots if mine else None, caller=caller if mine else None)

    def policy(self, *, uid: int | None, gid: int | None,
               host_env: Mapping[str, str] | None = None, host_dir: HostDir | None = None,
               cgroup_dirs: Sequence[str] = (), bind_files: Sequence[tuple[str, str]] = (),
               proxy_port: int = DEFAULT_PROXY_PORT) -> Policy:
        """The `sandbox.Policy` of the kernel's worker.

        `host_env`: the daemon's own environment; only names the `env` permission allows pass
        through. `host_dir`: the checked, pinned root (`open_host_dir`): the mount is
        then that very directory (its path and (st_dev, st_ino)), never the request's path.
        """
        p, fs = self.profile, self.filesystem
        mounts: tuple[Mount, ...] = ()
        if fs.enabled and fs.root:
            if host_dir is None:
                mounts = (Mount(fs.root, fs.mount_point, fs.read_only),)
            else:
                mounts = (Mount(host_dir.path, fs.mount_point, fs.read_only,
                                identity=(host_dir.dev, host_dir.ino)),)
        home = mounts[0].target if mounts else "/tmp"
        environ = self._environ(host_env, home,
                                proxy_port if self.net_mode == "proxy" else None)
        return Policy(
            uid=uid, gid=gid,
            read=p.read, write=p.write,
            deny_read=p.deny_read,
            # write implies read in the sandbox, so a path hidden from reading stays unwritable
            deny_write=_union(p.deny_write, p.deny_read),
            exec_paths=_effective_run(p.run, p.deny_run),
            runtime_prefix=self.runtime_prefix,
            sys=p.sys if p.sys == ALL else _sys_views(p.sys),
            net=NetPolicy(mode=self.net_mode, proxy_port=proxy_port),
            mounts=mounts, bind_files=tuple(bind_files), workdir=home,
            limits=self.limits(), cgroup_dirs=tuple(cgroup_dirs),
            env=tuple(environ.items()),
            enforcement=p.enforcement, ffi=p.ffi,
        )

    def _environ(self, host_env: Mapping[str, str] | None, home: str,
                 proxy_port: int | None) -> dict[str, str]:
        """Passed-through daemon variables < the base environment < the caller's `env`."""
        out = {k: x for k, x in (host_env or {}).items() if self.profile.env_allowed(k)}
        out.update(PATH=v.kernel_path(self.runtime_prefix), HOME=home, LANG="C.UTF-8",
                   MPLBACKEND="module://matplotlib_inline.backend_inline",
                   MPLCONFIGDIR="/tmp/.matplotlib")
        if proxy_port is not None:
            http, socks = f"http://127.0.0.1:{proxy_port}", f"socks5h://127.0.0.1:{proxy_port}"
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                out[name] = http
            out.update(ALL_PROXY=socks, all_proxy=socks, NO_PROXY="", no_proxy="")
        out.update(self.env)
        return out


def lower(profile: Profile, *, env: Mapping[str, str] | None = None,
          filesystem: Mapping[str, object] | None = None,
          permissions: Mapping[str, object] | None = None,
          limits: Mapping[str, object] | None = None,
          runtime_prefix: str = DEFAULT_RUNTIME_PREFIX) -> Lowered:
    """Validate one kernel's request against `profile` and lower it (see the module
    docstring). Checked in this order: env, permissions, limits, filesystem."""
    caller_env = _caller_env(env)
    narrowed = narrow(profile, permissions, limits)
    fs = _filesystem(narrowed, filesystem, runtime_prefix)
    allow: Rules = ALL if narrowed.net == ALL else parse_rules(narrowed.net)
    return Lowered(
        profile=narrowed, env=caller_env, filesystem=fs,
        root_from_request=filesystem is not None and "root" in filesystem,
        net_mode=narrowed.net_mode(), net_allow=allow, net_deny=parse_rules(narrowed.deny_net),
        runtime_prefix=runtime_prefix)


def with_env(lowered: Lowered, env: Mapping[str, str]) -> Lowered:
    """`lowered` for a request that adds only `env` (checked as `lower` checks it): the same
    as lowering that request again, without narrowing or parsing anything twice."""
    return replace(lowered, env=_caller_env(env))


def _caller_env(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    for key, value in v.KEYS.table(f"{REQUEST}:env", env).items():
        if not isinstance(key, str) or not _ENV_KEY.match(key):
            raise v.fail(f"{REQUEST}:env", f"bad variable name {key!r}")
        if not isinstance(value, str) or "\0" in value:
            raise v.fail(f"{REQUEST}:env.{key}", f"expected a string without NUL, "
                                                  f"got {value!r}")
    return dict(env)


def _filesystem(profile: Profile, request: Mapping[str, object] | None,
                runtime_prefix: str) -> FilesystemSpec:
    """The profile's `[filesystem]` with the request's keys laid over it (giving a `root`
    enables it unless `enabled` says otherwise), checked: root exists, mount point safe."""
    fs, where = profile.filesystem, f"{os.path.basename(profile.source)}:filesystem"
    if request is not None:
        fs = v.parse_filesystem(REQUEST, request, fs, relative_ok=True)
        if "root" in request and "enabled" not in request:
            fs = replace(fs, enabled=True)
        where = f"{REQUEST}:filesystem"
    v.check_filesystem(where, fs, runtime_prefix)
    return fs


def _effective_run(run: Grant, deny_run: tuple[str, ...]) -> Grant:
    """`run` minus every entry a deny covers (deny beats allow)."""
    if run == ALL:
        return ALL
    return tuple(r for r in run if not any(v.is_under(r, d) for d in deny_run))


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(x for x in b if x not in a)


def _sys_views(kinds: Iterable[str]) -> tuple[str, ...]:
    views = (SYS_KINDS[k] for k in kinds)
    return tuple(dict.fromkeys(x for x in views if x is not None))
