"""Permission profiles: TOML files → a frozen `Profile` → one `sandbox.Policy`.

This is the only place where a profile is lowered into a policy (STYLE.md item 5): every
decision about what a kernel may do is made here, from data, and unit-tested without a host.

    load_profile("default", search_dirs)      file → Profile (errors cite file:table.key)
    profile.narrow(permissions, limits)       a request may only take rights away
    profile.to_policy(uid=..., gid=..., ...)  Profile → sandbox.Policy (+ env, mounts, net)
    profile.proxy_rules()                     the allow/deny rules `KernelProxy` enforces
    profile_report(profile)                   text for `kerneld profile check`

Semantics follow Deno's permission flags (docs/profiles.md): absent, `false` and `[]` mean none;
`true` means all; deny beats allow; `*.x` includes `x`; no port means every port; env names may
end in a `*` wildcard. Paths are expanded (`~`), must be absolute, and are resolved with
`os.path.realpath` when the profile loads: symlinks are followed, which is stricter than Deno
(a granted symlink grants its target only, and the kernel's view is built from resolved paths).

Value parsing lives in `_profile_values`, narrowing in `_profile_narrow`, the report in
`_profile_report` (size budget); the public names are all re-exported here.
Anything unrestricted (`true`, or a limit set to `false`) is logged when a profile loads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import sandbox
from sandbox.policy import ALL, Limits, Mount, NetPolicy, Policy

from . import _profile_values as v
from ._profile_narrow import narrow_limits, narrow_permissions
from ._profile_report import render_report
from ._profile_values import (
    DEFAULT_RUNTIME_PREFIX,
    REQUEST,
    SYS_KINDS,
    FilesystemSpec,
    Grant,
    ProfileLimits,
    parse_size,
)
from .errors import PermissionDenied, ProfileError
from .netmatch import NetRule, Rules, parse_rules

__all__ = [
    "DEFAULT_RUNTIME_PREFIX",
    "PROFILE_NAME",
    "SYS_KINDS",
    "FilesystemSpec",
    "PermissionDenied",
    "Profile",
    "ProfileError",
    "ProfileLimits",
    "available_profiles",
    "load_profile",
    "packaged_profiles_dir",
    "parse_profile",
    "parse_size",
    "profile_report",
]

log = logging.getLogger(__name__)

OnStall = Literal["event", "interrupt", "restart", "terminate"]
# A profile name (always fullmatch: `$` would match before a trailing newline).
PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_ENV_KEY = re.compile(r"^[^=\0]+$")


@dataclass(frozen=True)
class Profile:
    """A parsed, validated profile. Paths are resolved; net entries are normalised rule
    strings; `ALL` ("*") is Deno's `true`. Build with `load_profile`/`parse_profile`."""

    name: str
    source: str
    description: str = ""
    enforcement: Literal["strict", "best-effort"] = "strict"
    read: Grant = ()
    write: Grant = ()
    net: Grant = ()
    env: Grant = ()
    run: Grant = ()
    sys: Grant = ()
    deny_read: tuple[str, ...] = ()
    deny_write: tuple[str, ...] = ()
    deny_net: tuple[str, ...] = ()
    deny_env: tuple[str, ...] = ()
    deny_run: tuple[str, ...] = ()
    ffi: bool = False
    inactivity_timeout: float | None = None
    max_execution_time: float | None = None
    on_stall: OnStall = "event"
    restart_on_death: bool = False
    limits: ProfileLimits = field(default_factory=ProfileLimits)
    filesystem: FilesystemSpec = field(default_factory=FilesystemSpec)

    def narrow(self, permissions: Mapping[str, object] | None = None,
               limits: Mapping[str, object] | None = None) -> Profile:
        """The profile a request gets. A permission key the request names replaces the
        profile's only if it grants no more (else `PermissionDenied` citing
        `request:permissions.<key>`); keys it omits are inherited; `deny_*` entries are
        added; limits may only be lowered (`request:limits.<key>`)."""
        out = self
        if permissions is not None:
            out = narrow_permissions(out, permissions)
        if limits is not None:
            out = narrow_limits(out, limits)
        return out

    def proxy_rules(self) -> tuple[Rules, tuple[NetRule, ...]]:
        """(allow, deny) for `netproxy.KernelProxy` when `net_mode()` is "proxy"."""
        allow: Rules = ALL if self.net == ALL else parse_rules(self.net)
        return allow, parse_rules(self.deny_net)

    def net_mode(self) -> Literal["none", "proxy", "host"]:
        """`true` without denies → the host's network; `true` with `deny_net` → the proxy
        (only the proxy can enforce denies) allowing every public destination; a non-empty
        list → the proxy; nothing → no network at all (own netns with only `lo`)."""
        if self.net == ALL:
            return "proxy" if self.deny_net else "host"
        return "proxy" if self.net else "none"

    def to_policy(self, *, uid: int | None, gid: int | None,
                  env: Mapping[str, str] | None = None,
                  host_env: Mapping[str, str] | None = None,
                  filesystem: Mapping[str, object] | None = None,
                  cgroup_dirs: Sequence[str] = (),
                  bind_files: Sequence[tuple[str, str]] = (),
                  runtime_prefix: str = DEFAULT_RUNTIME_PREFIX,
                  proxy_port: int = 3128) -> Policy:
        """Lower this profile into the `sandbox.Policy` of one kernel.

        `env`: the caller's explicit environment (always set; wins over everything).
        `host_env`: the daemon's own; only names the `env` permission allows pass through.
        `filesystem`: the request's option, laid over the profile's `[filesystem]` key by key.
        Raises ProfileError (citing `request:...`) for a bad env or filesystem option.
        """
        fs = self.effective_filesystem(filesystem, runtime_prefix)
        mounts = (Mount(fs.root, fs.mount_point, fs.read_only),) if fs.enabled and fs.root else ()
        mode = self.net_mode()
        home = mounts[0].target if mounts else "/tmp"
        environ = self.build_env(env, host_env, home=home, runtime_prefix=runtime_prefix,
                                 proxy_port=proxy_port if mode == "proxy" else None)
        return Policy(
            uid=uid, gid=gid,
            read=self.read, write=self.write,
            deny_read=self.deny_read,
            # write implies read in the sandbox, so a path hidden from reading stays unwritable
            deny_write=_union(self.deny_write, self.deny_read),
            exec_paths=effective_run(self.run, self.deny_run),
            runtime_prefix=runtime_prefix,
            sys=self.sys if self.sys == ALL else _sys_views(self.sys),
            net=NetPolicy(mode=mode, proxy_port=proxy_port),
            mounts=mounts, bind_files=tuple(bind_files), workdir=home,
            limits=self.policy_limits(), cgroup_dirs=tuple(cgroup_dirs),
            env=tuple(environ.items()),
            enforcement=self.enforcement, ffi=self.ffi,
        )

    def effective_filesystem(self, request: Mapping[str, object] | None = None,
                             runtime_prefix: str = DEFAULT_RUNTIME_PREFIX) -> FilesystemSpec:
        """The profile's `[filesystem]` with the request's keys laid over it (giving a `root`
        enables it unless `enabled` says otherwise), checked: root exists, mount point safe."""
        fs, where = self.filesystem, f"{os.path.basename(self.source)}:filesystem"
        if request is not None:
            fs = v.parse_filesystem(REQUEST, request, fs, relative_ok=True)
            if "root" in request and "enabled" not in request:
                fs = replace(fs, enabled=True)
            where = f"{REQUEST}:filesystem"
        v.check_filesystem(where, fs, runtime_prefix)
        return fs

    def policy_limits(self) -> Limits:
        lim = self.limits
        return Limits(memory_bytes=lim.memory, cpu_seconds=lim.cpu_seconds,
                      processes=lim.processes, open_files=lim.open_files,
                      file_size_bytes=lim.file_size, disk_bytes=lim.disk, cpu_shares=lim.cpus)

    def build_env(self, env: Mapping[str, str] | None, host_env: Mapping[str, str] | None, *,
                  home: str = "/tmp", runtime_prefix: str = DEFAULT_RUNTIME_PREFIX,
                  proxy_port: int | None = None) -> dict[str, str]:
        """Passed-through daemon variables < the base environment < the caller's `env`."""
        out = {k: x for k, x in (host_env or {}).items() if self.env_allowed(k)}
        out.update(PATH=v.kernel_path(runtime_prefix), HOME=home, LANG="C.UTF-8",
                   MPLBACKEND="module://matplotlib_inline.backend_inline",
                   MPLCONFIGDIR="/tmp/.matplotlib")
        if proxy_port is not None:
            http, socks = f"http://127.0.0.1:{proxy_port}", f"socks5h://127.0.0.1:{proxy_port}"
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                out[name] = http
            out.update(ALL_PROXY=socks, all_proxy=socks, NO_PROXY="", no_proxy="")
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not _ENV_KEY.match(key):
                raise v.fail(f"{REQUEST}:env", f"bad variable name {key!r}")
            if not isinstance(value, str) or "\0" in value:
                raise v.fail(f"{REQUEST}:env.{key}", f"expected a string without NUL, "
                                                      f"got {value!r}")
            out[key] = value
        return out

    def env_allowed(self, name: str) -> bool:
        """Whether the daemon's variable `name` passes through (deny beats allow)."""
        if any(v.env_match(p, name) for p in self.deny_env):
            return False
        return self.env == ALL or any(v.env_match(p, name) for p in self.env)


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return a + tuple(x for x in b if x not in a)


