"""`kerneld hypha`: the process that attaches one host's daemon to a Hypha server.

Process model: one asyncio program, a client of the local daemon (`DaemonLink`: one
`kerneld.AsyncClient`) and of the Hypha server (hypha-rpc's websocket client), registering
this host as one instance, `<workspace>/<client_id>:<service_id>`, of the service every host of
the fleet shares. Users pick an instance with `select:min:getEngineLoad` and keep it for the
kernel's life (docs/hypha.md). It is a separate process (and systemd unit,
`systemd/kerneld-hypha.service`), not a part of the daemon: the daemon keeps no network
client of its own, Hypha's libraries never load into the process that confines kernels, and
this process outlives its daemon, which is what lets callers get a clear error when the
daemon dies (HYPHA.md §6).

State: `advertised` (the registration's info while registered), the `HostService` (results,
streams, quotas), the link's liveness.

Liveness and faults:
- daemon gone: requests in flight fail within ~50 ms (the client), each with an error naming
  this host; the link's watch notices within ~1.5 s and the service is unregistered, so
  `list_services` stops showing it and placement skips it (getEngineLoad raises meanwhile).
  When a probe answers again, the service is registered again under the same id.
- Hypha connection dropped: hypha-rpc reconnects with exponential back-off and registers the
  service again by itself; kernels keep running in the daemon meanwhile. If the server refuses
  the reconnection (or the first connection fails), `_connect` starts over with its own
  back-off (1 s doubling to 30 s).
- every `SWEEP` seconds: executeCode results past their time, streams whose caller stopped
  reading (`[hypha] stream_idle_timeout`); and, while the daemon is up but this host is not
  listed (a registration that failed: the server was slow, down or refused it), registering
  again.

Shutdown (SIGTERM, SIGINT), also while still connecting: unregister (no new calls), end the calls and streams in flight
with "host … is shutting down" (closing the daemon client fails them), give those errors
0.3 s to reach their callers, disconnect. Kernels stay in the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from kerneld.config import ConfigError, HyphaConfig, load_daemon_config
from kerneld.hypha.link import DaemonLink
from kerneld.hypha.service import HostService

log = logging.getLogger(__name__)

SWEEP = 1.0
UNLIST_EVERY = 5           # sweeps between checks that a down host stays unlisted
BACKOFF = (1.0, 30.0)      # first and largest delay between connection attempts
EX_CONFIG = 78


@dataclass(frozen=True)
class Settings:
    """Everything `kerneld hypha` needs, resolved (config < environment < command line)."""

    hypha: HyphaConfig
    token: str
    client_id: str
    address: str


def settings_from(args: argparse.Namespace) -> Settings:
    """Read `[hypha]` (and the daemon's address) from the config file and environment, then
    the command-line options; ConfigError names what is missing or wrong.

    The token: the most specific source wins, as for every other setting — the command line
    (`--token`, then `--token-file`), then the environment (`KERNELD_HYPHA_TOKEN`, then
    `KERNELD_HYPHA_TOKEN_FILE`), then the file (`token`, then `token_file`). So an operator's
    `--token-file` is used even when the file also has a `[hypha] token`."""
    path = getattr(args, "config", None) or os.environ.get("KERNELD_CONFIG") or None
    overrides: dict[str, Any] = {}
    for option, key in (("server_url", "server_url"), ("workspace", "workspace"),
                        ("token", "token"), ("token_file", "token_file"),
                        ("service_id", "service_id"), ("client_id", "client_id")):
        value = getattr(args, option, None)
        if value is not None:
            overrides[f"hypha.{key}"] = value
    if getattr(args, "address", None):
        overrides["daemon.address"] = args.address
    config = load_daemon_config(path, os.environ, overrides)
    hypha = config.hypha
    for key, flag in (("server_url", "--server-url"), ("workspace", "--workspace")):
        if getattr(hypha, key) is None:
            raise ConfigError(f"kerneld hypha needs {flag} (or [hypha] {key})")
    token = _token(args, hypha)
    if not token:
        raise ConfigError("kerneld hypha needs --token or --token-file (or [hypha] token / "
                          "token_file): a read_write token of the fleet's workspace")
    client_id = hypha.client_id or default_client_id()
    return Settings(hypha, token, client_id, config.address)


def default_client_id() -> str:
    """`kerneld-<hostname>`: unique per host (hostnames of a fleet are), and the same after a
    restart, so a restarted host comes back as the same instance id."""
    host = "".join(c if c.isalnum() or c in "_-" else "-" for c in socket.gethostname())
    return f"kerneld-{host.strip('-') or 'host'}"


def _token(args: argparse.Namespace, hypha: HyphaConfig) -> str | None:
    """The host token from the most specific source (see `settings_from`)."""
    env = os.environ
    for token, path in ((getattr(args, "token", None), getattr(args, "token_file", None)),
                        (env.get("KERNELD_HYPHA_TOKEN") or None,
                         env.get("KERNELD_HYPHA_TOKEN_FILE") or None),
                        (hypha.token, hypha.token_file)):
        if token:
            return str(token)
        if path:
            try:
                with open(path) as f:
                    return f.read().strip()
            except OSError as exc:
                raise ConfigError(f"hypha.token_file: cannot read {path}: "
                                  f"{exc.strerror or exc}") from None
    return None


class Attachment:
    """One host attached to one Hypha server (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.link = DaemonLink(settings.address, settings.client_id)
        assert settings.hypha.workspace is not None
        self.service = HostService(self.link, settings.hypha,
                                   fleet_workspace=settings.hypha.workspace)
        self.server: Any = None
        self.advertised: dict[str, Any] | None = None
        self.listed = False
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ Hypha

    async def _connect(self) -> None:
        from hypha_rpc import connect_to_server
        cfg = self.settings.hypha
        delay = BACKOFF[0]
        while not self._stop.is_set():
            try:
                # raced against SIGTERM: a server that accepts the connection and then stalls
                # must not keep a stopped process alive
                attempt = asyncio.ensure_future(connect_to_server({
                    "server_url": cfg.server_url, "workspace": cfg.workspace,
                    "token": self.settings.token, "client_id": self.settings.client_id,
                    "name": f"kerneld host {self.settings.client_id}"}))
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not attempt.done():
                    attempt.cancel()
                    with contextlib.suppress(BaseException):
                        await attempt
                    log.info("stopped while connecting to hypha server=%s", cfg.server_url)
                    return
                self.server = attempt.result()
                if self._stop.is_set():
                    return
                log.info("connected to hypha server=%s workspace=%s client_id=%s",
                         cfg.server_url, cfg.workspace, self.settings.client_id)
                return
            except Exception as exc:  # noqa: BLE001 - any failure: retry later, with back-off
                log.warning("cannot connect to hypha server=%s: %s: %s (retrying in %.0f s)",
                            cfg.server_url, type(exc).__name__, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(2 * delay, BACKOFF[1])

    def _definition(self) -> dict[str, Any]:
        cfg = self.settings.hypha
        config: dict[str, Any] = {"visibility": cfg.visibility, "require_context": True}
        if cfg.authorized_workspaces:
            config["authorized_workspaces"] = list(cfg.authorized_workspaces)
        return {"id": cfg.service_id, "name": "kerneld", "type": "kerneld",
                "description": "Confined, stateful Python kernels (kerneld); select an "
                               "instance with select:min:getEngineLoad and keep it",
                "config": config, **self.service.functions()}

    async def advertise(self, up: bool) -> None:
        """Listed while the daemon answers; taken off the server's listing while it does not.
        The local registration stays meanwhile, so a caller holding this instance's proxy
        still reaches it and is told, by name, that this host's daemon is unavailable."""
        async with self._lock:
            if self.server is None or self._stop.is_set():
                return
            try:
                if up and (self.advertised is None or not self.listed):
                    if self.advertised is not None:   # registered anew, not overwritten
                        with contextlib.suppress(Exception):
                            await self.server.rpc.unregister_service(
                                str(self.advertised["id"]), notify=False)
                    self.advertised = await self.server.register_service(
                        self._definition(), {"overwrite": True})
                    self.service.service_id = str(self.advertised["id"])
                    self.listed = True
                    log.info("registered service=%s", self.service.service_id)
                elif not up and self.advertised is not None and self.listed:
                    self.listed = False
                    await self._unlist(str(self.advertised["id"]))
                    log.warning("unregistered service=%s (daemon unavailable)",
                                self.advertised["id"])
            except Exception as exc:  # noqa: BLE001 - hypha-rpc raises many kinds
                log.error("hypha %s failed: %s: %s", "registration" if up else
                          "unregistration", type(exc).__name__, exc)

    async def _unlist(self, full_id: str) -> None:
        """Take this instance off the server by its full id. hypha-rpc's own
        `unregister_service` sends the bare service id, which the server resolves as
        `<workspace>/*:<id>` and refuses as ambiguous once several hosts share the id; so ask
        the workspace manager directly."""
        manager = await self.server.rpc.get_manager_service(
            {"timeout": 20, "case_conversion": "snake"})
        await manager.unregister_service(full_id)

    async def _keep_unlisted(self) -> None:
        """While the daemon is down: hypha-rpc registers every local service again when it
        reconnects, so take this one off again (a no-op error when it is not listed)."""
        if self.server is None or self.advertised is None or self.link.up or self.listed:
            return
        with contextlib.suppress(Exception):
            await self._unlist(str(self.advertised["id"]))

    def _connection_closed(self) -> bool:
        """Whether hypha-rpc gave up on its connection for good (it reconnects by itself
        otherwise). hypha-rpc has no public flag for it: read its connection's `_closed`."""
        connection = getattr(getattr(self.server, "rpc", None), "_connection", None)
        return bool(getattr(connection, "_closed", False))

    # ------------------------------------------------------------------ the run

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.link.on_change = self.advertise
        await self.link.start()
        if not self.link.up:
            log.warning("daemon not answering at %s yet: %s", self.link.address,
                        self.link.reason)
        await self._connect()
        await self.advertise(self.link.up)
        ticks = 0
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), SWEEP)
                await self.service.sweep()
                ticks += 1
                if ticks % UNLIST_EVERY == 0:
                    await self._keep_unlisted()
                if (self.link.up and not self.listed and self.server is not None
                        and not self._stop.is_set()):
                    await self.advertise(True)   # a registration that failed: retry
                if self.server is not None and self._connection_closed():
                    log.warning("hypha connection closed for good; connecting again")
                    self.advertised, self.listed = None, False
                    await self._connect()
                    await self.advertise(self.link.up)
        finally:
            await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        self._stop.set()
        if self.server is not None and self.advertised is not None:
            with contextlib.suppress(Exception):
                if self.listed:
                    await asyncio.wait_for(self._unlist(str(self.advertised["id"])), 2.0)
                await self.server.rpc.unregister_service(str(self.advertised["id"]),
                                                         notify=False)
            self.advertised, self.listed = None, False
        self.link.closing = True
        await self.link.close()          # calls and streams in flight fail, naming the host
        await asyncio.sleep(0.3)         # ... and their errors reach the callers
        await self.service.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.disconnect(), 2.0)
        log.info("detached from hypha")


def main(args: argparse.Namespace) -> int:
    """`kerneld hypha ...` (kerneld/cli.py)."""
    from kerneld.systemd import setup_logging
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"kerneld: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        import hypha_rpc  # noqa: F401
    except ImportError:
        print("kerneld: `kerneld hypha` needs hypha-rpc: pip install 'kerneld[hypha]'",
              file=sys.stderr)
        return 1
    setup_logging("debug" if getattr(args, "debug", False) else "info")
    for noisy in ("hypha_rpc", "websockets", "shortuuid"):
        logging.getLogger(noisy).setLevel(logging.WARNING if args.debug else logging.ERROR)
    return asyncio.run(Attachment(settings).run())
