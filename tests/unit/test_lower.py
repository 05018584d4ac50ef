"""The one lowering (`kerneld.permissions.lower`): a kernel's request is validated and parsed
once, and everything the kernel starts with (policy, env, mount, proxy rules, limits) comes from
that one `Lowered`. Also the parser core the config and profiles share (`kerneld.tomlkeys`)."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kerneld.config import ConfigError, load_daemon_config
from kerneld.errors import InvalidArgument, ProfileError
from kerneld.net.match import NetRule
from kerneld.permissions import Lowered, Profile, lower, parse_profile
from kerneld.permissions import values as v
from kerneld.permissions.hostdir import HostDir
from sandbox.policy import Mount


def profile(text: str = "") -> Profile:
    return parse_profile(text, source="/somewhere/p.toml")


def pinned(path: Path) -> HostDir:
    st = os.stat(path)
    return HostDir(str(path), st.st_dev, st.st_ino, st.st_uid, st.st_gid)


def test_the_mount_is_the_pinned_directory_never_the_requests_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request names a path (here a symlink); the policy mounts the directory that was
    opened and checked (`HostDir`: its path and inode), never the request's path again."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    once = lower(profile('net = ["pypi.org:443"]'), env={"A": "1"},
                 filesystem={"root": "link", "read_only": True, "mount_point": "/work"})
    hd = pinned(real)
    policy = once.policy(uid=7, gid=7, host_dir=hd)
    assert once.filesystem.root != hd.path  # what the request said is not what is mounted
    assert policy.mounts == (Mount(str(real), "/work", True, identity=(hd.dev, hd.ino)),)
    assert dict(policy.env)["A"] == "1" and dict(policy.env)["HOME"] == "/work"
    assert once.root_from_request and once.filesystem.enabled


def test_filesystem_and_net_rules_are_parsed_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fs_calls: list[object] = []
    real_fs = v.parse_filesystem

    def count_fs(*args: object, **kw: object) -> object:
        fs_calls.append(args)
        return real_fs(*args, **kw)  # type: ignore[arg-type]

    p = profile('net = ["*.example.com:443", "10.0.0.0/8"]\ndeny_net = ["evil.example.com"]')
    monkeypatch.setattr(v, "parse_filesystem", count_fs)
    rules: list[str] = []
    real_parse = NetRule.parse.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(NetRule, "parse",
                        classmethod(lambda cls, text: (rules.append(text), real_parse(cls, text))[1]))

    lowered = lower(p, filesystem={"root": str(tmp_path)})
    assert len(fs_calls) == 1 and len(rules) == 3  # each allow/deny entry once
    host_dir = lowered.open_host_dir(mount_roots=None, caller=None)
    assert host_dir is not None and host_dir.path == str(tmp_path)
    for _ in range(2):  # start, then restart: the same Lowered, nothing parsed again
        policy = lowered.policy(uid=1, gid=1, host_dir=host_dir)
        assert policy.net.mode == "proxy" and policy.mounts[0].source == str(tmp_path)
    from kerneld.net.proxy import KernelProxy
    proxy = KernelProxy("k", lowered.net_allow, lowered.net_deny)
    assert proxy.deny == (NetRule.parse("evil.example.com"),)
    assert len(fs_calls) == 1 and len(rules) == 4  # only the line above


def test_a_profile_root_is_the_admins_and_nothing_is_mounted_without_one(tmp_path: Path) -> None:
    admin = profile(f'[filesystem]\nenabled = true\nroot = "{tmp_path}"')
    lowered = lower(admin)
    assert not lowered.root_from_request
    # mount_roots does not hold a profile's root (only a request's)
    host_dir = lowered.open_host_dir(mount_roots=("/srv/none",), caller=None)
    assert host_dir is not None and host_dir.path == str(tmp_path)
    plain = lower(profile(), filesystem={})
    assert plain.open_host_dir(mount_roots=None, caller=None) is None
    assert plain.policy(uid=1, gid=1).mounts == ()


@pytest.mark.parametrize("env,message", [
    ({"A=B": "x"}, r"^request:env: bad variable name 'A=B'"),
    ({"": "x"}, r"^request:env: bad variable name ''"),
    ({"A": "x\0y"}, r"^request:env\.A: expected a string without NUL"),
    ({"A": 1}, r"^request:env\.A: expected a string without NUL"),
    (["A"], r"^request:env: expected a table"),
])
def test_invalid_env_is_one_error_class(env: object, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        lower(profile(), env=env)  # type: ignore[arg-type]


async def test_the_manager_refuses_a_bad_env_with_the_same_error() -> None:
    from kerneld.config import ManagerConfig
    from kerneld.manager import KernelManager
    manager = KernelManager(ManagerConfig())
    try:
        with pytest.raises(ProfileError, match=r"^request:env: bad variable name") as info:
            await manager.create_kernel(mode="in_process", env={"A=B": "x"})
        assert type(info.value) is ProfileError and isinstance(info.value, InvalidArgument)
        assert manager.get_kernel_ids() == []
    finally:
        await manager.close()


def test_env_is_checked_before_permissions_then_limits_then_filesystem() -> None:
    bad_everything = {"env": {"A=B": "x"}, "permissions": {"nope": 1},
                      "limits": {"nope": 1}, "filesystem": {"nope": 1}}
    order = ["request:env", "request:permissions", "request:limits", "request:filesystem"]
    for where in order:
        with pytest.raises(ProfileError, match=f"^{where}"):
            lower(profile(), **bad_everything)  # type: ignore[arg-type]
        bad_everything.pop(where.split(":")[1])


def test_lowered_is_frozen_and_keeps_the_narrowed_profile() -> None:
    lowered = lower(profile("net = true\nread = ['/usr']"),
                    permissions={"net": ["example.com:443"], "read": []})
    assert isinstance(lowered, Lowered) and lowered.net_mode == "proxy"
    assert lowered.profile.net == ("example.com:443",) and lowered.profile.read == ()
    assert lowered.net_allow == (NetRule.parse("example.com:443"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        lowered.net_mode = "host"  # type: ignore[misc]


# --- the parser core shared by the config and profiles -------------------------------------

def test_config_and_profiles_refuse_with_the_same_words(tmp_path: Path) -> None:
    conf = tmp_path / "kerneld.toml"
    conf.write_text("[kernels]\nconfine = 'no'\n")
    with pytest.raises(ConfigError) as config_error:
        load_daemon_config(conf, env={})
    with pytest.raises(ProfileError) as profile_error:
        parse_profile("ffi = 'no'", source="p.toml")
    assert str(config_error.value).endswith(": expected true or false, got 'no'")
    assert str(profile_error.value) == "p.toml:ffi: expected true or false, got 'no'"

    conf.write_text("[pool]\nsizes = 1\n")
    with pytest.raises(ConfigError, match=r"kerneld\.toml:pool\.sizes: unknown key; expected "
                                          r"one of size, profiles$"):
        load_daemon_config(conf, env={})
    with pytest.raises(ProfileError, match=r"^p\.toml:limits\.ram: unknown key; expected one "
                                           r"of memory, "):
        parse_profile("[limits]\nram = 1", source="p.toml")

    conf.write_text("[daemon]\nshutdown_grace = -1\n")
    with pytest.raises(ConfigError, match=r"daemon\.shutdown_grace: expected a number >= 0, "):
        load_daemon_config(conf, env={})
    with pytest.raises(ProfileError, match=r"^p\.toml:inactivity_timeout: expected a number "
                                           r">= 0, got -1$"):
        parse_profile("inactivity_timeout = -1", source="p.toml")


# --- import weight ---------------------------------------------------------------------------

@pytest.mark.parametrize("module,allowed", [
    ("kerneld.permissions", {"sandbox"}),  # the policy it lowers into; no process machinery
    ("kerneld.net.match", set()),
    ("kerneld.tomlkeys", set()),
    ("kerneld.config", set()),
])
def test_permissions_and_config_are_light(module: str, allowed: set[str]) -> None:
    code = (f"import sys, {module}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True, cwd=Path(__file__).resolve().parents[2])
    loaded = set(ast.literal_eval(proc.stdout.strip()))
    assert loaded & {"IPython", "zmq", "psutil", "sandbox"} <= allowed, (module, loaded)