def _sys_views(kinds: Iterable[str]) -> tuple[str, ...]:
    views = (SYS_KINDS[k] for k in kinds)
    return tuple(dict.fromkeys(x for x in views if x is not None))


def effective_run(run: Grant, deny_run: tuple[str, ...]) -> Grant:
    """`run` minus every entry a deny covers (deny beats allow)."""
    if run == ALL:
        return ALL
    return tuple(r for r in run if not any(v.is_under(r, d) for d in deny_run))


# --- loading ------------------------------------------------------------------------------

_TOP: Mapping[str, Callable[[str, object], Any]] = {
    "description": v.string,
    "enforcement": v.choice("strict", "best-effort"),
    "read": v.grant(v.path), "write": v.grant(v.path), "net": v.grant(v.net),
    "env": v.grant(v.env_name), "run": v.grant(v.program), "sys": v.grant(v.sys_kind),
    "deny_read": v.deny(v.path), "deny_write": v.deny(v.path), "deny_net": v.deny(v.net),
    "deny_env": v.deny(v.env_name), "deny_run": v.deny(v.program),
    "ffi": v.boolean,
    "inactivity_timeout": v.timeout, "max_execution_time": v.timeout,
    "on_stall": v.choice("event", "interrupt", "restart", "terminate"),
    "restart_on_death": v.boolean,
}


