"""The daemon's configuration: precedence, validation messages, the shipped example file."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from kerneld import InvalidArgument
from kerneld.config import (
    _KEYS,
    ConfigError,
    DaemonConfig,
    ManagerConfig,
    env_name,
    load_daemon_config,
)

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kerneld.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_defaults_with_in_process_off() -> None:
    cfg = load_daemon_config(None, env={})
    assert isinstance(cfg, DaemonConfig) and cfg.source is None
    assert cfg.manager.confine is True and cfg.manager.allow_in_process is False
    assert cfg.manager.mount_roots == ("/srv/kerneld",)
    assert cfg.manager.allow_profile_paths is False
    embedded = ManagerConfig()
    assert replace(cfg.manager, allow_in_process=True, profile_dirs=(), mount_roots=None,
                   allow_profile_paths=True) == embedded
    assert cfg.socket_mode == 0o660 and cfg.log_level == "info" and cfg.shutdown_grace == 10
    assert cfg.address.startswith("ipc://") and cfg.tcp_address is None


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[daemon]
address = "ipc:///tmp/from-file.sock"
log_level = "warning"
[pool]
size = 2
profiles = ["default", "trusted"]
[kernels]
max_kernels = 10
""")
    env = {"KERNELD_ADDRESS": "ipc:///tmp/from-env.sock", "KERNELD_POOL_SIZE": "3",
           "KERNELD_KERNELS_CONFINE": "false", "KERNELD_RUNTIME_PRELOAD": "numpy, pandas",
           "KERNELD_KERNELS_UID_RANGE": "300000-300100", "UNRELATED": "x"}
    cfg = load_daemon_config(path, env=env, overrides={"daemon.address": "ipc:///tmp/cli.sock"})
    assert cfg.address == "ipc:///tmp/cli.sock"             # CLI beats env beats file
    assert cfg.log_level == "warning"                        # file beats default
    assert cfg.manager.pool_size == 3                        # env beats file
    assert cfg.manager.pool_profiles == ("default", "trusted")
    assert cfg.manager.max_kernels == 10
    assert cfg.manager.confine is False
    assert cfg.manager.preload == ("numpy", "pandas")
    assert cfg.manager.uid_range == (300000, 300100)
    assert cfg.source == str(path)
    assert load_daemon_config(path, env={}).address == "ipc:///tmp/from-file.sock"


def test_timeouts_zero_disables_and_mode_strings(tmp_path: Path) -> None:
    cfg = load_daemon_config(_write(tmp_path, """
[daemon]
socket_mode = "0640"
socket_group = "root"
[kernels]
inactivity_timeout = 0
max_execution_time = 30
"""), env={})
    assert cfg.socket_mode == 0o640 and cfg.socket_group == "root"
    assert cfg.manager.inactivity_timeout is None and cfg.manager.max_execution_time == 30.0


@pytest.mark.parametrize(("text", "message"), [
    ("[kernels]\nmax_kernels = 0\n", r"kerneld\.toml:kernels\.max_kernels: expected an integer >= 1, got 0"),
    ("[kernels]\nmax_kernel = 5\n", r"kerneld\.toml:kernels\.max_kernel: unknown key; expected one of"),
    ("[kernel]\nmax_kernels = 5\n", r"kerneld\.toml:kernel: unknown table; expected one of daemon"),
    ("colour = 1\n", r"kerneld\.toml:colour: unknown table"),
    ("[daemon]\naddress = 'http://x'\n", r"kerneld\.toml:daemon\.address: expected ipc:///path"),
    ("[daemon]\nsocket_mode = 0o666\n", r"kerneld\.toml:daemon\.socket_mode: the socket must not"),
    ("[daemon]\nlog_level = 'loud'\n", r"kerneld\.toml:daemon\.log_level: expected one of debug"),
    ("[daemon]\nshutdown_grace = -1\n", r"kerneld\.toml:daemon\.shutdown_grace: expected a number >= 0"),
    ("[daemon]\nsocket_group = 'no-such-group-x'\n", r"daemon\.socket_group: no such group"),
    ("[runtime]\npython = 'python3'\n", r"kerneld\.toml:runtime\.python: expected an absolute path"),
    ("[runtime]\npreload = ['ok', '1bad']\n", r"kerneld\.toml:runtime\.preload\[1\]: not a module name"),
    ("[kernels]\nconfine = 'no'\n", r"kerneld\.toml:kernels\.confine: expected true or false"),
    ("[kernels]\nuid_range = [5, 1]\n", r"kerneld\.toml:kernels\.uid_range: expected 1000 <= first"),
    ("[pool]\nprofiles = 'default'\n", r"kerneld\.toml:pool\.profiles: expected a list"),
    ("[daemon]\ntcp_address = 'tcp://127.0.0.1:5599'\n",
     r"kerneld\.toml:daemon\.tcp_address: listening on tcp needs CURVE"),
    ("[daemon\n", r"kerneld\.toml: invalid TOML"),
])
def test_errors_name_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_daemon_config(_write(tmp_path, text), env={})
    assert isinstance(info.value, InvalidArgument)
    assert str(info.value).startswith(str(tmp_path))


