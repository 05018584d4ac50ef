"""Configuration, declared once and immutable (frozen dataclasses).

`ManagerConfig` is what a `KernelManager` needs, embedded or in the daemon. The daemon's own
settings wrap it: `DaemonConfig`, loaded by `load_daemon_config` with precedence
defaults < TOML file < `KERNELD_*` environment < command line. Every key is declared once (in
`_KEYS`) with its parser, so all three sources are validated by the same code and every error
names where the bad value came from: `file:table.key`, `env:KERNELD_X` or `command line:table.key`.
Unknown tables and keys in a file are errors. The scalar parsers, the key-table walk and the
unknown-key errors are `kerneld.tomlkeys`, the core permission profiles parse with too.
docs/configuration.md lists every key.
"""

from __future__ import annotations

import grp
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kerneld.access import ProfileAccess
from kerneld.errors import InvalidArgument
from kerneld.tomlkeys import TomlKeys


def _default_runtime_python() -> str:
    return os.environ.get("KERNELD_RUNTIME_PYTHON", "/opt/kerneld/runtime/bin/python")


@dataclass(frozen=True)
class ManagerConfig:
    """Settings of one KernelManager.

    runtime_python: the worker runtime interpreter (a world-readable prefix; see SANDBOX.md).
    preload: modules the zygote imports once so every kernel starts with them warm.
    profile_dirs: where `<name>.toml` profiles are looked up before the packaged ones.
    default_profile: the profile of a kernel created without one.
    allow_in_process: whether IN_PROCESS kernels (no isolation) may be created.
    uid_range: [first, last] unprivileged uids handed out, one per kernel, when running as root.
    confine: apply the sandbox to workers. Only tests of the engine itself turn this off.
    pool_size: idle pre-forked workers kept per profile named in `pool_profiles`.
    inactivity_timeout / max_execution_time: defaults when neither request nor profile sets one.
    stall_grace: seconds an ignored stall interrupt waits before escalating.
    max_kernels: refuse to create more than this many kernels.
    mount_roots: host directories under which a request's `filesystem.root` must lie; None
        allows any directory the caller names (the embedded default: the caller is the
        program itself). The daemon sets a list, because its clients are other users.
    allow_profile_paths: whether `profile=` may name a .toml file instead of a profile name
        (the daemon refuses paths: its clients must not bring their own permissions).
    max_queued_executions / max_queued_code: executions queued or running on one kernel, and
        the bytes of their code; one more is refused with LimitExceeded.
    max_queued_executions_total / max_queued_code_total: the same for all kernels together.
    """

    runtime_python: str = field(default_factory=_default_runtime_python)
    preload: tuple[str, ...] = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot")
    profile_dirs: tuple[str, ...] = ()
    default_profile: str = "default"
    allow_in_process: bool = True
    uid_range: tuple[int, int] = (200_000, 299_999)
    confine: bool = True
    pool_size: int = 0
    pool_profiles: tuple[str, ...] = ("default",)
    inactivity_timeout: float | None = None
    max_execution_time: float | None = None
    stall_grace: float = 2.0
    max_kernels: int = 2000
    runtime_dir: str | None = None
    mount_roots: tuple[str, ...] | None = None
    allow_profile_paths: bool = True
    max_queued_executions: int = 1_000
    max_queued_code: int = 64 * 1024 * 1024
    max_queued_executions_total: int = 100_000
    max_queued_code_total: int = 512 * 1024 * 1024


# =========================================================================== the daemon's config

SYSTEM_ADDRESS = "ipc:///run/kerneld/kerneld.sock"
DEFAULT_PROFILE_DIRS = ("/etc/kerneld/profiles",)
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(InvalidArgument):
    """A configuration value is wrong; the message starts with `file:table.key` (or
    `env:NAME`, or the command-line option)."""


def user_address(uid: int | None = None) -> str:
    """The per-user endpoint: `$XDG_RUNTIME_DIR/kerneld/kerneld.sock`, else
    `/tmp/kerneld-$UID/kerneld.sock`."""
    uid = os.geteuid() if uid is None else uid
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return f"ipc://{runtime}/kerneld/kerneld.sock"
    return f"ipc:///tmp/kerneld-{uid}/kerneld.sock"


def default_address() -> str:
    """Where a daemon listens by default: the system socket as root, else the user's."""
    return SYSTEM_ADDRESS if os.geteuid() == 0 else user_address()


