"""The text of `kerneld profile check`: `profile_report(profile)`.

Shows what a profile really grants once lowered (what a reader of the TOML might misjudge:
`true`, inherited defaults, resolved paths, the network mode) and, from the sandbox's probe of
the host, which enforcement layers are missing here and what that means under the profile's
`enforcement` setting (strict: kernels will not start; best-effort: they start without them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sandbox
from kerneld.errors import KernelError
from kerneld.permissions.lower import lower
from kerneld.permissions.profile import Profile
from kerneld.permissions.values import Grant, fmt_size
from sandbox.policy import ALL, Policy

_ENFORCED_BY = {
    "read": "mount view + Landlock read rights",
    "write": "mount view + Landlock write rights",
    "net": "network namespace + proxy + Landlock ports + seccomp",
    "env": "environment built at start",
    "run": "seccomp execve + Landlock EXECUTE",
    "sys": "/proc and /sys view + Landlock",
}


def _grant(g: Grant) -> str:
    if g == ALL:
        return "all (true) - UNRESTRICTED"
    return "none" if not g else ", ".join(g)


def _net_line(profile: Profile, policy: Policy | None) -> str:
    mode = profile.net_mode()
    if mode == "host":
        return "host network (true) - UNRESTRICTED, no namespace, no proxy"
    if mode == "none":
        return "none: own network namespace with only lo"
    port = policy.net.proxy_port if policy is not None else 3128
    allow = "every public destination" if profile.net == ALL else ", ".join(profile.net)
    return f"proxy at 127.0.0.1:{port} inside the kernel's netns; allow: {allow}"


def _permission_lines(profile: Profile, policy: Policy | None) -> list[str]:
    lines = ["permissions (deny beats allow; absent/false/[] = none):"]
    for key in ("read", "write", "net", "env", "run", "sys"):
        shown = _net_line(profile, policy) if key == "net" else _grant(getattr(profile, key))
        lines.append(f"  {key:<6} {shown}    [{_ENFORCED_BY[key]}]")
        denied = getattr(profile, f"deny_{key}", ())
        if denied:
            lines.append(f"  deny_{key} {', '.join(denied)}")
    lines.append(f"  ffi    {str(profile.ffi).lower()}    [soft layer only: not a boundary]")
    if policy is not None:
        lines.append(f"  always readable (read-only): {policy.runtime_prefix}, "
                     f"{', '.join(policy.system_paths)}; writable: private /tmp tmpfs")
    return lines


def _other_lines(profile: Profile) -> list[str]:
    lim, fs = profile.limits, profile.filesystem
    sizes = ("memory", "file_size", "disk", "output")
    parts = [f"{f.name}={fmt_size(getattr(lim, f.name)) if f.name in sizes else getattr(lim, f.name)}"
             for f in dataclasses.fields(lim)]
    lines = ["limits (None/unlimited = not limited by that layer):", "  " + " ".join(parts)]
    lines.append(f"timeouts: inactivity_timeout={profile.inactivity_timeout} "
                 f"max_execution_time={profile.max_execution_time} on_stall={profile.on_stall} "
                 f"restart_on_death={str(profile.restart_on_death).lower()}")
    if fs.enabled:
        mode = "read-only" if fs.read_only else "read-write"
        lines.append(f"filesystem: {fs.root} at {fs.mount_point} ({mode}, working directory)")
    else:
        lines.append("filesystem: none (requests may mount a directory; cwd is /tmp)")
    return lines


def _host_lines(profile: Profile, policy: Policy | None, features: object,
                check: Callable[..., Any]) -> list[str]:
    lines = ["host features:"]
    if dataclasses.is_dataclass(features) and not isinstance(features, type):
        lines += [f"  {k} = {x}" for k, x in dataclasses.asdict(features).items()]
    else:
        lines.append(f"  {features!r}")
    if policy is None:
        lines.append("enforcement check: unavailable (no policy)")
        return lines
    missing = list(check(policy, features))
    if not missing:
        lines.append("enforcement check: every layer this profile needs is available here")
        return lines
    lines.append("this host cannot enforce:")
    lines += [f"  - {m}" for m in missing]
    lines.append("verdict: kernels with this profile will NOT start here (enforcement = strict)"
                 if profile.enforcement == "strict" else
                 "verdict: kernels start WITHOUT these layers (enforcement = best-effort)")
    return lines


def render_report(profile: Profile, features: object, check: Callable[..., Any]) -> str:
    """The whole report as text (no trailing newline)."""
    lines = [f"profile: {profile.name} ({profile.source})"]
    if profile.description:
        lines.append(f"description: {profile.description.strip()}")
    lines.append(f"enforcement: {profile.enforcement}")
    policy: Policy | None
    try:
        policy = lower(profile).policy(uid=None, gid=None)
    except KernelError as e:
        policy = None
        lines.append(f"problem: {e}")
    lines += _permission_lines(profile, policy)
    lines += _other_lines(profile)
    lines += _host_lines(profile, policy, features, check)
    return "\n".join(lines)


def profile_report(profile: Profile, features: object | None = None) -> str:
    """The text of `kerneld profile check`: the effective policy, then which layers this host
    can enforce (`sandbox.check()` against `features`, by default `sandbox.probe()`)."""
    return render_report(profile, sandbox.probe() if features is None else features,
                         sandbox.check)
