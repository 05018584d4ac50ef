"""Value parsers of permission profiles (`kerneld.permissions`).

Every parser takes `(where, value)`, where `where` is the `file:table.key` a message must cite,
and either returns the validated value or raises `ProfileError(f"{where}: ...")`. Requests
(`narrow`, `lower`) reuse the same parsers with `request:` as the file, so a value means the
same thing in a profile file and in a request. The scalar coercions, key tables and
unknown-key errors are `kerneld.tomlkeys`' (shared with the daemon's config); what is here is
what only profiles know: grants, net rules, env names, programs, sizes, limits, filesystem.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from kerneld.errors import ProfileError
from kerneld.net.match import NetRule, RuleError
from kerneld.tomlkeys import TomlKeys
from sandbox.policy import ALL

Grant = tuple[str, ...] | Literal["*"]
DEFAULT_RUNTIME_PREFIX = "/opt/kerneld/runtime"
DEFAULT_MOUNT_POINT = "/home/kernel"
REQUEST = "request"  # the label request errors cite instead of a file name

# Deno's `sys` kinds → the kind named in `Policy.sys` (each a key of `sandbox.policy.SYS_KINDS`,
# which says which /proc and /sys files it exposes). None: always visible to any process (e.g.
# getuid()), so granting it changes nothing; accepted so that Deno lists can be pasted.
# REFUSED_SYS_KINDS: Deno kinds no profile can grant, with the reason the loader gives.
SYS_KINDS: Mapping[str, str | None] = {
    "hostname": "hostname", "osRelease": "osRelease", "version": "osRelease",
    "osUptime": "uptime", "uptime": "uptime", "loadavg": "loadavg",
    "systemMemoryInfo": "meminfo", "meminfo": "meminfo", "cpus": "cpus",
    "uid": None, "gid": None, "username": None, "homedir": None, "userInfo": None,
    "getPriority": None, "setPriority": None, "statfs": None,
}
REFUSED_SYS_KINDS: Mapping[str, str] = {
    "networkInterfaces": "the kernel's network namespace holds only `lo` (the host's interfaces "
                         "are never visible: no view and no netlink)",
}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGTkmgt])(i?)([Bb]?)|([Bb]?))\s*$")


KEYS = TomlKeys(ProfileError)
fail = KEYS.fail
string = KEYS.string
boolean = KEYS.boolean
number = KEYS.number
choice = KEYS.choice


def parse_size(value: object) -> int:
    """Bytes from an int or a string: `"512MiB"`/`"64K"`/`"64k"` (powers of 1024),
    `"100MB"`/`"100kB"` (powers of 1000, as the SI unit says), `"123"`/`"123B"`.
    Raises ValueError; bools are refused (TOML `true` is not a size)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")  # noqa: TRY004 - one error type for callers
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative size")
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"not a size: {value!r}")
    number, prefix, binary, byte = m.group(1), m.group(2), m.group(3), m.group(4)
    if prefix is None:
        return int(float(number))
    power = "KMGT".index(prefix.upper()) + 1
    base = 1000 if (byte and not binary) else 1024
    return int(float(number) * base**power)