def client_default_address() -> str:
    """Where a client looks without `address`/`$KERNELD_ADDRESS`: the user's own daemon if its
    socket exists, else the system daemon if its socket exists, else `default_address()`."""
    if os.geteuid() != 0:
        mine = user_address()
        if os.path.exists(mine[len("ipc://"):]):
            return mine
        if os.path.exists(SYSTEM_ADDRESS[len("ipc://"):]):
            return SYSTEM_ADDRESS
    return default_address()


DAEMON_MOUNT_ROOTS = ("/srv/kerneld",)


def _daemon_manager_defaults() -> ManagerConfig:
    """The daemon serves other users: no in-process kernels, profiles by name only, and
    mounts only from under DAEMON_MOUNT_ROOTS (a kernel becomes the owner of what it mounts)."""
    return ManagerConfig(allow_in_process=False, profile_dirs=DEFAULT_PROFILE_DIRS,
                         mount_roots=DAEMON_MOUNT_ROOTS, allow_profile_paths=False)


@dataclass(frozen=True)
class HyphaConfig:
    """`[hypha]`: how `kerneld hypha` attaches this host's daemon to a Hypha server as one
    instance of a shared service (docs/hypha.md). The daemon itself ignores the table; the
    attach process reads the same file, so one file configures a host.

    server_url / workspace / token (or token_file, preferred: the file can be 0600 while the
    config is world-readable): where to register; None until set (`kerneld hypha` refuses to
    start without them). service_id: the id every host registers (default "kerneld");
    client_id: this host's unique Hypha client id (None: kerneld-<hostname>, the same after a
    restart, so the host comes back as the same instance).
    visibility: "public" (any workspace may call) or "protected" (only `authorized_workspaces`).
    profiles: the profiles Hypha callers may name. Per workspace and host:
    max_kernels_per_workspace, max_executions_per_workspace (running or queued); per host:
    max_kernels (all kernels made through Hypha). allow_anonymous: whether anonymous Hypha
    users (a fresh workspace per connection, so per-workspace quotas do not bound them) may
    create kernels.
    inactivity_timeout: seconds, for kernels created through Hypha that ask for none (the seed's
    10 minutes); max_inactivity_timeout caps what a caller may ask for.
    results_ttl / max_results_per_workspace: how long and how many executeCode results are kept.
    stream_idle_timeout: a stream whose caller stops reading for this long is closed.
    """

    server_url: str | None = None
    workspace: str | None = None
    token: str | None = None
    token_file: str | None = None
    service_id: str = "kerneld"
    client_id: str | None = None
    visibility: str = "public"
    authorized_workspaces: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ("default",)
    max_kernels_per_workspace: int = 16
    max_executions_per_workspace: int = 32
    max_kernels: int = 64
    allow_anonymous: bool = False
    inactivity_timeout: float = 600.0
    max_inactivity_timeout: float = 86400.0
    results_ttl: float = 600.0
    max_results_per_workspace: int = 100
    stream_idle_timeout: float = 60.0


@dataclass(frozen=True)
class DaemonConfig:
    """Settings of `kerneld serve` (docs/configuration.md lists every key).

    address: the local endpoint (`ipc://PATH`; `tcp://` only with CURVE keys).
    tcp_address: an optional second, CURVE-authenticated `tcp://HOST:PORT` endpoint.
    socket_group / socket_mode: owner group and mode of the ipc socket file.
    log_level: debug | info | warning | error.
    shutdown_grace: seconds SIGTERM waits for running executions before ending them.
    curve_secret_key_file: the server's CURVE certificate (zmq.auth format) for tcp.
    allowed_client_keys: CURVE public keys (Z85, or certificate files/dirs) allowed over tcp.
    max_queued_executions_per_client: executions one client connection (ZeroMQ peer) may have
        queued or running at once ([kernels] in the file, next to the kernels' own limits).
    access: `[access] profiles`, which callers may use which profiles (`kerneld.access`).
    manager: the `ManagerConfig` of the daemon's KernelManager ([runtime], [profiles],
    [kernels], [pool]).
    hypha: `[hypha]`, read only by `kerneld hypha` (the attach process).
    source: the file this was loaded from, if any.
    """

    address: str = field(default_factory=default_address)
    tcp_address: str | None = None
    socket_group: str | None = None
    socket_mode: int = 0o660
    log_level: str = "info"
    shutdown_grace: float = 10.0
    curve_secret_key_file: str | None = None
    allowed_client_keys: tuple[str, ...] = ()
    max_queued_executions_per_client: int = 10_000
    access: ProfileAccess = field(default_factory=ProfileAccess)
    manager: ManagerConfig = field(default_factory=_daemon_manager_defaults)
    hypha: HyphaConfig = field(default_factory=HyphaConfig)
    source: str | None = None

    @property
    def needs_curve(self) -> bool:
        return self.tcp_address is not None or self.address.startswith("tcp://")


