"""Pure parts of the fixes for issue 11 (the daemon attacked): the shallow request-id scanner,
the rate-limited log tally, what an InternalError may say, argument checks that run before
any kernel exists, and the new queue-limit settings. The real daemon under the same attacks:
tests/integration/test_daemon_hostile.py."""

from __future__ import annotations

import logging
import math
import random

import msgspec
import pytest

from kerneld import protocol as p
from kerneld.config import ConfigError, load_daemon_config
from kerneld.errors import InvalidArgument, PermissionDenied
from kerneld.manager import KernelManager
from kerneld.ops import OPS, check_args
from kerneld.service import _internal
from kerneld.systemd import Tally

# ---------------------------------------------------------------------- the request-id scanner

Ext = msgspec.msgpack.Ext
# One value of every msgpack format (fixint, uint/int 8..64, floats, fixstr/str8/16, bin8/16,
# fixext 1/2/4/8/16, ext8/16, fixarray/array16, fixmap/map16, nil, bools).
VALUES = [None, True, False, 0, 127, 128, 255, 65_535, 2**32, 2**64 - 1, -1, -32, -33, -129,
          -2**15 - 1, -2**31 - 1, -2**63, 1.5, "x", "é" * 40, "y" * 300, "z" * 70_000, b"b",
          b"b" * 300, b"b" * 70_000, [], [1, [2, [3]]], list(range(20)), {"a": {"b": [1, 2]}},
          {str(i): i for i in range(20)}, Ext(1, b"a"), Ext(1, b"ab"), Ext(1, b"abcd"),
          Ext(1, b"a" * 8), Ext(1, b"a" * 16), Ext(1, b"abc"), Ext(1, b"a" * 300),
          Ext(1, b"a" * 70_000), "rid"]


def _msgspec_id(raw: bytes) -> str | None:
    try:
        return p._id_decoder.decode(raw).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def test_the_scanner_reads_the_id_msgspec_reads() -> None:
    rng = random.Random(11)
    for _ in range(3_000):
        keys = rng.sample(["id", "t", "v", "op", "args", "x", "y"], rng.randint(0, 6))
        raw = msgspec.msgpack.encode({k: rng.choice(VALUES) for k in keys})
        if rng.random() < 0.2:
            raw = raw[:rng.randint(0, len(raw))]    # truncated
        elif rng.random() < 0.1:
            raw += b"\x00"                          # trailing bytes
        assert p.scan_request_id(raw) == _msgspec_id(raw), raw[:60]


@pytest.mark.parametrize(("raw", "expected"), [
    (b"\x82\xa2id\xa1a\xa2id\xa1b", "b"),          # the last id wins, as in msgspec
    (b"\x82\xa2id\xa1a\xa2id\x01", None),          # an id that is no str
    (b"\x82\x01\x02\xa2id\xa1a", None),            # a key that is no str
    (b"\x81\xa2id\xa2\xff\xfe", None),              # not UTF-8
    (b"\x91\xa2id", None),                          # not a map
    (b"\x81\xa2id\xc1", None),                      # 0xc1 is never used
    (b"\x81\xa1x\xdd\xff\xff\xff\xff", None),        # an array32 claiming 4 G items
    (b"\xdf\xff\xff\xff\xff\xa2id\xa1a", None),      # a map32 claiming 4 G pairs
    (b"", None),
])
def test_the_scanner_on_odd_frames(raw: bytes, expected: str | None) -> None:
    assert p.scan_request_id(raw) == expected
    assert p.request_id(raw) == expected


def _deep(depth: int, container: bytes = b"\x91") -> bytes:
    return (b"\x83\xa1t\xa7request\xa4args\x81\xa1x" + container * depth + b"\xc0"
            + b"\xa2id\xa4deep")


@pytest.mark.parametrize("container", [b"\x91", b"\x81\xa1k"])  # arrays, maps
def test_the_scanner_reads_past_any_depth_where_msgspec_recurses(container: bytes) -> None:
    raw = _deep(30_000, container)  # 30 000 or 60 000 values: within the budget
    with pytest.raises(RecursionError):
        p._id_decoder.decode(raw)
    assert p.scan_request_id(raw) == "deep"
    assert p.request_id(raw) == "deep"


def test_the_scanner_gives_up_beyond_its_budget() -> None:
    assert p.scan_request_id(_deep(1_000), max_items=2_000) == "deep"
    assert p.scan_request_id(_deep(3_000), max_items=2_000) is None


# ---------------------------------------------------------------------- the log tally

class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_tally_warns_a_few_times_then_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    tally = Tally(logging.getLogger("kerneld.fronts.zmq"), "bad request answered", first=3, interval=60.0, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="kerneld.fronts.zmq"):
        for i in range(1_000):
            tally.note(f"id='r{i}'")
            clock.now += 0.01
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1_000  # every occurrence, at DEBUG
    assert warnings == [f"bad request answered count=1 total={n} last: id='r{n - 1}'"
                        for n in (1, 2, 3)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kerneld.fronts.zmq"):
        tally.flush()  # less than a minute since the last warning: nothing yet
        clock.now += 60
        tally.flush()
        tally.flush()  # nothing new: nothing more
        tally.note("id='late'")  # within the next minute: counted, not written
        clock.now += 61
        tally.note("id='later'")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request answered count=997 total=1000 last: id='r999'",
        "bad request answered count=2 total=1002 last: id='later'"]


