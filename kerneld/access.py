"""Who is calling, and which profiles they may use (`[access] profiles` in the config).

The daemon learns its caller from the connection, never from the request: on the ipc socket
the kernel's SO_PEERCRED (uid, gid, pid of the connecting process, which ZeroMQ reports as a
message property), on tcp the client's CURVE public key. A `Caller` then travels with the
create request: `[access] profiles` decides which profiles it may name, and
`kerneld.permissions.hostdir` opens a requested `filesystem.root` with its rights.

Principals in `[access] profiles` (a profile named there is usable only by the principals
listed; "*" as a profile name sets the rule for every profile not named; root may use every
profile):
    "*"            every caller that can reach the socket
    "uid:N"        the caller's uid          "user:NAME"   the same, by name
    "gid:N"        its primary or a supplementary group   "group:NAME"  the same, by name
    "curve:KEY"    a tcp client with this Z85 public key
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the peer's credentials of the ipc connection (SO_PEERCRED), or a
    remote client (tcp, CURVE) that has no identity on this host (`uid` None)."""

    uid: int | None
    gid: int | None = None
    pid: int | None = None
    groups: tuple[int, ...] = ()
    key: str | None = None  # the CURVE public key (Z85) of a tcp client

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def principal(self) -> str | None:
        """Who owns the kernels this caller creates: None for root (root's kernels are the
        daemon's own), else "uid:N" or "curve:KEY"."""
        if self.is_root:
            return None
        return f"uid:{self.uid}" if self.uid is not None else f"curve:{self.key}"

    def __str__(self) -> str:
        if self.uid is None:
            return f"remote client key={self.key or '?'}"
        return f"uid={self.uid} gid={self.gid} pid={self.pid}"


def caller_groups(pid: int | None, uid: int, gid: int) -> tuple[int, ...]:
    """The supplementary groups of the calling process (from /proc while that process still
    runs as `uid`), else only its primary group."""
    if pid:
        try:
            with open(f"/proc/{pid}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            if fields.get("Uid", "").split()[:1] == [str(uid)]:
                return tuple(sorted({gid, *map(int, fields.get("Groups", "").split())}))
        except (OSError, ValueError):
            pass
    return (gid,)


def parse_principal(where: str, text: str) -> str:
    """A principal in its canonical form ("uid:N", "gid:N", "curve:KEY" or "*"); names are
    looked up now, so a typo fails the config load instead of locking everyone out."""
    kind, _, value = text.partition(":")
    if text == "*":
        return text
    if kind in ("uid", "gid") and value.isdigit():
        return f"{kind}:{int(value)}"
    if kind == "user":
        try:
            return f"uid:{pwd.getpwnam(value).pw_uid}"
        except KeyError:
            raise ValueError(f"{where}: no such user {value!r}") from None
    if kind == "group":
        try:
            return f"gid:{grp.getgrnam(value).gr_gid}"
        except KeyError:
            raise ValueError(f"{where}: no such group {value!r}") from None
    if kind == "curve" and len(value) == 40:
        return text
    raise ValueError(f"{where}: expected \"*\", uid:N, user:NAME, gid:N, group:NAME or "
                     f"curve:KEY, got {text!r}")


@dataclass(frozen=True)
class ProfileAccess:
    """`[access] profiles`: profile name → the principals that may use it."""

    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_table(cls, where: str, table: Mapping[str, object]) -> ProfileAccess:
        rules = []
        for name, principals in table.items():
            if not isinstance(principals, list) or not all(isinstance(x, str)
                                                           for x in principals):
                raise ValueError(f"{where}.{name}: expected a list of principals, "
                                 f"got {principals!r}")
            rules.append((name, tuple(parse_principal(f"{where}.{name}", x)
                                      for x in principals)))
        return cls(tuple(rules))

    def allows(self, caller: Caller, profile: str) -> bool:
        if caller.is_root:
            return True
        table = dict(self.rules)
        principals = table.get(profile, table.get("*"))
        if principals is None:
            return True  # nothing said about it: open to every caller of the socket
        mine = {"*"}
        if caller.uid is not None:
            mine.add(f"uid:{caller.uid}")
            mine.update(f"gid:{g}" for g in {caller.gid, *caller.groups} if g is not None)
        if caller.key:
            mine.add(f"curve:{caller.key}")
        return not mine.isdisjoint(principals)
