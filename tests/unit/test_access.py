"""Callers and what they may use: `[access] profiles` rules and host-directory checks that need
no daemon (the attacks through a daemon are in tests/attacks/test_attack_callers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kerneld.access import Caller, ProfileAccess, parse_principal
from kerneld.config import ConfigError, load_daemon_config
from kerneld.errors import PermissionDenied
from kerneld.permissions.hostdir import open_host_dir

ALICE = Caller(1000, 1000, 4242, (1000, 27))


def test_unlisted_profiles_are_open_and_listed_ones_only_to_their_principals() -> None:
    access = ProfileAccess.from_table("t", {"trusted": ["gid:27"], "gpu": ["uid:7"]})
    assert access.allows(ALICE, "default")            # not listed: open
    assert access.allows(ALICE, "trusted")            # by a supplementary group
    assert not access.allows(ALICE, "gpu")
    assert access.allows(Caller(0, 0), "gpu")         # root may use every profile
    assert not access.allows(Caller(None, key="k" * 40), "trusted")
    star = ProfileAccess.from_table("t", {"*": ["uid:1000"]})
    assert star.allows(ALICE, "anything") and not star.allows(Caller(1001, 1001), "anything")


def test_principals_are_checked_when_the_config_loads() -> None:
    assert parse_principal("w", "user:root") == "uid:0"
    assert parse_principal("w", "group:root") == "gid:0"
    with pytest.raises(ValueError, match="no such user"):
        parse_principal("w", "user:no-such-user-kd")
    with pytest.raises(ConfigError, match="KERNELD_ACCESS_PROFILES.trusted: expected"):
        load_daemon_config(None, env={"KERNELD_ACCESS_PROFILES": "trusted=nobody-at-all"})
    cfg = load_daemon_config(None, env={"KERNELD_ACCESS_PROFILES": "trusted=uid:0,gid:27;*=*"})
    assert cfg.access.rules == (("trusted", ("uid:0", "gid:27")), ("*", ("*",)))


def test_a_remote_caller_mounts_nothing(tmp_path: Path) -> None:
    with pytest.raises(PermissionDenied, match="remote client"):
        open_host_dir(str(tmp_path), roots=(str(tmp_path),), caller=Caller(None, key="k"),
                      write=False)


def test_the_shared_tmp_is_refused_even_embedded() -> None:
    with pytest.raises(PermissionDenied, match="sticky"):
        open_host_dir("/tmp", roots=None, caller=None, write=True)


def test_embedded_roots_follow_symlinks_and_pin_the_target(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    pinned = open_host_dir(str(tmp_path / "link"), roots=None, caller=None, write=True)
    st = os.stat(target)
    assert (pinned.path, pinned.dev, pinned.ino) == (str(target), st.st_dev, st.st_ino)
    with pytest.raises(PermissionDenied, match="symbolic link"):  # never under mount_roots
        open_host_dir(str(tmp_path / "link"), roots=(str(tmp_path),), caller=None, write=True)
