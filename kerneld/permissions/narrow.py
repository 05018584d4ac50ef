"""Narrowing a profile by a request: `narrow(profile, permissions, limits)` (used by `lower`).

A Deno worker can never hold a permission its parent lacks; likewise a `create_kernel` request
may only take rights away from its profile. Each requested entry must be *covered* by a grant
of the profile — a path lies under a granted path, a net rule is matched by an allowed rule, an
env name by an allowed name or prefix, a program lies under a granted program or directory —
and a limit may only be lowered. Anything else raises `PermissionDenied` naming the key, never
a silent clamp: the caller asked for something it cannot have and should know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from kerneld.errors import PermissionDenied
from kerneld.net.match import NetRule, rule_covers
from kerneld.permissions import values as v
from kerneld.permissions.profile import Profile
from kerneld.permissions.values import REQUEST, SYS_KINDS, Grant
from sandbox.policy import ALL

_GRANTS: Mapping[str, Callable[[str, object], Grant]] = {
    "read": v.grant(v.path), "write": v.grant(v.path), "net": v.grant(v.net),
    "env": v.grant(v.env_name), "run": v.grant(v.program), "sys": v.grant(v.sys_kind),
}
_DENIES: Mapping[str, Callable[[str, object], tuple[str, ...]]] = {
    "deny_read": v.deny(v.path), "deny_write": v.deny(v.path), "deny_net": v.deny(v.net),
    "deny_env": v.deny(v.env_name), "deny_run": v.deny(v.program),
}


def narrow(profile: Profile, permissions: Mapping[str, object] | None = None,
           limits: Mapping[str, object] | None = None) -> Profile:
    """The profile a request gets. A permission key the request names replaces the
    profile's only if it grants no more (else `PermissionDenied` citing
    `request:permissions.<key>`); keys it omits are inherited; `deny_*` entries are
    added; limits may only be lowered (`request:limits.<key>`)."""
    out = profile
    if permissions is not None:
        out = narrow_permissions(out, permissions)
    if limits is not None:
        out = narrow_limits(out, limits)
    return out


def _covers(key: str, profile: Profile, entry: str) -> bool:
    """Whether the profile's grant for `key` includes everything `entry` would grant."""
    granted: Grant = getattr(profile, key)
    if key == "read" and granted != ALL:  # write implies read
        granted = ALL if profile.write == ALL else granted + profile.write
    if granted == ALL:
        return True
    if key in ("read", "write", "run"):
        return any(v.is_under(entry, g) for g in granted)
    if key == "net":
        inner = NetRule.parse(entry)
        return any(rule_covers(NetRule.parse(g), inner) for g in granted)
    if key == "env":
        return any(entry.startswith(g[:-1]) if g.endswith("*") else entry == g
                   for g in granted)
    view = SYS_KINDS[entry]  # key == "sys": same view, or one that is always visible
    return view is None or any(SYS_KINDS[g] == view for g in granted)


def _describe(grant: Grant) -> str:
    if grant == ALL:
        return "true"
    return "[" + ", ".join(f'"{g}"' for g in grant) + "]"


def narrow_permissions(profile: Profile, permissions: Mapping[str, object]) -> Profile:
    """Apply a request's `permissions` (see the module docstring)."""
    v.KEYS.table(f"{REQUEST}:permissions", permissions)
    changes: dict[str, Any] = {}
    for key, value in permissions.items():
        where = f"{REQUEST}:permissions.{key}"
        if key in _GRANTS:
            changes[key] = _narrow_grant(profile, key, where, _GRANTS[key](where, value))
        elif key in _DENIES:
            extra = _DENIES[key](where, value)
            current: tuple[str, ...] = getattr(profile, key)
            changes[key] = current + tuple(e for e in extra if e not in current)
        elif key == "ffi":
            if v.boolean(where, value) and not profile.ffi:
                raise PermissionDenied(f"{where}: true widens profile {profile.name!r} "
                                       "(ffi = false)")
            changes[key] = value
        else:
            raise v.KEYS.unknown(where, [*_GRANTS, *_DENIES, "ffi"])
    out = replace(profile, **changes)
    v.check_deny_run(REQUEST, out.run, out.deny_run)
    return out


def _narrow_grant(profile: Profile, key: str, where: str, requested: Grant) -> Grant:
    granted: Grant = getattr(profile, key)
    if requested == ALL:
        if granted != ALL:
            raise PermissionDenied(f"{where}: true widens profile {profile.name!r} "
                                   f"({key} = {_describe(granted)})")
        return ALL
    for entry in requested:
        if not _covers(key, profile, entry):
            raise PermissionDenied(f"{where}: {entry!r} is not granted by profile "
                                   f"{profile.name!r} ({key} = {_describe(granted)})")
    return requested


def narrow_limits(profile: Profile, limits: Mapping[str, object]) -> Profile:
    """Apply a request's `limits`: each named limit must be at most the profile's."""
    requested = v.parse_limits(REQUEST, limits, profile.limits)
    for key in limits:
        old, new = getattr(profile.limits, key), getattr(requested, key)
        if old is not None and (new is None or new > old):
            shown = v.fmt_size if key in ("memory", "file_size", "disk", "output") else str
            raise PermissionDenied(
                f"{REQUEST}:limits.{key}: {'unlimited' if new is None else shown(new)} "
                f"exceeds profile {profile.name!r} ({shown(old)})")
    out = replace(profile, limits=requested)
    wall = requested.wall_seconds
    if wall is not None and (out.max_execution_time is None or wall < out.max_execution_time):
        out = replace(out, max_execution_time=wall)
    return out
