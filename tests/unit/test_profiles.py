"""Pure tests of permission profiles: parsing every key, errors citing file:table.key,
Deno semantics, narrowing, lowering into sandbox.Policy, and the shipped profiles."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import pytest

from kerneld.errors import InvalidArgument, PermissionDenied, ProfileError
from kerneld.net.match import ALL, NetRule
from kerneld.permissions import (
    Profile,
    available_profiles,
    load_profile,
    lower,
    narrow,
    packaged_profiles_dir,
    parse_profile,
    parse_size,
    profile_report,
)
from sandbox.policy import Limits, Mount, NetPolicy, Policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("default", "data-science", "networked", "trusted")
MiB = 1024**2


def parse(text: str, name: str = "p") -> Profile:
    return parse_profile(text, source=f"/somewhere/{name}.toml")


def err(text: str) -> str:
    with pytest.raises(ProfileError) as info:
        parse(text)
    return str(info.value)


def policy(p: Profile, **kw: object) -> Policy:
    """`lower` then `Lowered.policy`: the request's keys go to the one, the host's to the other."""
    kw.setdefault("uid", 1234)
    kw.setdefault("gid", 1234)
    request = {k: kw.pop(k) for k in ("env", "filesystem", "runtime_prefix") if k in kw}
    return lower(p, **request).policy(**kw)  # type: ignore[arg-type]


# --- shipped profiles -------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_lower(name: str) -> None:
    p = load_profile(name)
    assert p.name == name and p.description
    pol = policy(p)
    assert isinstance(pol, Policy) and pol.enforcement == "strict"


def test_etc_profiles_are_the_packaged_files() -> None:
    etc = ROOT / "etc" / "profiles"
    assert etc.resolve() == packaged_profiles_dir().resolve()
    assert {f.stem for f in etc.glob("*.toml")} >= set(SHIPPED)
    assert set(available_profiles()) >= set(SHIPPED)


def test_default_profile_is_locked_down() -> None:
    p = load_profile("default")
    pol = policy(p)
    assert (pol.read, pol.write, pol.exec_paths, pol.sys) == ((), (), (), ())
    assert pol.net == NetPolicy(mode="none", proxy_port=3128)
    assert pol.limits == Limits(memory_bytes=512 * MiB, cpu_seconds=300, processes=64,
                                open_files=256, file_size_bytes=64 * MiB, disk_bytes=64 * MiB,
                                cpu_shares=1.0)
    assert p.limits.output == 8 * MiB
    assert dict(pol.env).keys() == {"PATH", "HOME", "LANG", "MPLBACKEND", "MPLCONFIGDIR"}
    assert not p.ffi and p.env == () and p.deny_net == ()


def test_data_science_profile() -> None:
    p = load_profile("data-science")
    assert p.limits.memory == 4 * 1024 * MiB and p.limits.disk == 1024 * MiB
    assert p.limits.processes is not None and p.limits.processes > 64
    assert p.net_mode() == "none"


def test_networked_profile() -> None:
    p = load_profile("networked")
    assert p.net_mode() == "proxy"
    assert "*.github.com:443" in p.net and "pypi.org:443" in p.net
    allow, deny = lower(p).net_allow, lower(p).net_deny
    assert NetRule.parse("pypi.org:443") in allow and deny == (NetRule.parse("gist.github.com"),)
    env = dict(policy(p, proxy_port=4000).env)
    assert env["HTTPS_PROXY"] == env["http_proxy"] == "http://127.0.0.1:4000"
    assert env["ALL_PROXY"] == env["all_proxy"] == "socks5h://127.0.0.1:4000"
    assert env["NO_PROXY"] == "" and env["no_proxy"] == ""


def test_trusted_profile() -> None:
    p = load_profile("trusted")
    pol = policy(p)
    assert pol.read == ALL and pol.exec_paths == ALL and pol.write == ()
    assert pol.net.mode == "host"
    assert "TRUSTED" in p.description


def test_shipped_files_comment_every_key() -> None:
    for name in SHIPPED:
        lines = (packaged_profiles_dir() / f"{name}.toml").read_text().splitlines()
        for i, line in enumerate(lines):
            if "=" in line and not line.lstrip().startswith("#"):
                assert lines[i - 1].lstrip().startswith("#"), f"{name}.toml:{i + 1} {line}"


# --- every key --------------------------------------------------------------------------------

def test_every_key(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    text = f"""
        description = "all keys"
        enforcement = "best-effort"
        read = ["{tmp_path}/link", "{tmp_path}/data/../data"]
        write = ["{tmp_path}/data/out"]
        net = ["example.com:443", "*.github.com", "10.0.0.0/8"]
        env = ["LANGUAGE", "AWS_*"]
        run = ["sh", "/usr/bin/env"]
        sys = ["hostname", "systemMemoryInfo", "uid"]
        deny_read = ["{tmp_path}/data/secret"]
        deny_write = ["{tmp_path}/data/ro"]
        deny_net = ["api.github.com"]
        deny_env = ["AWS_SECRET*"]
        deny_run = ["/usr/bin/env"]
        ffi = true
        inactivity_timeout = 60
        max_execution_time = 2.5
        on_stall = "restart"
        restart_on_death = true
        [limits]
        memory = "1GiB"
        cpu_seconds = 30
        wall_seconds = 10
        processes = 16
        open_files = 128
        file_size = "10MB"
        disk = 100000000
        output = "1MiB"
        cpus = 0.5
        [filesystem]
        enabled = true
        root = "{tmp_path}/data"
        mount_point = "/work"
        read_only = true
    """
    p = parse(text)
    data = os.path.realpath(tmp_path / "data")
    assert p.read == (data,)  # symlink resolved, `..` removed, deduplicated
    assert p.write == (f"{data}/out",)
    assert p.net == ("example.com:443", "*.github.com", "10.0.0.0/8")
    assert p.env == ("LANGUAGE", "AWS_*")
    assert p.run == (os.path.realpath(shutil.which("sh") or ""), "/usr/bin/env")
    assert p.sys == ("hostname", "systemMemoryInfo", "uid")
    assert (p.deny_read, p.deny_write) == ((f"{data}/secret",), (f"{data}/ro",))
    assert (p.deny_net, p.deny_env, p.deny_run) == (("api.github.com",), ("AWS_SECRET*",),
                                                     ("/usr/bin/env",))
    assert p.ffi and p.restart_on_death and p.enforcement == "best-effort"
    assert (p.inactivity_timeout, p.max_execution_time, p.on_stall) == (60.0, 2.5, "restart")
    lim = p.limits
    assert (lim.memory, lim.cpu_seconds, lim.wall_seconds, lim.processes) == (1024**3, 30, 10, 16)
    assert (lim.open_files, lim.file_size, lim.disk, lim.output, lim.cpus) == (
        128, 10_000_000, 100_000_000, MiB, 0.5)
    assert p.filesystem.enabled and p.filesystem.read_only
    assert (p.filesystem.root, p.filesystem.mount_point) == (data, "/work")

    pol = policy(p, host_env={"LANGUAGE": "fr", "AWS_KEY": "k", "AWS_SECRET_X": "s", "X": "1"},
                 env={"MINE": "yes"}, cgroup_dirs=["/sys/fs/cgroup/x"],
                 bind_files=[("/run/a.sock", "/run/kerneld-worker.sock")],
                 runtime_prefix="/opt/rt", proxy_port=3999)
    assert pol.uid == pol.gid == 1234
    assert pol.exec_paths == (p.run[0],)  # deny_run removed /usr/bin/env
    assert pol.sys == ("hostname", "meminfo")  # Deno names mapped; uid is always visible
    assert pol.deny_write == (f"{data}/ro", f"{data}/secret")  # denied reads never writable
    assert pol.net == NetPolicy(mode="proxy", proxy_port=3999)
    assert pol.mounts == (Mount(data, "/work", True),) and pol.workdir == "/work"
    assert pol.limits == Limits(1024**3, 30, 16, 128, 10_000_000, 100_000_000, 0.5)
    assert pol.cgroup_dirs == ("/sys/fs/cgroup/x",)
    assert pol.bind_files == (("/run/a.sock", "/run/kerneld-worker.sock"),)
    assert pol.runtime_prefix == "/opt/rt" and pol.ffi and pol.enforcement == "best-effort"
    env = dict(pol.env)
    assert env["PATH"] == "/opt/rt/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["HOME"] == "/work" and env["MINE"] == "yes"
    assert env["LANGUAGE"] == "fr" and env["AWS_KEY"] == "k"
    assert "AWS_SECRET_X" not in env and "X" not in env  # deny_env beats env; unlisted stay out


def test_sys_kinds_are_known_to_the_sandbox() -> None:
    from kerneld.permissions import SYS_KINDS
    from sandbox.policy import SYS_KINDS as SANDBOX_KINDS
    assert {k for k in SYS_KINDS.values() if k is not None} <= set(SANDBOX_KINDS)
    p = parse('sys = ["osUptime", "version", "osRelease", "loadavg", "cpus", "homedir"]')
    assert policy(p).sys == ("uptime", "osRelease", "loadavg", "cpus")
    assert "cannot be granted" in err('sys = ["networkInterfaces"]')
    assert "unknown sys kind 'battery'" in err('sys = ["battery"]')


def _sys_kinds_in(text: str) -> tuple[set[str], set[str]]:
    """(accepted, refused): the sys kinds a passage of the docs names, a kind being refused
    when the sentence naming it says so."""
    accepted: set[str] = set()
    refused: set[str] = set()
    for sentence in re.split(r"(?<=[.:;])\s", text):
        names = set(re.findall(r"`?\b([a-z][A-Za-z]+)\b`?", sentence)) & _DENO_SYS_WORDS
        (refused if "refused" in sentence else accepted).update(names)
    return accepted, refused


# Every word that could name a sys kind: the loader's, the refused ones and a few more of
# Deno's, so that a kind the docs name but the loader does not know is still found.
_DENO_SYS_WORDS = {"hostname", "osRelease", "version", "osUptime", "uptime", "loadavg",
                   "systemMemoryInfo", "meminfo", "cpus", "uid", "gid", "username", "homedir",
                   "userInfo", "getPriority", "setPriority", "statfs", "networkInterfaces",
                   "getegid", "osType", "arch"}


@pytest.mark.parametrize("doc", ["docs/profiles.md", "kerneld/data/profiles/default.toml"])
def test_sys_kinds_the_docs_name_are_what_the_loader_does(doc: str) -> None:
    """Issue 16 item 10: default.toml listed networkInterfaces as valid, profiles.md said it is
    refused, the loader called it unknown. Every kind a doc names as granted loads; every
    kind it names as refused is refused with the reason."""
    from kerneld.permissions.values import REFUSED_SYS_KINDS, SYS_KINDS
    assert not set(SYS_KINDS) & set(REFUSED_SYS_KINDS)
    text = (ROOT / doc).read_text()
    if doc.endswith(".md"):  # the `sys` kinds bullet
        passage = re.search(r"^- `sys` kinds:.*?(?=^\S|^- |\Z)", text,
                            re.MULTILINE | re.DOTALL)
    else:  # the comment above `sys = []`
        passage = re.search(r"^# System information views:.*?(?=^[^#])", text,
                            re.MULTILINE | re.DOTALL)
    assert passage, f"{doc} no longer describes the sys kinds where this test looks"
    accepted, refused = _sys_kinds_in(passage.group(0))
    assert accepted and refused == set(REFUSED_SYS_KINDS)
    for kind in accepted:
        parse(f'sys = ["{kind}"]')  # raises if the loader refuses it
    for kind in refused:
        message = err(f'sys = ["{kind}"]')
        assert f"sys kind {kind!r} cannot be granted: {REFUSED_SYS_KINDS[kind]}" in message
    if doc.endswith(".md"):  # the reference lists every kind the loader takes
        assert accepted == set(SYS_KINDS)


def test_absent_keys_mean_none_and_defaults() -> None:
    p = parse("")
    assert (p.read, p.write, p.net, p.env, p.run, p.sys) == ((),) * 6
    assert p.enforcement == "strict" and not p.ffi and p.on_stall == "event"
    assert p.inactivity_timeout is None and p.max_execution_time is None
    assert p.limits.memory == 512 * MiB and p.filesystem.enabled is False
    assert p.filesystem.mount_point == "/home/kernel"


@pytest.mark.parametrize("value", ["[]", "false"])
def test_empty_list_and_false_mean_none(value: str) -> None:
    p = parse(f"net = {value}\nread = {value}\nrun = {value}")
    assert p.net == p.read == p.run == ()
    assert policy(p).net.mode == "none"  # an empty net list really means no network


def test_true_means_all() -> None:
    p = parse("read = true\nwrite = true\nnet = true\nenv = true\nrun = true\nsys = true")
    pol = policy(p, host_env={"ANYTHING": "1"})
    assert pol.read == pol.write == pol.exec_paths == pol.sys == ALL
    assert pol.net.mode == "host" and dict(pol.env)["ANYTHING"] == "1"


def test_net_true_with_deny_goes_through_the_proxy() -> None:
    p = parse('net = true\ndeny_net = ["evil.example"]')
    assert p.net_mode() == "proxy"
    allow, deny = lower(p).net_allow, lower(p).net_deny
    assert allow == ALL and deny == (NetRule.parse("evil.example"),)
    assert "HTTP_PROXY" in dict(policy(p).env)


def test_wall_seconds_is_max_execution_time_when_unset() -> None:
    assert parse("[limits]\nwall_seconds = 7").max_execution_time == 7
    p = parse("max_execution_time = 3\n[limits]\nwall_seconds = 7")
    assert p.max_execution_time == 3 and p.limits.wall_seconds == 7


def test_zero_timeouts_disable() -> None:
    p = parse("inactivity_timeout = 0\nmax_execution_time = 0.0")
    assert p.inactivity_timeout is None and p.max_execution_time is None


def test_false_limit_means_unlimited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="kerneld.permissions.profile")
    p = parse("[limits]\nmemory = false\ncpu_seconds = false")
    assert p.limits.memory is None and policy(p).limits.memory_bytes is None
    assert "key=limits.memory value=false unrestricted=1" in caplog.text


def test_unrestricted_grants_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="kerneld.permissions.profile")
    parse("net = true", name="wide")
    assert "profile=wide key=net value=true unrestricted=1" in caplog.text


@pytest.mark.parametrize("text,size", [
    ("512MiB", 512 * MiB), ("1GiB", 1024**3), ("100MB", 100_000_000), ("64k", 65536),
    ("64K", 65536), ("10kB", 10_000), ("2 GiB", 2 * 1024**3), ("1.5GiB", 3 * 512 * MiB),
    ("123", 123), ("123B", 123), (4096, 4096), ("1T", 1024**4),
])
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1MiB", "1XB", "", "MiB", True, -5, 1.5, "1 2"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_paths_expand_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse('read = ["~/notes"]').read == (os.path.realpath(tmp_path / "notes"),)


def test_symlink_grant_grants_its_target(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    assert parse(f'write = ["{tmp_path}/alias"]').write == (str((tmp_path / "real").resolve()),)


# --- errors cite file:table.key ---------------------------------------------------------------

@pytest.mark.parametrize("text,where,fragment", [
    ("colour = 1", "p.toml:colour", "unknown key"),
    ("description = 3", "p.toml:description", "expected a string"),
    ('enforcement = "loose"', "p.toml:enforcement", "'strict', 'best-effort'"),
    ('read = "/etc"', "p.toml:read", "expected true, false or a list"),
    ('read = ["etc"]', "p.toml:read[0]", "absolute path"),
    ('write = ["/ok", 3]', "p.toml:write[1]", "expected a string"),
    ('net = ["bad host"]', "p.toml:net[0]", "bad net rule"),
    ('net = ["a.com:99999"]', "p.toml:net[0]", "1..65535"),
    ('env = ["BAD-NAME"]', "p.toml:env[0]", "environment variable name"),
    ('env = ["*"]', "p.toml:env[0]", "environment variable name"),
    ('run = ["no-such-program-kerneld"]', "p.toml:run[0]", "not found on the kernel's PATH"),
    ('run = ["bin/sh"]', "p.toml:run[0]", "absolute path"),
    ('sys = ["kernelVersion"]', "p.toml:sys[0]", "unknown sys kind"),
    ("deny_read = true", "p.toml:deny_read", "expected a list"),
    ('deny_net = ["*"]', "p.toml:deny_net[0]", "bad net rule"),
    ('deny_env = ["A B"]', "p.toml:deny_env[0]", "environment variable name"),
    ('run = true\ndeny_run = ["/usr/bin/env"]', "p.toml:deny_run", "run = true"),
    ('run = ["/usr/bin"]\ndeny_run = ["/usr/bin/env"]', "p.toml:deny_run", "inside a granted"),
    ('ffi = "yes"', "p.toml:ffi", "true or false"),
    ("inactivity_timeout = -1", "p.toml:inactivity_timeout", ">= 0"),
    ('max_execution_time = "1h"', "p.toml:max_execution_time", "expected a number"),
    ('on_stall = "panic"', "p.toml:on_stall", "'event', 'interrupt'"),
    ("restart_on_death = 1", "p.toml:restart_on_death", "true or false"),
    ("limits = 5", "p.toml:limits", "expected a table"),
    ("[limits]\nram = 1", "p.toml:limits.ram", "unknown key"),
    ('[limits]\nmemory = "lots"', "p.toml:limits.memory",
     'expected a size like "512MiB", got \'lots\''),
    ("[limits]\nmemory = 1024", "p.toml:limits.memory", "at least 16MiB"),
    ("[limits]\ncpu_seconds = 1.5", "p.toml:limits.cpu_seconds", "expected an integer"),
    ("[limits]\ncpu_seconds = true", "p.toml:limits.cpu_seconds", "expected an integer"),
    ("[limits]\nwall_seconds = 0", "p.toml:limits.wall_seconds", ">= 0.001"),
    ("[limits]\nprocesses = 1", "p.toml:limits.processes", "at least 8"),
    ("[limits]\nprocesses = 4", "p.toml:limits.processes", "at least 8"),
    ("[limits]\nopen_files = 3", "p.toml:limits.open_files", "at least 32"),
    ('[limits]\nfile_size = "1B"', "p.toml:limits.file_size", "at least 1KiB"),
    ('[limits]\ndisk = "1KiB"', "p.toml:limits.disk", "at least 1MiB"),
    ("[limits]\noutput = []", "p.toml:limits.output", "expected a size"),
    ("[limits]\ncpus = 0", "p.toml:limits.cpus", ">= 0.01"),
    ("filesystem = 1", "p.toml:filesystem", "expected a table"),
    ("[filesystem]\nmount = '/x'", "p.toml:filesystem.mount", "unknown key"),
    ("[filesystem]\nenabled = 'yes'", "p.toml:filesystem.enabled", "true or false"),
    ("[filesystem]\nroot = 'rel/dir'", "p.toml:filesystem.root", "absolute path"),
    ("[filesystem]\nmount_point = 'home'", "p.toml:filesystem.mount_point", "absolute"),
    ("[filesystem]\nmount_point = '/a/../b'", "p.toml:filesystem.mount_point", "normalised"),
    ("[filesystem]\nread_only = 0", "p.toml:filesystem.read_only", "true or false"),
    ("read = [", "p.toml", "invalid TOML"),
])
def test_errors_cite_file_table_key(text: str, where: str, fragment: str) -> None:
    message = err(text)
    assert message.startswith((f"{where}: ", f"{where}:")), message
    assert fragment in message, message


def test_error_classes() -> None:
    assert issubclass(ProfileError, InvalidArgument)
    with pytest.raises(ProfileError):
        load_profile("no-such-profile-anywhere")
    with pytest.raises(ProfileError, match="bad profile name"):
        load_profile("..hidden")


def test_unknown_key_lists_the_known_ones() -> None:
    assert "deny_net" in err("allow_net = []") and "limits" in err("allow_net = []")


# --- lookup -----------------------------------------------------------------------------------

def test_search_dirs_come_before_packaged(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text('description = "mine"')
    (tmp_path / "extra.toml").write_text('description = "extra"')
    assert load_profile("default", [tmp_path]).description == "mine"
    assert load_profile("extra", [str(tmp_path)]).description == "extra"
    assert load_profile("default", [tmp_path / "missing"]).name == "default"
    assert available_profiles([tmp_path])["default"] == tmp_path / "default.toml"


def test_load_by_path(tmp_path: Path) -> None:
    f = tmp_path / "custom.toml"
    f.write_text('description = "by path"\nnet = ["x.test"]')
    p = load_profile(f)
    assert (p.name, p.source, p.net) == ("custom", str(f), ("x.test",))
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "missing.toml")
    f.write_text("bogus = 1")
    with pytest.raises(ProfileError, match=r"^custom\.toml:bogus: "):
        load_profile(str(f))


# --- environment ------------------------------------------------------------------------------

def test_env_wildcard_and_deny() -> None:
    p = parse('env = ["AWS_*", "TZ"]\ndeny_env = ["AWS_SECRET_ACCESS_KEY"]')
    assert p.env_allowed("AWS_REGION") and p.env_allowed("AWS_") and p.env_allowed("TZ")
    assert not p.env_allowed("AWS_SECRET_ACCESS_KEY")
    assert not p.env_allowed("TZX") and not p.env_allowed("XAWS_REGION")


def test_base_env_and_caller_env() -> None:
    p = parse("env = true")
    env = dict(policy(p, host_env={"PATH": "/evil", "HOME": "/root", "KEEP": "1"},
                      env={"LANG": "de_DE.UTF-8", "NEW": "x"}).env)
    assert env["PATH"] == "/opt/kerneld/runtime/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["HOME"] == "/tmp" and env["KEEP"] == "1"
    assert env["LANG"] == "de_DE.UTF-8" and env["NEW"] == "x"  # the caller's env always wins
    assert env["MPLBACKEND"] == "module://matplotlib_inline.backend_inline"
    assert env["MPLCONFIGDIR"] == "/tmp/.matplotlib"
    assert "HTTP_PROXY" not in env  # host network: no proxy


def test_caller_env_always_set_even_with_env_none() -> None:
    env = dict(policy(parse(""), env={"TOKEN": "t"}, host_env={"TOKEN2": "u"}).env)
    assert env["TOKEN"] == "t" and "TOKEN2" not in env


@pytest.mark.parametrize("bad,where", [({"A=B": "x"}, "request:env"),
                                       ({"A": "x\0y"}, "request:env.A"),
                                       ({"A": 1}, "request:env.A")])
def test_bad_caller_env(bad: dict[str, object], where: str) -> None:
    with pytest.raises(ProfileError, match=f"^{where}: "):
        policy(parse(""), env=bad)


# --- filesystem -------------------------------------------------------------------------------

def test_request_filesystem_overrides_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.chdir(tmp_path)
    pol = policy(parse(""), filesystem={"root": ".", "mount_point": "/home/kernel"})
    assert pol.mounts == (Mount(str(tmp_path.resolve()), "/home/kernel", False),)
    assert pol.workdir == "/home/kernel" and dict(pol.env)["HOME"] == "/home/kernel"
    off = parse(f'[filesystem]\nenabled = true\nroot = "{tmp_path}"')
    assert policy(off, filesystem={"enabled": False}).mounts == ()
    ro = policy(off, filesystem={"read_only": True})
    assert ro.mounts[0].read_only and ro.mounts[0].source == str(tmp_path.resolve())


@pytest.mark.parametrize("fs,where,fragment", [
    ({"root": "/no/such/dir/kerneld"}, "request:filesystem.root", "no such directory"),
    ({"enabled": True}, "request:filesystem.root", "required"),
    ({"root": "/tmp", "mount_point": "/"}, "request:filesystem.mount_point", "system"),
    ({"root": "/tmp", "mount_point": "/proc/x"}, "request:filesystem.mount_point", "system"),
    ({"root": "/tmp", "mount_point": "/usr"}, "request:filesystem.mount_point", "system"),
    ({"root": "/tmp", "mount_point": "/opt"}, "request:filesystem.mount_point", "system"),
    ({"root": "/tmp", "mount_point": "/run"}, "request:filesystem.mount_point", "system"),
    ({"root": "/tmp", "extra": 1}, "request:filesystem.extra", "unknown key"),
])
def test_bad_request_filesystem(fs: dict[str, object], where: str, fragment: str) -> None:
    with pytest.raises(ProfileError, match=f"^{where}: .*{fragment}"):
        policy(parse(""), filesystem=fs)


def test_profile_filesystem_missing_root_is_reported_when_lowering() -> None:
    p = parse('[filesystem]\nenabled = true\nroot = "/no/such/dir/kerneld"')
    with pytest.raises(ProfileError, match=r"^p\.toml:filesystem\.root: no such directory"):
        policy(p)


# --- narrowing --------------------------------------------------------------------------------

BASE = """
read = ["/srv/data", "/opt/tools"]
write = ["/srv/out"]
net = ["*.example.com:443", "10.0.0.0/8"]
env = ["AWS_*", "TZ"]
run = ["/usr/bin/env", "/usr/bin"]
sys = ["cpus", "systemMemoryInfo"]
[limits]
memory = "1GiB"
cpu_seconds = 100
"""


def base() -> Profile:
    return parse(BASE, name="base")


def test_narrow_nothing_is_identity() -> None:
    assert narrow(base(), None, None) == base() == narrow(base(), {}, {})


def test_narrow_subsets() -> None:
    p = narrow(base(), {"read": ["/srv/data/sub", "/srv/out/x"], "write": ["/srv/out/y"],
                       "net": ["api.example.com:443", "example.com:443", "10.1.0.0/16"],
                       "env": ["AWS_REGION", "AWS_S3_*", "TZ"], "run": ["/usr/bin/git"],
                       "sys": ["meminfo"]}, None)
    assert p.read == ("/srv/data/sub", "/srv/out/x")  # write implies read
    assert p.net == ("api.example.com:443", "example.com:443", "10.1.0.0/16")
    assert p.env == ("AWS_REGION", "AWS_S3_*", "TZ") and p.run == ("/usr/bin/git",)
    assert p.sys == ("meminfo",)  # same view as Deno's systemMemoryInfo
    assert p.limits == base().limits


def test_narrow_inherits_unnamed_keys_and_can_remove() -> None:
    p = narrow(base(), {"net": [], "write": False}, None)
    assert p.net == () and p.write == () and p.read == base().read
    assert policy(p).net.mode == "none"


def test_narrow_adds_denies() -> None:
    p = narrow(base(), {"deny_net": ["secret.example.com"], "deny_env": ["AWS_SECRET*"]}, None)
    assert p.deny_net == ("secret.example.com",) and p.deny_env == ("AWS_SECRET*",)
    assert not p.env_allowed("AWS_SECRET_ACCESS_KEY")


@pytest.mark.parametrize("perms,key", [
    ({"read": ["/etc"]}, "read"),
    ({"read": ["/srv/database"]}, "read"),  # a prefix string is not a parent directory
    ({"read": True}, "read"),
    ({"write": ["/srv/data"]}, "write"),    # readable is not writable
    ({"net": ["example.org:443"]}, "net"),
    ({"net": ["api.example.com"]}, "net"),  # every port > port 443
    ({"net": ["api.example.com:80"]}, "net"),
    ({"net": ["11.0.0.0/8"]}, "net"),
    ({"net": True}, "net"),
    ({"env": ["HOME"]}, "env"),
    ({"env": ["AWS*"]}, "env"),
    ({"env": True}, "env"),
    ({"run": ["/opt/other/tool"]}, "run"),
    ({"run": True}, "run"),
    ({"sys": ["hostname"]}, "sys"),
    ({"ffi": True}, "ffi"),
])
def test_narrow_refuses_widening(perms: dict[str, object], key: str) -> None:
    with pytest.raises(PermissionDenied, match=rf"^request:permissions\.{key}: .*base"):
        narrow(base(), perms, None)


def test_narrow_true_allowed_when_profile_is_true() -> None:
    assert narrow(parse("net = true"), {"net": True}, None).net == ALL
    assert narrow(parse("net = true"), {"net": ["anything.example:22"]}, None).net == (
        "anything.example:22",)


def test_narrow_bad_values_are_profile_errors() -> None:
    with pytest.raises(ProfileError, match=r"^request:permissions\.read\[0\]: .*absolute"):
        narrow(base(), {"read": ["relative"]}, None)
    with pytest.raises(ProfileError, match=r"^request:permissions\.network: unknown key"):
        narrow(base(), {"network": []}, None)
    with pytest.raises(ProfileError, match=r"^request:permissions: expected a table"):
        narrow(base(), ["read"], None)  # type: ignore[arg-type]


def test_narrow_limits() -> None:
    p = narrow(base(), None, {"memory": "256MiB", "cpu_seconds": 10, "wall_seconds": 5})
    assert p.limits.memory == 256 * MiB and p.limits.cpu_seconds == 10
    assert p.max_execution_time == 5
    assert p.limits.processes == base().limits.processes  # inherited


@pytest.mark.parametrize("limits,key", [
    ({"memory": "2GiB"}, "memory"), ({"memory": False}, "memory"),
    ({"cpu_seconds": 101}, "cpu_seconds"), ({"open_files": 100000}, "open_files"),
])
def test_narrow_limits_refuses_raising(limits: dict[str, object], key: str) -> None:
    with pytest.raises(PermissionDenied, match=rf"^request:limits\.{key}: .*exceeds"):
        narrow(base(), None, limits)


def test_narrow_limits_bad_value() -> None:
    with pytest.raises(ProfileError, match=r'^request:limits\.memory: expected a size'):
        narrow(base(), None, {"memory": "lots"})
    with pytest.raises(ProfileError, match=r"^request:limits\.gpu: unknown key"):
        narrow(base(), None, {"gpu": 1})


def test_narrow_limits_under_unlimited_profile() -> None:
    p = parse("[limits]\nmemory = false")
    assert narrow(p, None, {"memory": "64MiB"}).limits.memory == 64 * MiB


def test_narrow_wall_never_raises_max_execution_time() -> None:
    p = narrow(parse("max_execution_time = 3"), None, {"wall_seconds": 60})
    assert p.max_execution_time == 3


def test_profile_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        base().read = ()  # type: ignore[misc]


# --- report -----------------------------------------------------------------------------------

def test_report_without_probe_data() -> None:
    text = profile_report(load_profile("networked"), None)
    assert "profile: networked" in text and "pypi.org:443" in text
    assert "deny_net gist.github.com" in text and "memory=512MiB" in text


def test_report_with_fake_features() -> None:
    @dataclasses.dataclass
    class Features:
        landlock_abi: int = 7

    from kerneld.permissions import report
    text = report.render_report(
        load_profile("default"), Features(), lambda policy, features: ["seccomp"])
    assert "landlock_abi = 7" in text and "- seccomp" in text and "will NOT start" in text
    text = report.render_report(load_profile("trusted"), Features(), lambda p, f: [])
    assert "UNRESTRICTED" in text and "every layer" in text