def test_env_and_cli_errors_name_their_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^env:KERNELD_POOL_SIZE: cannot read 'lots' as int"):
        load_daemon_config(None, env={"KERNELD_POOL_SIZE": "lots"})
    with pytest.raises(ConfigError, match=r"^env:KERNELD_KERNELS_CONFINE: cannot read"):
        load_daemon_config(None, env={"KERNELD_KERNELS_CONFINE": "maybe"})
    with pytest.raises(ConfigError, match=r"^command line:daemon\.address: expected"):
        load_daemon_config(None, env={}, overrides={"daemon.address": "nowhere"})
    with pytest.raises(ConfigError, match=r"command line: unknown setting 'daemon\.colour'"):
        load_daemon_config(None, env={}, overrides={"daemon.colour": 1})
    with pytest.raises(ConfigError, match=r"cannot read the config file"):
        load_daemon_config(tmp_path / "missing.toml", env={})


def test_curve_keys_are_checked_at_load(tmp_path: Path) -> None:
    import zmq.auth
    _, secret = zmq.auth.create_certificates(tmp_path, "server")
    public, _ = zmq.auth.create_certificates(tmp_path, "client")
    cfg = load_daemon_config(_write(tmp_path, f"""
[daemon]
tcp_address = "tcp://127.0.0.1:5599"
curve_secret_key_file = "{secret}"
allowed_client_keys = ["{public}", "{tmp_path}"]
"""), env={})
    assert cfg.needs_curve
    with pytest.raises(ConfigError, match=r"daemon\.curve_secret_key_file: cannot load"):
        load_daemon_config(_write(tmp_path, f"""
[daemon]
tcp_address = "tcp://127.0.0.1:5599"
curve_secret_key_file = "{tmp_path}/nope"
allowed_client_keys = ["{public}"]
"""), env={})


def test_the_shipped_file_documents_every_key_with_its_default(tmp_path: Path) -> None:
    text = (ROOT / "etc" / "kerneld.toml").read_text()
    # the file as shipped (everything commented) is the defaults
    assert load_daemon_config(ROOT / "etc" / "kerneld.toml", env={}) == replace(
        load_daemon_config(None, env={}), source=str(ROOT / "etc" / "kerneld.toml"))
    documented = set(re.findall(r"^# ([a-z_]+) = ", text, re.MULTILINE))
    every = {key for keys in _KEYS.values() for key in keys}
    assert documented == every
    # uncommenting the defaults (not the examples) changes nothing
    examples = {"tcp_address", "socket_group", "curve_secret_key_file"}
    lines = []
    for line in text.splitlines():
        m = re.match(r"^# ([a-z_]+) = (.*)$", line)
        lines.append(f"{m.group(1)} = {m.group(2)}" if m and m.group(1) not in examples
                     else line)
    uncommented = load_daemon_config(_write(tmp_path, "\n".join(lines)), env={})
    assert replace(uncommented, source=None) == load_daemon_config(None, env={})


def test_every_key_is_in_the_docs() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for table, keys in _KEYS.items():
        for key in keys:
            assert f"`{key}`" in docs, f"[{table}] {key} undocumented"
            assert env_name(table, key) in docs


def test_z85_keys_may_contain_a_slash(tmp_path: Path) -> None:
    import zmq
    while True:  # Z85's alphabet has '/': such keys are keys, not paths
        public, _ = zmq.curve_keypair()
        if b"/" in public:
            break
    _, secret = __import__("zmq.auth").auth.create_certificates(tmp_path, "server")
    cfg = load_daemon_config(_write(tmp_path, f"""
[daemon]
tcp_address = "tcp://127.0.0.1:5599"
curve_secret_key_file = "{secret}"
allowed_client_keys = ["{public.decode()}"]
"""), env={})
    assert cfg.allowed_client_keys == (public.decode(),)
