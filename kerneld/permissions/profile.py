"""Permission profiles: TOML files → a frozen, validated `Profile` (data, no policy yet).

    load_profile("default", search_dirs)      file → Profile (errors cite file:table.key)
    parse_profile(text, source=...)           the same from text
    available_profiles(search_dirs)           name → file, packaged defaults last

What a profile becomes for one kernel (narrowed by the request, lowered into a
`sandbox.Policy`, an environment, a mount and proxy rules) is `kerneld.permissions.lower`'s;
narrowing is `narrow`'s, the `kerneld profile check` text `report`'s. None of them is imported
here: they depend on `Profile`, never the other way round.

Semantics follow Deno's permission flags (docs/profiles.md): absent, `false` and `[]` mean none;
`true` means all; deny beats allow; `*.x` includes `x`; no port means every port; env names may
end in a `*` wildcard. Paths are expanded (`~`), must be absolute, and are resolved with
`os.path.realpath` when the profile loads: symlinks are followed, which is stricter than Deno
(a granted symlink grants its target only, and the kernel's view is built from resolved paths).

Value parsing lives in `values`. Anything unrestricted (`true`, or a limit set to `false`) is
logged when a profile loads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kerneld.errors import ProfileError
from kerneld.lifecycle import ESCALATIONS, ON_STALL
from kerneld.permissions import values as v
from kerneld.permissions.values import FilesystemSpec, Grant, ProfileLimits
from sandbox.policy import ALL

log = logging.getLogger(__name__)

OnStall = Literal["event", "interrupt", "restart", "terminate"]  # lifecycle.ON_STALL
StallEscalation = Literal["restart", "terminate"]  # lifecycle.ESCALATIONS
NetMode = Literal["none", "proxy", "host"]
# A profile name (always fullmatch: `$` would match before a trailing newline).
PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Profile:
    """A parsed, validated profile. Paths are resolved; net entries are normalised rule
    strings; `ALL` ("*") is Deno's `true`. Build with `load_profile`/`parse_profile`;
    narrow with `permissions.narrow`, lower with `permissions.lower`."""

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
    stall_escalation: StallEscalation = "restart"
    restart_on_death: bool = False
    limits: ProfileLimits = field(default_factory=ProfileLimits)
    filesystem: FilesystemSpec = field(default_factory=FilesystemSpec)

    def net_mode(self) -> NetMode:
        """`true` without denies → the host's network; `true` with `deny_net` → the proxy
        (only the proxy can enforce denies) allowing every public destination; a non-empty
        list → the proxy; nothing → no network at all (own netns with only `lo`)."""
        if self.net == ALL:
            return "proxy" if self.deny_net else "host"
        return "proxy" if self.net else "none"

    def env_allowed(self, name: str) -> bool:
        """Whether the daemon's variable `name` passes through (deny beats allow)."""
        if any(v.env_match(p, name) for p in self.deny_env):
            return False
        return self.env == ALL or any(v.env_match(p, name) for p in self.env)


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
    "on_stall": v.choice(*ON_STALL),
    "stall_escalation": v.choice(*ESCALATIONS),
    "restart_on_death": v.boolean,
}


def profile_from_mapping(data: Mapping[str, object], *, name: str, source: str) -> Profile:
    """Validate a decoded TOML document. Errors cite `<file name>:<table>.<key>`."""
    label = os.path.basename(source) or source
    parsers: dict[str, Callable[[str, object], Any]] = {
        **_TOP,
        "limits": lambda _where, value: v.parse_limits(label, value, ProfileLimits()),
        "filesystem": lambda _where, value: v.parse_filesystem(label, value, FilesystemSpec(),
                                                               relative_ok=False),
    }
    kwargs = v.KEYS.walk(f"{label}:", data, parsers)
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
    data = v.KEYS.loads(label, text)
    stem = Path(source).stem if source.endswith(".toml") else source
    return profile_from_mapping(data, name=name or stem, source=source)


def packaged_profiles_dir() -> Path:
    """The default profiles shipped inside the package (`kerneld/data/profiles`, installed as
    package data; `etc/profiles` in the checkout is a symlink to the same directory)."""
    return Path(__file__).resolve().parent.parent / "data" / "profiles"


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
