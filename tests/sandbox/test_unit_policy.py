"""Pure tests: Policy round trips and `check()` against fabricated host features."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest
from _policy_dict import policy_from_dict

from sandbox import ALL, HostFeatures, Limits, Mount, NetPolicy, Policy, check

ALL_NS = frozenset({"user", "mnt", "net", "pid", "ipc", "uts", "cgroup"})


def features(**kw: object) -> HostFeatures:
    base: dict[str, object] = {"root": True, "machine": "x86_64", "landlock_abi": 7,
                               "seccomp": True, "namespaces": ALL_NS, "cgroup_version": 1,
                               "cgroup_controllers": frozenset({"memory", "pids", "cpu"}),
                               "memfd_noexec": True, "idmap_mounts": True}
    base.update(kw)
    return HostFeatures(**base)  # type: ignore[arg-type]


ROUND_TRIP = Policy(
    uid=64001, gid=64001, read=("/data",), write=ALL, exec_paths=("/usr/bin/true",),
    sys=("loadavg",), net=NetPolicy(mode="proxy", proxy_port=9),
    mounts=(Mount("/srv/k", "/home/kernel"), Mount("/srv/j", "/j", True, 7, 8, (3, 4))),
    bind_files=(("/run/a", "/run/b"),), limits=Limits(memory_bytes=1, processes=None),
    env=(("A", "1"),))


def test_round_trip_through_the_zygote_wire() -> None:
    """What the daemon does: msgpack a Policy (ForkRequest.policy), the zygote converts it."""
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(ROUND_TRIP))
    assert msgspec.convert(wire, Policy) == ROUND_TRIP


def test_round_trip_through_the_test_drivers_dicts() -> None:
    assert policy_from_dict(dataclasses.asdict(ROUND_TRIP)) == ROUND_TRIP
    assert policy_from_dict({}) == Policy()


def test_unknown_keys_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown Policy keys"):
        policy_from_dict({"raed": ["/etc"]})


def test_fully_capable_host_reports_nothing() -> None:
    assert check(Policy(uid=64001), features()) == []
    assert check(Policy(uid=64001, net=NetPolicy(mode="proxy")), features()) == []


@pytest.mark.parametrize(("kw", "policy", "expected"), [
    ({"seccomp": False}, Policy(uid=1), "seccomp"),
    ({"landlock_abi": 0}, Policy(uid=1), "landlock"),
    ({"landlock_abi": 3}, Policy(uid=1, net=NetPolicy(mode="proxy")),
     "landlock ABI >= 4 for TCP port rules"),
    ({"landlock_abi": 5}, Policy(uid=1, net=NetPolicy(mode="host")),
     "landlock ABI >= 6 for signal and abstract-socket scoping"),
    ({"namespaces": ALL_NS - {"net"}}, Policy(uid=1), "net namespace"),
    ({"namespaces": ALL_NS - {"pid"}}, Policy(uid=1), "pid namespace"),
    ({"cgroup_controllers": frozenset()}, Policy(), "cgroup pids controller"),
    ({"cgroup_controllers": frozenset({"pids"})}, Policy(uid=1), "cgroup cpu controller"),
    ({"root": False, "namespaces": frozenset()}, Policy(), "user namespace"),
    ({"root": False}, Policy(uid=12345678), "switch to uid 12345678"),
    ({}, Policy(uid=1, sys=("teapot",)), "unknown sys kind 'teapot'"),
    ({"memfd_noexec": False}, Policy(uid=1, exec_paths=("/bin/x",)), "vm.memfd_noexec"),
    ({"idmap_mounts": False}, Policy(uid=1, mounts=(Mount("/srv/k", "/home/kernel"),)),
     "idmapped mounts"),
])
def test_missing_features_are_named(kw: dict[str, object], policy: Policy, expected: str) -> None:
    missing = check(policy, features(**kw))
    assert any(m.startswith(expected) for m in missing), missing


def test_net_namespace_not_needed_in_host_mode() -> None:
    f = features(namespaces=ALL_NS - {"net"})
    assert check(Policy(uid=1, net=NetPolicy(mode="host")), f) == []


def test_unique_uid_replaces_pids_cgroup_but_not_for_root_or_none() -> None:
    f = features(cgroup_controllers=frozenset({"memory", "cpu"}))
    assert check(Policy(uid=64001), f) == []
    assert check(Policy(uid=None), f) != []
    assert check(Policy(uid=0), f) != []


def test_prepare_refuses_instance_gaps_in_strict_mode() -> None:
    """Host features are `check`'s business; the policy instance (uid, cgroup dirs) is checked
    by `prepare`, before any fork."""
    import sandbox
    f = features()
    for p, needle in [(Policy(uid=None, limits=Limits(cpu_shares=None)), "non-root policy.uid"),
                      (Policy(uid=0, limits=Limits(cpu_shares=None)), "non-root policy.uid"),
                      (Policy(uid=64001), "no cpu cgroup"),
                      (Policy(uid=None, limits=Limits(cpu_shares=None, processes=4)),
                       "no pids cgroup")]:
        with pytest.raises(sandbox.SandboxError, match=needle) as exc:
            sandbox.prepare(p, f)
        assert exc.value.stage == "probe"
    relaxed = sandbox.prepare(Policy(uid=None, enforcement="best-effort"), f)
    assert relaxed.missing and relaxed.bpf


def test_idmapped_mounts_only_needed_for_mounts_and_a_uid_switch() -> None:
    f = features(idmap_mounts=False)
    assert check(Policy(uid=64001), f) == []
    assert check(Policy(uid=None, mounts=(Mount("/srv/k", "/home/kernel"),),
                        limits=Limits(processes=None, cpu_shares=None)), f) == []
    assert check(Policy(uid=64001, mounts=(Mount("/srv/k", "/home/kernel"),)), features()) == []


def test_old_mount_dicts_still_load() -> None:
    """Policies serialised before `map_uid`/`map_gid` existed mean "the source's owner"."""
    p = policy_from_dict({"mounts": [{"source": "/a", "target": "/b", "read_only": True}]})
    assert p.mounts == (Mount("/a", "/b", True, None, None),)