def fmt_size(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def timeout(where: str, value: object) -> float | None:
    """Seconds; 0 (or false) disables."""
    if value is False:
        return None
    return number(where, value) or None


def grant(item: Callable[[str, str], str]) -> Callable[[str, object], Grant]:
    """`true` → ALL; `false`/`[]` → none; a list → each entry parsed by `item`, deduplicated."""
    def parse(where: str, value: object) -> Grant:
        if value is True:
            return ALL
        if value is False:
            return ()
        if not isinstance(value, list):
            raise fail(where, f"expected true, false or a list of strings, got {value!r}")
        return entries(where, value, item)
    return parse


def deny(item: Callable[[str, str], str]) -> Callable[[str, object], tuple[str, ...]]:
    """A `deny_*` key: a list only (there is nothing to deny with `true`)."""
    def parse(where: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise fail(where, f"expected a list of strings, got {value!r}")
        return entries(where, value, item)
    return parse


def entries(where: str, values: list[Any], item: Callable[[str, str], str]) -> tuple[str, ...]:
    out: list[str] = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise fail(f"{where}[{i}]", f"expected a string, got {v!r}")
        parsed = item(f"{where}[{i}]", v)
        if parsed not in out:
            out.append(parsed)
    return tuple(out)


def path(where: str, value: str) -> str:
    """Absolute after `~` expansion, then resolved (symlinks followed, `..` removed)."""
    expanded = os.path.expanduser(value)
    if "\0" in value or not os.path.isabs(expanded):
        raise fail(where, f"expected an absolute path (or ~/...), got {value!r}")
    return os.path.realpath(expanded)


def net(where: str, value: str) -> str:
    try:
        return str(NetRule.parse(value))
    except RuleError as e:
        raise fail(where, f"bad net rule {value!r}: {e}") from None


def env_name(where: str, value: str) -> str:
    if not _ENV_NAME.match(value):
        raise fail(where, "expected an environment variable name (optionally ending in *), "
                          f"got {value!r}")
    return value


def kernel_path(runtime_prefix: str) -> str:
    """The PATH user code starts with."""
    return f"{runtime_prefix.rstrip('/')}/bin:/usr/local/bin:/usr/bin:/bin"


def program(where: str, value: str) -> str:
    """A bare name is looked up on the kernel's default PATH now, so the policy names a file
    (Landlock and the mount view work on files, not on names)."""
    if "/" not in value and not value.startswith("~"):
        found = shutil.which(value, path=kernel_path(DEFAULT_RUNTIME_PREFIX))
        if found is None:
            raise fail(where, f"program {value!r} not found on the kernel's PATH")
        return os.path.realpath(found)
    return path(where, value)


def sys_kind(where: str, value: str) -> str:
    if value in REFUSED_SYS_KINDS:
        raise fail(where, f"sys kind {value!r} cannot be granted: {REFUSED_SYS_KINDS[value]}")
    if value not in SYS_KINDS:
        raise fail(where, f"unknown sys kind {value!r}; known: {', '.join(SYS_KINDS)}")
    return value


def env_match(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def is_under(child: str, base: str) -> bool:
    """`child` equals `base` or lies below it (both resolved absolute paths)."""
    return child == base or child.startswith(base.rstrip("/") + "/")


def check_deny_run(label: str, run: Grant, deny_run: tuple[str, ...]) -> None:
    """The sandbox allows programs (Landlock EXECUTE); it cannot subtract one from `true` or
    from a granted directory, so such a deny is refused instead of silently not enforced."""
    if not deny_run:
        return
    if run == ALL:
        raise fail(f"{label}:deny_run", "cannot be enforced with run = true; list the "
                                          "allowed programs in run instead")
    for d in deny_run:
        if any(is_under(d, r) and d != r for r in run):
            raise fail(f"{label}:deny_run", f"{d!r} lies inside a granted run directory; "
                                              "list the allowed programs individually")



# --- [limits] -----------------------------------------------------------------------------

def size(where: str, value: object, *, minimum: int = 1) -> int | None:
    if value is False:
        return None
    try:
        n = parse_size(value)
    except ValueError:
        raise fail(where, f'expected a size like "512MiB", got {value!r}') from None
    if n < minimum:
        raise fail(where, f"must be at least {fmt_size(minimum)}, got {value!r}")
    return n


def count(where: str, value: object, *, minimum: int = 1) -> int | None:
    if value is False:
        return None
    value = KEYS.integer(where, value)
    if value < minimum:
        raise fail(where, f"must be at least {minimum}, got {value!r}")
    return value


def seconds(where: str, value: object) -> float | None:
    return None if value is False else number(where, value, minimum=0.001)


@dataclass(frozen=True)
class ProfileLimits:
    """`[limits]`. None = not limited (`false` in TOML; logged). Sizes are bytes."""

    memory: int | None = 512 * 1024**2
    cpu_seconds: int | None = 300
    wall_seconds: float | None = None
    processes: int | None = 64
    open_files: int | None = 256
    file_size: int | None = 64 * 1024**2
    disk: int | None = 64 * 1024**2
    output: int | None = 8 * 1024**2
    cpus: float | None = 1.0


# Floors: below them a worker cannot even boot (IPython, ZeroMQ's threads and fds).
LIMIT_PARSERS: Mapping[str, Callable[[str, object], Any]] = {
    "memory": lambda w, v: size(w, v, minimum=16 * 1024**2),
    "cpu_seconds": count,
    "wall_seconds": seconds,
    # a worker is ~5 tasks (main, ZeroMQ's I/O and reaper threads, the output threads) and
    # its init: below 8 it cannot start (at 4 it died at once, exit 71)
    "processes": lambda w, v: count(w, v, minimum=8),
    "open_files": lambda w, v: count(w, v, minimum=32),
    "file_size": lambda w, v: size(w, v, minimum=1024),
    "disk": lambda w, v: size(w, v, minimum=1024**2),
    "output": lambda w, v: size(w, v, minimum=1024),
    "cpus": lambda w, v: None if v is False else number(w, v, minimum=0.01),
}


def parse_limits(label: str, table: object, base: ProfileLimits) -> ProfileLimits:
    """`[limits]` (or a request's `limits`) laid over `base`."""
    table = KEYS.table(f"{label}:limits", table)
    return replace(base, **KEYS.walk(f"{label}:limits.", table, LIMIT_PARSERS))


# --- [filesystem] -------------------------------------------------------------------------

@dataclass(frozen=True)
class FilesystemSpec:
    """`[filesystem]`: a host directory bound at `mount_point`, also the kernel's cwd."""

    enabled: bool = False
    root: str | None = None
    mount_point: str = DEFAULT_MOUNT_POINT
    read_only: bool = False


# mount points that would hide what the worker needs, or expose the host's kernel interfaces
_RESERVED_DIRS = ("/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc",
                  "/run", "/tmp", "/dev/shm", "/opt/kerneld")


def _root(relative_ok: bool) -> Callable[[str, object], str]:
    def parse(where: str, value: object) -> str:
        text = os.path.expanduser(string(where, value))
        if "\0" in text or (not os.path.isabs(text) and not relative_ok):
            raise fail(where, f"expected an absolute path (or ~/...), got {value!r}")
        # a profile's root is the admin's: resolved now. A request's stays as written:
        # permissions.hostdir resolves it exactly once, without symlinks under mount_roots
        return os.path.abspath(text) if relative_ok else os.path.realpath(text)
    return parse


def _mount_point(where: str, value: object) -> str:
    mp = string(where, value)
    if not os.path.isabs(mp) or "\0" in mp or os.path.normpath(mp) != (mp.rstrip("/") or "/"):
        raise fail(where, f"expected a normalised absolute path, got {value!r}")
    return os.path.normpath(mp)


# the keys of [filesystem] (sorted: the order an unknown-key error lists them in)
_FILESYSTEM_KEYS: Mapping[bool, Mapping[str, Callable[[str, object], Any]]] = {
    relative_ok: {"enabled": boolean, "mount_point": _mount_point, "read_only": boolean,
                  "root": _root(relative_ok)}
    for relative_ok in (False, True)
}


def parse_filesystem(label: str, table: object, base: FilesystemSpec, *,
                     relative_ok: bool) -> FilesystemSpec:
    """`[filesystem]` (or a request's `filesystem`) laid over `base`. A relative root is only
    accepted from a request (resolved against the caller's working directory)."""
    table = KEYS.table(f"{label}:filesystem", table)
    return replace(base, **KEYS.walk(f"{label}:filesystem.", table,
                                     _FILESYSTEM_KEYS[relative_ok]))


def check_filesystem(where: str, fs: FilesystemSpec, runtime_prefix: str) -> None:
    """An enabled filesystem needs an existing root directory and a mount point that neither
    shadows a system directory (the runtime, /proc, ...) nor contains one."""
    if not fs.enabled:
        return
    if fs.root is None:
        raise fail(f"{where}.root", "required when the filesystem is enabled")
    if not os.path.isdir(fs.root):
        raise fail(f"{where}.root", f"no such directory: {fs.root}")
    mp = fs.mount_point
    reserved = (*_RESERVED_DIRS, runtime_prefix)
    if mp == "/" or any(is_under(mp, r) or is_under(r, mp) for r in reserved):
        raise fail(f"{where}.mount_point", f"{mp!r} would hide or expose a system directory")
