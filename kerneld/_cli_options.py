"""The kernel flags of `kerneld create` and `kerneld run` (private to `kerneld.cli`).

Each flag only builds an argument of `create_kernel`; the daemon (or the embedded manager)
checks the request and its errors name the key (`request:limits.memory: 2GiB exceeds profile
'default' (512MiB)`). A request can only narrow its profile (docs/profiles.md, "Narrowing by a
request"), so every permission and limit flag takes rights away, never adds them.

    --profile NAME|FILE                      the profile (a FILE only where the daemon allows)
    --id ID, --namespace NS                  (create only)
    -e, --env NAME=VALUE                     repeatable, as docker's
    --mount DIR[:POINT][:ro|rw]              filesystem={root, mount_point, read_only}
    -m, --memory SIZE, --cpus N              limits.memory, limits.cpus (as docker's)
    --limit KEY=VALUE                        any [limits] key: cpu_seconds=30, disk=128MiB, ...
    --allow-read PATH ... --allow-sys KIND   permissions.read ... permissions.sys (as Deno's);
    --deny-read PATH ... --deny-run PROG     permissions.deny_* ; each flag one entry, repeatable
    --permission KEY=VALUE                   any permissions key: net= (none), read=true,
                                             ffi=false, env=A,B (comma-separated list)
    --inactivity-timeout S, --max-execution-time S   seconds; 0 disables
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

GRANTS = ("read", "write", "net", "env", "run", "sys")
DENIES = ("read", "write", "net", "env", "run")
_METAVARS = {"read": "PATH", "write": "PATH", "net": "HOST[:PORT]", "env": "NAME",
             "run": "PROGRAM", "sys": "KIND"}


class Usage(Exception):
    """A flag is malformed: `kerneld` prints it as a usage error (exit status 2)."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _cores(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of cores, got {text!r}") from None


def add_kernel_options(p: argparse.ArgumentParser, *, naming: bool) -> None:
    """The flags above (`naming`: also --id and --namespace)."""
    g = p.add_argument_group("kernel options (each can only narrow the profile)")
    g.add_argument("--profile", metavar="NAME|FILE",
                   help="permission profile (default: the daemon's default profile)")
    if naming:
        g.add_argument("--namespace", metavar="NS", help="the id becomes NS:ID")
        g.add_argument("--id", metavar="ID", help="the kernel's id (default: a UUID)")
    g.add_argument("-e", "--env", action="append", metavar="NAME=VALUE",
                   help="environment variable for the kernel (repeatable)")
    g.add_argument("--mount", action="append", metavar="DIR[:POINT][:ro]",
                   help="bind host directory DIR at POINT (default /home/kernel), the "
                        "working directory; ':ro' read-only")
    g.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 256MiB")
    g.add_argument("--cpus", type=_cores, metavar="N", help="CPU quota in cores, e.g. 0.5")
    g.add_argument("--limit", action="append", metavar="KEY=VALUE",
                   help="any [limits] key (cpu_seconds, wall_seconds, processes, open_files, "
                        "file_size, disk, output, ...); repeatable")
    for key in GRANTS:
        g.add_argument(f"--allow-{key}", action="append", metavar=_METAVARS[key],
                       help=f"grant only these `{key}` entries (repeatable)")
    for key in DENIES:
        g.add_argument(f"--deny-{key}", action="append", metavar=_METAVARS[key],
                       help=f"add a deny_{key} entry (repeatable)")
    g.add_argument("--permission", action="append", metavar="KEY=VALUE",
                   help="any permissions key: VALUE true, false, empty (none) or a "
                        "comma-separated list; repeatable")
    g.add_argument("--inactivity-timeout", type=_seconds, metavar="S",
                   help="destroy the kernel after S seconds idle (0: never)")
    g.add_argument("--max-execution-time", type=_seconds, metavar="S",
                   help="an execution running longer than S seconds is stalled (0: no limit)")


def kernel_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `create_kernel` keyword arguments the flags ask for (absent flags: left out)."""
    out: dict[str, Any] = {
        "profile": args.profile, "env": _env(args.env), "filesystem": _mount(args.mount),
        "permissions": _permissions(args), "limits": _limits(args),
        "inactivity_timeout": args.inactivity_timeout,
        "max_execution_time": args.max_execution_time}
    for name in ("id", "namespace"):
        if getattr(args, name, None) is not None:
            out[name] = getattr(args, name)
    return {k: v for k, v in out.items() if v is not None}


def _pair(flag: str, item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise Usage(f"{flag} expects KEY=VALUE, got {item!r}")
    return name, value


def _env(items: list[str] | None) -> dict[str, str] | None:
    env = dict(_pair("--env", item) for item in items or ())
    return env or None


def _mount(items: list[str] | None) -> dict[str, Any] | None:
    if not items:
        return None
    if len(items) > 1:
        raise Usage(f"--mount: a kernel mounts one directory (given {len(items)})")
    spec = items[0]
    parts = spec.split(":")
    read_only: bool | None = None
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) > 2 or not all(parts):
        raise Usage(f"--mount expects DIR[:POINT][:ro], got {spec!r}")
    fs: dict[str, Any] = {"enabled": True,
                          "root": os.path.abspath(os.path.expanduser(parts[0]))}
    if len(parts) == 2:
        fs["mount_point"] = parts[1]
    if read_only is not None:
        fs["read_only"] = read_only
    return fs


def _scalar(text: str) -> Any:
    """A --limit value as TOML would have it: false, an integer, a number, else a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _limits(args: argparse.Namespace) -> dict[str, Any] | None:
    limits: dict[str, Any] = {}
    for item in args.limit or ():
        key, value = _pair("--limit", item)
        if key in limits:
            raise Usage(f"--limit {key} given twice")
        limits[key] = _scalar(value)
    for key, value in (("memory", args.memory), ("cpus", args.cpus)):
        if value is not None:
            if key in limits:
                raise Usage(f"--{key} and --limit {key}= both given")
            limits[key] = value
    return limits or None


def _permissions(args: argparse.Namespace) -> dict[str, Any] | None:
    perms: dict[str, Any] = {}

    def add(key: str, flag: str, value: bool | list[str]) -> None:
        old = perms.get(key)
        if old is None:
            perms[key] = value
        elif isinstance(old, list) and isinstance(value, list):
            perms[key] = old + [v for v in value if v not in old]
        else:
            raise Usage(f"{flag}: permission {key} is given both as a list and as "
                        f"{str(old if isinstance(old, bool) else value).lower()}")

    for item in args.permission or ():
        key, text = _pair("--permission", item)
        low = text.strip().lower()
        value: bool | list[str] = (low == "true" if low in ("true", "false") else
                                   [e.strip() for e in text.split(",") if e.strip()])
        add(key, "--permission", value)
    for prefix, keys in (("allow", GRANTS), ("deny", DENIES)):
        for key in keys:
            entries = getattr(args, f"{prefix}_{key}") or []
            if entries:
                add(key if prefix == "allow" else f"deny_{key}", f"--{prefix}-{key}",
                    list(entries))
    return perms or None