# ---------------------------------------------------------------------- what clients are told

def test_internal_errors_never_carry_host_paths() -> None:
    path = "/sys/fs/cgroup/memory/process_api/0986/kerneld/m7332-a\n-c0666962"
    exc = _internal("create_kernel", OSError(22, "Invalid argument", path))
    assert str(exc) == "create_kernel: OSError: [Errno 22] Invalid argument"
    exc = _internal("create_kernel", FileNotFoundError(2, "No such file", "/etc/secret"))
    assert "/etc" not in str(exc) and "FileNotFoundError" in str(exc)
    exc = _internal("op", ValueError(f"cannot write {path}/memory.max: busy"))
    assert "/sys/fs/cgroup" not in str(exc) and "<cgroup>" in str(exc)
    assert len(str(_internal("op", ValueError("x" * 100_000)))) < 600


def test_unknown_argument_names_are_shown_briefly() -> None:
    args = {f"{i:03d}" + "n" * 1_000: 1 for i in range(50)}
    with pytest.raises(InvalidArgument) as info:
        check_args(OPS["ping"], args)
    assert len(str(info.value)) < 1_000 and "(50 in all)" in str(info.value)


# ---------------------------------------------------------------------- checks before any kernel

NAN, INF = math.nan, math.inf


async def test_bad_arguments_fail_before_anything_starts() -> None:
    """None of these reach a zygote or a worker: the manager refuses them up front."""
    mgr = KernelManager()
    for value in (NAN, INF, -INF, -1, -0.001, "5", True):
        with pytest.raises(InvalidArgument, match="inactivity_timeout must be a finite"):
            await mgr.create_kernel(inactivity_timeout=value)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="max_execution_time must be a finite"):
            await mgr.create_kernel(max_execution_time=value)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="timeout must be a finite"):
            mgr.set_inactivity_timeout("nope", value)  # type: ignore[arg-type]
    assert mgr.set_inactivity_timeout("nope", 0) is False  # 0 and None stay valid
    assert mgr.set_inactivity_timeout("nope", None) is False
    for name in ("a\n", "ok\n", "x" * 129, "a:b", "", "é", "a\0b", "a b"):
        with pytest.raises(InvalidArgument, match="invalid kernel id") as info:
            await mgr.create_kernel(id=name)
        assert len(str(info.value)) < 200
        with pytest.raises(InvalidArgument, match="invalid namespace"):
            await mgr.create_kernel(namespace=name)
    for name in ("default\n", "-x", ".hidden", "p" * 129, "é", "a\0b", "a b"):
        with pytest.raises(InvalidArgument, match="invalid profile name") as info:
            await mgr.create_kernel(profile=name)
        assert len(str(info.value)) < 200
    for pos in (-1, 4, 2**64 - 1, -2**63, 1.5, True):
        with pytest.raises(InvalidArgument, match=r"cursor_pos must be an integer in 0\.\.len"):
            await mgr.complete("nope", "pri", pos)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match=r"0\.\.3, got"):
            await mgr.inspect("nope", "pri", pos)  # type: ignore[arg-type]
    await mgr.close()


async def test_profile_paths_are_checked_too() -> None:
    from kerneld.config import ManagerConfig
    closed = KernelManager(ManagerConfig(allow_profile_paths=False))
    with pytest.raises(PermissionDenied, match="not paths"):
        await closed.create_kernel(profile="/etc/kerneld/profiles/x.toml")
    mgr = KernelManager()
    with pytest.raises(InvalidArgument, match="invalid profile path"):
        await mgr.create_kernel(profile="/tmp/" + "p" * 5_000 + ".toml")


# ---------------------------------------------------------------------- the queue-limit settings

def test_queue_limits_have_sane_defaults_and_are_configurable() -> None:
    config = load_daemon_config(None, env={})
    assert config.max_queued_executions_per_client == 10_000
    m = config.manager
    assert (m.max_queued_executions, m.max_queued_code) == (1_000, 64 * 1024**2)
    assert (m.max_queued_executions_total, m.max_queued_code_total) == (100_000, 512 * 1024**2)
    config = load_daemon_config(None, env={
        "KERNELD_KERNELS_MAX_QUEUED_EXECUTIONS": "10",
        "KERNELD_KERNELS_MAX_QUEUED_CODE": "8MiB",
        "KERNELD_KERNELS_MAX_QUEUED_EXECUTIONS_PER_CLIENT": "20",
        "KERNELD_KERNELS_MAX_QUEUED_EXECUTIONS_TOTAL": "30",
        "KERNELD_KERNELS_MAX_QUEUED_CODE_TOTAL": "2097152",
    })
    assert config.max_queued_executions_per_client == 20
    m = config.manager
    assert (m.max_queued_executions, m.max_queued_code) == (10, 8 * 1024**2)
    assert (m.max_queued_executions_total, m.max_queued_code_total) == (30, 2 * 1024**2)
    for key, value in (("max_queued_code", "1KiB"), ("max_queued_code", "lots"),
                       ("max_queued_code_total", True), ("max_queued_executions", 0),
                       ("max_queued_executions_per_client", -1)):
        with pytest.raises(ConfigError, match=f"kernels.{key}: expected"):
            load_daemon_config(None, env={}, overrides={f"kernels.{key}": value})
    assert load_daemon_config(None, env={}, overrides={"kernels.max_queued_code": "1 GiB"}
                              ).manager.max_queued_code == 1024**3