# --------------------------------------------------------------------------- value parsers
# The scalar coercions, key-table walk and unknown-key errors are `kerneld.tomlkeys`' (shared
# with permission profiles); what is here is what only the daemon's config knows.
Parser = Callable[[str, Any], Any]
_CORE = TomlKeys(ConfigError)
_fail = _CORE.fail
_bool = _CORE.boolean
_number = _CORE.number
_list = _CORE.list_of


def _string(where: str, value: Any) -> str:
    return _CORE.string(where, value, empty=False)


def _abs_path(where: str, value: Any) -> str:
    path = os.path.expanduser(_string(where, value))
    if not os.path.isabs(path):
        raise _fail(where, f"expected an absolute path, got {value!r}")
    return path


def _opt_path(where: str, value: Any) -> str | None:
    return None if value == "" else _abs_path(where, value)


def _address(where: str, value: Any) -> str:
    text = _string(where, value)
    if text.startswith("ipc://"):
        if not os.path.isabs(text[6:]):
            raise _fail(where, f"an ipc address needs an absolute path: {text!r}")
        return text
    if text.startswith("tcp://"):
        return _tcp(where, text)
    raise _fail(where, f"expected ipc:///path or tcp://host:port, got {text!r}")


def _tcp(where: str, value: Any) -> str:
    text = _string(where, value)
    if not re.match(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.*-]+):[0-9]{1,5}$", text):
        raise _fail(where, f"expected tcp://host:port, got {value!r}")
    return text


def _opt_tcp(where: str, value: Any) -> str | None:
    return None if value == "" else _tcp(where, value)


def _group(where: str, value: Any) -> str | None:
    if value == "" or value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    name = _string(where, value)
    if not name.isdigit():
        try:
            grp.getgrnam(name)
        except KeyError:
            raise _fail(where, f"no such group {name!r}") from None
    return name


def _mode(where: str, value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        value = int(value.replace("o", ""), 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise _fail(where, f"expected a file mode such as 0o660 or \"0660\", got {value!r}")
    if value & 0o007:
        raise _fail(where, f"the socket must not be usable by others (mode {value:#o})")
    return value


def _level(where: str, value: Any) -> str:
    text = str(value).lower() if isinstance(value, str) else value
    if text not in LOG_LEVELS:
        raise _fail(where, f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return str(text)


def _timeout(where: str, value: Any) -> float | None:
    return _number(where, value) or None  # 0 disables


def _int(minimum: int) -> Parser:
    def parse(where: str, value: Any) -> int:
        return _CORE.integer(where, value, minimum=minimum)
    return parse


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
               "g": 1024**3, "gib": 1024**3}


def _size(minimum: int) -> Parser:
    """Bytes: an integer, or a string such as "64MiB" (K/KiB, M/MiB, G/GiB: powers of 1024)."""
    def parse(where: str, raw: Any) -> int:
        value = raw
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", raw) if isinstance(raw, str) else None
        if m is not None and m.group(2).lower() in _SIZE_UNITS:
            value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(where, f"expected a size of at least {minimum} bytes (an integer, or "
                               f"a string such as \"64MiB\"), got {raw!r}")
        return int(value)
    return parse


def _module(where: str, value: Any) -> str:
    name = _string(where, value)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
        raise _fail(where, f"not a module name: {name!r}")
    return name


def _profile(where: str, value: Any) -> str:
    name = _string(where, value)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name):
        raise _fail(where, f"not a profile name: {name!r}")
    return name


def _uid_range(where: str, value: Any) -> tuple[int, int]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
        raise _fail(where, f"expected [first, last] uids, got {value!r}")
    first, last = value
    if not 1000 <= first <= last < 2**32 - 1:
        raise _fail(where, f"expected 1000 <= first <= last < 4294967295, got {value!r}")
    return (first, last)


_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 ".-:+=^!/*?&<>()[]{}@%$#")