def profile_from_mapping(data: Mapping[str, object], *, name: str, source: str) -> Profile:
    """Validate a decoded TOML document. Errors cite `<file name>:<table>.<key>`."""
    label = os.path.basename(source) or source
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "limits":
            kwargs["limits"] = v.parse_limits(label, value, ProfileLimits())
        elif key == "filesystem":
            kwargs["filesystem"] = v.parse_filesystem(label, value, FilesystemSpec(),
                                                      relative_ok=False)
        elif key in _TOP:
            kwargs[key] = _TOP[key](f"{label}:{key}", value)
        else:
            known = ", ".join([*_TOP, "limits", "filesystem"])
            raise v.fail(f"{label}:{key}", f"unknown key; expected one of {known}")
    profile = Profile(name=name, source=source, **kwargs)
    v.check_deny_run(label, profile.run, profile.deny_run)
    if profile.max_execution_time is None and profile.limits.wall_seconds is not None:
        profile = replace(profile, max_execution_time=profile.limits.wall_seconds)
    _log_unrestricted(profile)
    return profile


def _log_unrestricted(p: Profile) -> None:
    for key in ("read", "write", "net", "env", "run", "sys"):
        if getattr(p, key) == ALL:
            log.info("profile=%s key=%s value=true unrestricted=1", p.name, key)
    for f in dataclasses.fields(ProfileLimits):
        if getattr(p.limits, f.name) is None and f.name != "wall_seconds":
            log.info("profile=%s key=limits.%s value=false unrestricted=1", p.name, f.name)
    if p.enforcement == "best-effort":
        log.warning("profile=%s enforcement=best-effort missing layers do not stop kernels",
                    p.name)


def parse_profile(text: str, *, source: str = "<string>", name: str | None = None) -> Profile:
    """Parse TOML text; `source` names the file in error messages."""
    label = os.path.basename(source) or source
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{label}: invalid TOML: {e}") from None
    stem = Path(source).stem if source.endswith(".toml") else source
    return profile_from_mapping(data, name=name or stem, source=source)


def packaged_profiles_dir() -> Path:
    """The default profiles shipped inside the package (`kerneld/data/profiles`, installed as
    package data; `etc/profiles` in the checkout is a symlink to the same directory)."""
    return Path(__file__).resolve().parent / "data" / "profiles"


def available_profiles(search_dirs: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Path]:
    """name → file; the first directory holding a name wins (packaged defaults last)."""
    out: dict[str, Path] = {}
    for d in (*map(Path, search_dirs), packaged_profiles_dir()):
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                out.setdefault(f.stem, f)
    return out


def load_profile(name_or_path: str | os.PathLike[str],
                 search_dirs: Sequence[str | os.PathLike[str]] = ()) -> Profile:
    """A name (`"default"`) is looked up as `<dir>/<name>.toml` in `search_dirs`, then in the
    packaged defaults; anything containing `/` or ending in `.toml` is loaded as a file."""
    text = os.fspath(name_or_path)
    if "/" in text or text.endswith(".toml"):
        path = Path(text).expanduser()
    else:
        if not PROFILE_NAME.fullmatch(text):
            shown = repr(text) if len(text) <= 64 else f"{text[:64]!r}… ({len(text)} characters)"
            raise ProfileError(f"bad profile name {shown}: use 1-128 characters of "
                               "A-Z a-z 0-9 . _ -, not starting with . or -")
        dirs = (*map(Path, search_dirs), packaged_profiles_dir())
        path = next((d / f"{text}.toml" for d in dirs if (d / f"{text}.toml").is_file()),
                    Path())
        if path == Path():
            raise ProfileError(f"profile {text!r} not found in {', '.join(map(str, dirs))}")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read profile: {e}") from None
    return parse_profile(content, source=str(path), name=path.stem)


def profile_report(profile: Profile, features: object | None = None) -> str:
    """The text of `kerneld profile check`: the effective policy, then which layers this host
    can enforce (`sandbox.probe()`/`sandbox.check()`, when the sandbox provides them)."""
    probe = getattr(sandbox, "probe", None)
    check = getattr(sandbox, "check", None)
    if features is None and callable(probe):
        features = probe()
    return render_report(profile, features, check)
