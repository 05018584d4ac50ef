"""Permissions: what a kernel may do, decided from data (STYLE.md item 5), unit-tested
without a host.

    profile.py   TOML file → frozen `Profile` (errors cite file:table.key)
    values.py    the value parsers profiles and requests share (on `kerneld.tomlkeys`)
    narrow.py    a request may only take rights away from its profile
    lower.py     THE lowering: profile + request → `Lowered` (policy, env, mount, proxy rules),
                 once per kernel; the only request validation of env, filesystem and net
    report.py    the text of `kerneld profile check`
    hostdir.py   the host directory a kernel mounts, opened once, checked and pinned

Dependencies run one way: values ← profile ← narrow ← lower ← report. Importing this package
loads neither ZeroMQ, psutil nor IPython.
"""

from kerneld.permissions.lower import Lowered, lower, with_env
from kerneld.permissions.narrow import narrow
from kerneld.permissions.profile import (
    PROFILE_NAME,
    Profile,
    available_profiles,
    load_profile,
    packaged_profiles_dir,
    parse_profile,
)
from kerneld.permissions.report import profile_report
from kerneld.permissions.values import SYS_KINDS, FilesystemSpec, ProfileLimits, parse_size

__all__ = [
    "PROFILE_NAME",
    "SYS_KINDS",
    "FilesystemSpec",
    "Lowered",
    "Profile",
    "ProfileLimits",
    "available_profiles",
    "load_profile",
    "lower",
    "narrow",
    "packaged_profiles_dir",
    "parse_profile",
    "parse_size",
    "profile_report",
    "with_env",
]