def _is_z85_key(text: str) -> bool:
    """A 40-character Z85 public key (unless a file of that name exists: Z85 has '/')."""
    return len(text) == 40 and set(text) <= _Z85 and not os.path.exists(text)


def _client_key(where: str, value: Any) -> str:
    text = _string(where, value)
    if _is_z85_key(text):
        return text
    path = _abs_path(where, text)
    if not os.path.exists(path):
        raise _fail(where, f"expected a Z85 public key (40 characters) or an existing "
                           f"certificate file or directory, got {value!r}")
    return path


def _opt_string(where: str, value: Any) -> str | None:
    return None if value == "" else _string(where, value)


def _url(where: str, value: Any) -> str | None:
    if value == "":
        return None
    text = _string(where, value)
    if not re.match(r"^(https?|wss?)://[^\s/]+", text):
        raise _fail(where, f"expected an http(s):// or ws(s):// server URL, got {value!r}")
    return text


def _hypha_id(where: str, value: Any) -> str:
    text = _string(where, value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", text):
        raise _fail(where, f"expected an id of letters, digits, '_', '.', '-', got {value!r}")
    return text


def _opt_hypha_id(where: str, value: Any) -> str | None:
    return None if value == "" else _hypha_id(where, value)


def _visibility(where: str, value: Any) -> str:
    if value not in ("public", "protected"):
        raise _fail(where, f"expected \"public\" or \"protected\", got {value!r}")
    return str(value)


def _seconds_min(minimum: float) -> Parser:
    def parse(where: str, value: Any) -> float:
        return float(_number(where, value, minimum=minimum))
    return parse


def _access(where: str, value: Any) -> ProfileAccess:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a table of profile = [principals], got {value!r}")
    try:
        return ProfileAccess.from_table(where, value)
    except ValueError as e:
        raise ConfigError(str(e)) from None


# --------------------------------------------------------------------------- the key table

@dataclass(frozen=True)
class _Key:
    target: str      # "daemon" (DaemonConfig), "manager" (ManagerConfig), "hypha" (HyphaConfig)
    field: str
    parse: Parser
    env: str         # how an environment string is read: str, int, float, bool, list, range


_KEYS: dict[str, dict[str, _Key]] = {
    "daemon": {
        "address": _Key("daemon", "address", _address, "str"),
        "tcp_address": _Key("daemon", "tcp_address", _opt_tcp, "str"),
        "socket_group": _Key("daemon", "socket_group", _group, "str"),
        "socket_mode": _Key("daemon", "socket_mode", _mode, "str"),
        "log_level": _Key("daemon", "log_level", _level, "str"),
        "shutdown_grace": _Key("daemon", "shutdown_grace", _number, "float"),
        "curve_secret_key_file": _Key("daemon", "curve_secret_key_file", _opt_path, "str"),
        "allowed_client_keys": _Key("daemon", "allowed_client_keys", _list(_client_key),
                                    "list"),
    },
    "runtime": {
        "python": _Key("manager", "runtime_python", _abs_path, "str"),
        "preload": _Key("manager", "preload", _list(_module), "list"),
    },
    "profiles": {
        "dirs": _Key("manager", "profile_dirs", _list(_abs_path), "list"),
        "default": _Key("manager", "default_profile", _profile, "str"),
    },
    "kernels": {
        "allow_in_process": _Key("manager", "allow_in_process", _bool, "bool"),
        "confine": _Key("manager", "confine", _bool, "bool"),
        "uid_range": _Key("manager", "uid_range", _uid_range, "range"),
        "max_kernels": _Key("manager", "max_kernels", _int(1), "int"),
        "inactivity_timeout": _Key("manager", "inactivity_timeout", _timeout, "float"),
        "max_execution_time": _Key("manager", "max_execution_time", _timeout, "float"),
        "stall_grace": _Key("manager", "stall_grace", _number, "float"),
        "mount_roots": _Key("manager", "mount_roots", _list(_abs_path), "list"),
        "allow_profile_paths": _Key("manager", "allow_profile_paths", _bool, "bool"),
        "max_queued_executions": _Key("manager", "max_queued_executions", _int(1), "int"),
        # at least one execution of the largest code a request may carry (MAX_CODE_BYTES)
        "max_queued_code": _Key("manager", "max_queued_code", _size(1024 * 1024), "str"),
        "max_queued_executions_per_client": _Key("daemon", "max_queued_executions_per_client",
                                                 _int(1), "int"),
        "max_queued_executions_total": _Key("manager", "max_queued_executions_total",
                                            _int(1), "int"),
        "max_queued_code_total": _Key("manager", "max_queued_code_total",
                                      _size(1024 * 1024), "str"),
    },
    "access": {
        "profiles": _Key("daemon", "access", _access, "access"),
    },
    "pool": {
        "size": _Key("manager", "pool_size", _int(0), "int"),
        "profiles": _Key("manager", "pool_profiles", _list(_profile), "list"),
    },
    "hypha": {  # `kerneld hypha` only (HyphaConfig; docs/hypha.md)
        "server_url": _Key("hypha", "server_url", _url, "str"),
        "workspace": _Key("hypha", "workspace", _opt_hypha_id, "str"),
        "token": _Key("hypha", "token", _opt_string, "str"),
        "token_file": _Key("hypha", "token_file", _opt_path, "str"),
        "service_id": _Key("hypha", "service_id", _hypha_id, "str"),
        "client_id": _Key("hypha", "client_id", _opt_hypha_id, "str"),
        "visibility": _Key("hypha", "visibility", _visibility, "str"),
        "authorized_workspaces": _Key("hypha", "authorized_workspaces", _list(_hypha_id),
                                      "list"),
        "profiles": _Key("hypha", "profiles", _list(_profile), "list"),
        "max_kernels_per_workspace": _Key("hypha", "max_kernels_per_workspace", _int(1), "int"),
        "max_executions_per_workspace": _Key("hypha", "max_executions_per_workspace", _int(1),
                                             "int"),
        "max_kernels": _Key("hypha", "max_kernels", _int(1), "int"),
        "allow_anonymous": _Key("hypha", "allow_anonymous", _bool, "bool"),
        "inactivity_timeout": _Key("hypha", "inactivity_timeout", _seconds_min(1.0), "float"),
        "max_inactivity_timeout": _Key("hypha", "max_inactivity_timeout", _seconds_min(1.0),
                                       "float"),
        "results_ttl": _Key("hypha", "results_ttl", _seconds_min(1.0), "float"),
        "max_results_per_workspace": _Key("hypha", "max_results_per_workspace", _int(1), "int"),
        "stream_idle_timeout": _Key("hypha", "stream_idle_timeout", _seconds_min(0.1), "float"),
    },
}


def env_name(table: str, key: str) -> str:
    """`[daemon] address` → KERNELD_ADDRESS; `[pool] size` → KERNELD_POOL_SIZE."""
    return f"KERNELD_{key.upper()}" if table == "daemon" else f"KERNELD_{table}_{key}".upper()


def _from_env(where: str, kind: str, text: str) -> Any:
    """Turn an environment string into the value TOML would have given."""
    text = text.strip()
    try:
        if kind == "int":
            return int(text, 0)
        if kind == "float":
            return float(text)
        if kind == "bool":
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind == "list":
            return [x.strip() for x in text.split(",") if x.strip()]
        if kind == "access":  # "trusted=group:admins,uid:1000;data-science=*"
            return {name.strip(): [x.strip() for x in who.split(",") if x.strip()]
                    for name, _, who in (part.partition("=") for part in text.split(";"))
                    if name.strip()}
        if kind == "range":
            return [int(x, 0) for x in re.split(r"[-,:]", text, maxsplit=1)]
    except ValueError:
        raise _fail(where, f"cannot read {text!r} as {kind}") from None
    return text


def load_daemon_config(path: str | os.PathLike[str] | None = None,
                       env: Mapping[str, str] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Defaults < TOML file `path` < `KERNELD_*` variables of `env` < `overrides`.

    `overrides` maps "table.key" (e.g. "daemon.address") to a value as TOML would give it;
    errors cite it as `command line:table.key`. Unknown tables and keys are errors.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}          # "table.key" → parsed value (later sources win)
    where_of: dict[str, str] = {}
    source = os.fspath(path) if path is not None else None
    if source is not None:
        for name, raw, where in _read_file(source):
            values[name], where_of[name] = _KEYS_FLAT[name].parse(where, raw), where
    for name, spec in _KEYS_FLAT.items():
        var = env_name(*name.split("."))
        if var in env:
            where = f"env:{var}"
            values[name] = spec.parse(where, _from_env(where, spec.env, env[var]))
            where_of[name] = where
    for name, raw in (overrides or {}).items():
        if name not in _KEYS_FLAT:
            raise ConfigError(f"command line: unknown setting {name!r}")
        where = f"command line:{name}"
        values[name], where_of[name] = _KEYS_FLAT[name].parse(where, raw), where
    return _build(values, where_of, source)


_KEYS_FLAT: dict[str, _Key] = {f"{t}.{k}": spec for t, keys in _KEYS.items()
                               for k, spec in keys.items()}


def _read_file(path: str) -> list[tuple[str, Any, str]]:
    """(table.key, raw value, where) of every key in the file; unknown tables and keys are
    refused before any value is parsed."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    out: list[tuple[str, Any, str]] = []
    for table, body in _CORE.loads(path, text).items():
        if table not in _KEYS:
            raise _CORE.unknown(f"{path}:{table}", _KEYS, what="table")
        raw = _CORE.walk(f"{path}:{table}.", _CORE.table(f"{path}:{table}", body),
                         dict.fromkeys(_KEYS[table], _as_read))
        out += [(f"{table}.{key}", value, f"{path}:{table}.{key}") for key, value in raw.items()]
    return out


def _as_read(where: str, value: Any) -> Any:
    return value  # parsed by load_daemon_config, in precedence order


def _build(values: dict[str, Any], where_of: dict[str, str], source: str | None) -> DaemonConfig:
    fields: dict[str, dict[str, Any]] = {"daemon": {}, "manager": {}, "hypha": {}}
    for name, value in values.items():
        spec = _KEYS_FLAT[name]
        fields[spec.target][spec.field] = value
    base = _daemon_manager_defaults()
    config = DaemonConfig(**fields["daemon"], manager=replace(base, **fields["manager"]),
                          hypha=HyphaConfig(**fields["hypha"]), source=source)
    _check(config, where_of)
    return config


def _check(config: DaemonConfig, where_of: dict[str, str]) -> None:
    """Rules that involve several keys."""
    if config.needs_curve:
        name = "daemon.tcp_address" if config.tcp_address else "daemon.address"
        where = where_of.get(name, name)
        if not config.curve_secret_key_file:
            raise ConfigError(f"{where}: listening on tcp needs CURVE authentication: set "
                              "daemon.curve_secret_key_file and daemon.allowed_client_keys")
        if not config.allowed_client_keys:
            raise ConfigError(f"{where}: listening on tcp needs daemon.allowed_client_keys "
                              "(no client could connect otherwise)")
        load_curve_keys(config.curve_secret_key_file,
                        where_of.get("daemon.curve_secret_key_file", "curve_secret_key_file"))
        client_public_keys(config.allowed_client_keys,
                           where_of.get("daemon.allowed_client_keys", "allowed_client_keys"))


def load_curve_keys(path: str, where: str = "curve_secret_key_file") -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a zmq.auth certificate (`*.key_secret`) or from a file
    holding just the 40-character Z85 secret key."""
    import zmq
    import zmq.auth
    public: bytes | None
    secret: bytes | None
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
            public = zmq.curve_public(secret) if len(secret) == 40 else None
        except (OSError, ValueError, zmq.ZMQError):
            public = None
        if public is None:
            raise _fail(where, f"cannot load a CURVE secret key from {path}: {e}") from None
    if not secret or not public:
        raise _fail(where, f"{path} holds no secret key (a public certificate?)")
    return public, secret


def client_public_keys(entries: tuple[str, ...], where: str = "allowed_client_keys"
                       ) -> frozenset[bytes]:
    """Z85 public keys from keys, certificate files and directories of certificates."""
    import zmq.auth
    keys: set[bytes] = set()
    for entry in entries:
        try:
            if _is_z85_key(entry):
                keys.add(entry.encode())
            elif os.path.isdir(entry):
                keys.update(k for k in zmq.auth.load_certificates(entry))
            else:
                keys.add(zmq.auth.load_certificate(entry)[0])
        except (OSError, ValueError, KeyError) as e:
            raise _fail(where, f"bad client key {entry!r}: {e}") from None
    return frozenset(keys)
