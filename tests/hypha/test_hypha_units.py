"""The pure parts of `kerneld hypha`: the seed's argument conventions, kernel-id scoping,
result retention, idle streams, quotas, the [hypha] config and the systemd unit."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from kerneld.config import ConfigError, load_daemon_config
from kerneld.errors import InvalidArgument, KernelNotFound, LimitExceeded
from kerneld.hypha.args import (
    Args,
    daemon_namespace,
    namespace_of,
    public_id,
    public_text,
    scoped_kernel_id,
)
from kerneld.hypha.state import Execution, InFlight, OpenStream, Results, Streams

ROOT = Path(__file__).resolve().parents[2]


def test_one_dict_keywords_snake_case_and_http_arrays_read_alike() -> None:
    allowed = ("kernel_id", "code")
    for params, kwargs in (({"kernelId": "k", "code": "1"}, {}),
                           (None, {"kernelId": "k", "code": "1"}),
                           ({"kernel_id": "k"}, {"code": "1"}),
                           (None, {"0": {"kernelId": "k", "code": "1"}})):
        a = Args("executeCode", params, dict(kwargs), allowed)
        assert (a.required("kernel_id"), a.string("code")) == ("k", "1")
    with pytest.raises(InvalidArgument, match="unknown argument 'kernelID'.*code, kernelId"):
        Args("executeCode", {"kernelID": "k"}, {}, allowed)
    with pytest.raises(InvalidArgument, match="expected one object"):
        Args("executeCode", ["k"], {}, allowed)
    with pytest.raises(InvalidArgument, match="kernelId is required"):
        Args("executeCode", {}, {}, allowed).required("kernel_id")
    with pytest.raises(InvalidArgument, match="timeout must be a number >= 0"):
        Args("f", {"timeout": -1}, {}, ("timeout",)).number("timeout")


def test_kernel_ids_are_read_in_the_callers_namespace_only() -> None:
    # workspace WS owns the daemon namespace hypha.WS, never WS itself (another adapter's or
    # a local user's namespace may be called like any workspace)
    assert scoped_kernel_id("abc", "ws-user-bob") == "hypha.ws-user-bob:abc"
    assert scoped_kernel_id("ws-user-bob:abc", "ws-user-bob") == "hypha.ws-user-bob:abc"
    assert scoped_kernel_id("abc", "jupyter") == "hypha.jupyter:abc"
    assert daemon_namespace("jupyter") == "hypha.jupyter"
    assert public_id("hypha.ws-user-bob:abc") == "ws-user-bob:abc"
    assert public_text("kernel 'hypha.ws-user-bob:abc' not found") == \
        "kernel 'ws-user-bob:abc' not found"
    with pytest.raises(KernelNotFound):
        scoped_kernel_id("hypha.ws-user-bob:abc", "ws-user-bob")
    for foreign in ("ws-user-alice:abc", "x:y:z", "", "a b", "ws-user-bob:"):
        with pytest.raises(KernelNotFound) as err:
            scoped_kernel_id(foreign, "ws-user-bob")
        assert "not found" in str(err.value) and "denied" not in str(err.value)
    assert namespace_of({"ws": "ws-user-bob"}) == "ws-user-bob"
    for bad in (None, {}, {"ws": ""}, {"ws": "a:b"}, {"ws": "a.b"}, {"ws": "w" * 123}):
        with pytest.raises(InvalidArgument, match="context|cannot be served"):
            namespace_of(bad)
    assert namespace_of({"ws": "w" * 122}) == "w" * 122   # hypha.<ws> fits in 128


def test_results_expire_and_are_bounded_per_workspace() -> None:
    now = [0.0]
    results = Results(ttl=10, per_namespace=2, clock=lambda: now[0])
    a, b = Execution("a", "ns", "ns:k", "1"), Execution("b", "ns", "ns:k", "2")
    results.add(a)
    results.add(b)
    with pytest.raises(LimitExceeded, match="max_results_per_workspace = 2"):
        results.add(Execution("c", "ns", "ns:k", "3"))   # both still running
    results.finish(a)
    results.add(Execution("c", "ns", "ns:k", "3"))       # the finished one goes first
    with pytest.raises(KernelNotFound):
        results.get("ns", "ns:k", "a")
    assert results.get("ns", "ns:k", "b") is b
    with pytest.raises(KernelNotFound):                 # another workspace, another kernel
        results.get("other", "ns:k", "b")
    with pytest.raises(KernelNotFound):
        results.get("ns", "ns:other", "b")
    now[0] = 5
    results.finish(b)
    now[0] = 14.5
    assert results.get("ns", "ns:k", "b") is b
    now[0] = 15.5
    with pytest.raises(KernelNotFound, match="kept for 10 s"):
        results.get("ns", "ns:k", "b")


def test_an_idle_stream_is_closed_and_released_once() -> None:
    now = [0.0]
    streams = Streams(idle_timeout=5, clock=lambda: now[0])
    released: list[int] = []
    inflight = InFlight(max_executions=1)
    release = inflight.admit("ns", "streamExecution")
    with pytest.raises(LimitExceeded, match="max_executions_per_workspace = 1"):
        inflight.admit("ns", "executeCode")
    closed: list[bool] = []

    async def gen():  # type: ignore[no-untyped-def]
        try:
            yield {"type": "stream"}
            yield {"type": "complete"}
        finally:
            closed.append(True)

    async def run() -> None:
        entry = OpenStream("ns", "ns:k", lambda: (released.append(1), release()))
        entry.generator = gen()
        streams.add(entry)
        await entry.generator.__anext__()
        streams.waiting(entry)
        now[0] = 4
        await streams.sweep()
        assert streams.open == {entry}
        now[0] = 6
        await streams.sweep()
        assert streams.open == set() and closed == [True] and released == [1]
        streams.finished(entry)                 # the generator's own finally, later: no-op
        assert released == [1] and streams.closed_idle == 1

    asyncio.run(run())
    assert inflight.total() == 0
    inflight.admit("ns", "executeCode")         # the slot is free again


def test_hypha_config_table_environment_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[hypha]\nserver_url = "https://h.example"\nworkspace = "fleet"\n'
                    'profiles = ["default", "data-science"]\nstream_idle_timeout = 5\n')
    cfg = load_daemon_config(path, env={"KERNELD_HYPHA_SERVICE_ID": "kd"}).hypha
    assert (cfg.server_url, cfg.workspace, cfg.service_id) == ("https://h.example", "fleet", "kd")
    assert cfg.profiles == ("default", "data-science") and cfg.stream_idle_timeout == 5
    for text, words in (('server_url = "ftp://x"', "hypha.server_url: expected an http"),
                        ('visibility = "secret"', "hypha.visibility"),
                        ('service_id = "a/b"', "hypha.service_id"),
                        ("results_ttl = 0", "hypha.results_ttl"),
                        ("colour = 1", "colour")):
        path.write_text(f"[hypha]\n{text}\n")
        with pytest.raises(ConfigError, match=words):
            load_daemon_config(path, env={})


def test_cli_refuses_to_start_without_its_settings(tmp_path: Path) -> None:
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "kerneld", "hypha",
                           "--server-url", "http://127.0.0.1:9", "--workspace", "fleet"],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                          env={"PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 78, proc.stderr
    assert "needs --token or --token-file" in proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_the_second_unit_verifies_next_to_the_daemons(tmp_path: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "install-systemd.sh"), "--output",
                    str(tmp_path / "kerneld.service")], check=True, timeout=30,
                   capture_output=True)
    text = (ROOT / "systemd" / "kerneld-hypha.service").read_text()
    assert "ExecStart=/opt/kerneld/src/.venv/bin/kerneld hypha --config " in text
    (tmp_path / "kerneld-hypha.service").write_text(text.replace("/opt/kerneld/src", str(ROOT)))
    proc = subprocess.run(["systemd-analyze", "verify", "kerneld-hypha.service",
                           "kerneld.service"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_token_file_on_the_command_line_beats_a_token_in_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import socket

    from kerneld.hypha.attach import settings_from
    for name in ("KERNELD_HYPHA_TOKEN", "KERNELD_HYPHA_TOKEN_FILE", "KERNELD_HYPHA_CLIENT_ID",
                 "KERNELD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "k.toml"
    config.write_text('[hypha]\nserver_url = "https://h.example"\nworkspace = "fleet"\n'
                      'token = "from-the-file"\n')
    secret = tmp_path / "hypha.token"
    secret.write_text("from-the-command-line\n")
    args = argparse.Namespace(config=str(config), token=None, token_file=str(secret))
    settings = settings_from(args)
    assert settings.token == "from-the-command-line"
    # the same host gets the same instance id after a restart (no pid in it)
    assert settings.client_id == f"kerneld-{socket.gethostname()}"
    monkeypatch.setenv("KERNELD_HYPHA_TOKEN", "from-the-environment")
    assert settings_from(argparse.Namespace(config=str(config))).token == "from-the-environment"
    assert settings_from(args).token == "from-the-command-line"
    assert settings_from(argparse.Namespace(config=str(config), token="cli")).token == "cli"
