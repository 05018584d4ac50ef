"""The kerneld daemon's composition root: config, manager, service, fronts, signals, systemd.

Process model: `kerneld serve` runs `Daemon.run()` on one asyncio event loop in one thread
(ZeroMQ adds its own I/O thread). On it live the `KernelManager` (which owns the zygote and
the workers), the request `Service` over it, and the fronts that feed the service (today one,
`kerneld.fronts.zmq`). The daemon itself handles no request: it builds these, starts them,
reloads them and stops them.

Liveness: a worker or zygote crash is the manager's business (a worker's: KernelDied events;
the zygote's: its kernels carry on, a new zygote starts on the next fork); nothing from a
client or a kernel can raise into the loop.
systemd is told READY=1 once the zygote is up, STATUS= every few seconds, WATCHDOG=1 every
half WATCHDOG_USEC (from the loop itself, so a wedged loop stops the pings).

Signals only enqueue commands (`handle_<name>` runs them): SIGTERM/SIGINT → shutdown,
SIGHUP → reload (a failed reload keeps the old config; running kernels keep their policy).

Shutdown ladder, run once for all fronts: stop accepting (new requests get
DaemonUnavailable), wait up to `shutdown_grace` seconds for running executions (a second
SIGTERM/SIGINT skips the wait), `manager.close()` (the rest end with execute_error
DaemonShutdown, every kernel tree is killed), let the service's last tasks answer and the
fronts flush their last replies, close the fronts (the ipc socket file is removed), exit 0,
all within grace + 2 s. Had the daemon been SIGKILLed instead, the zygote (watching a pidfd
of the daemon) kills and reaps every worker and kernel init, and each init also exits on its
own when the daemon does: nothing outlives the daemon. `kerneld serve` is a child subreaper
(cli), so a zygote that dies leaves its kernels to the daemon, which keeps them (see
`kerneld.manager`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil

from kerneld import protocol as p
from kerneld.config import ConfigError, DaemonConfig, ManagerConfig
from kerneld.errors import KernelError
from kerneld.fronts import Front
from kerneld.fronts.zmq import ZmqFront
from kerneld.manager import KernelManager
from kerneld.service import Service, version
from kerneld.systemd import Notifier

log = logging.getLogger(__name__)

STATUS_INTERVAL = 5.0
# Fields of ManagerConfig that only take effect when the daemon restarts.
_RESTART_ONLY = ("runtime_python", "preload", "runtime_dir")
_DAEMON_RESTART_ONLY = ("address", "tcp_address", "socket_group", "socket_mode",
                        "curve_secret_key_file")


class Daemon:
    """`kerneld serve`: see the module docstring."""

    def __init__(self, config: DaemonConfig,
                 reload: Callable[[], DaemonConfig] | None = None) -> None:
        self.config = config
        self._reload = reload
        self.manager = KernelManager(_with_runtime_dir(config))
        self.service = Service(self.manager, config, self.status)
        self.fronts: list[Front] = [ZmqFront(self.service, config)]
        self.started = time.time()
        self.exit_code: int | None = None
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self._stopping = False
        self._background: list[asyncio.Task[Any]] = []
        self._notify = Notifier.from_env()

    # ================================================================== main

    async def run(self) -> int:
        """Serve until a shutdown command; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig, command in ((signal.SIGINT, "shutdown"), (signal.SIGTERM, "shutdown"),
                             (signal.SIGHUP, "reload")):
            loop.add_signal_handler(sig, self.commands.put_nowait, command)
        try:
            for front in self.fronts:
                front.open()
        except (ConfigError, OSError) as exc:
            log.error("cannot listen address=%s error=%s", self.config.address, exc)
            self._close_fronts()
            return 1
        self._spawn(self._startup(), "kerneld-startup")
        while self.exit_code is None:
            command = await self.commands.get()
            handler = getattr(self, f"handle_{command}", None)
            if handler is None:
                log.error("unknown command=%s", command)
                continue
            await handler()
        return self.exit_code

    def _spawn(self, coro: Any, name: str) -> None:
        self._background.append(asyncio.create_task(coro, name=name))

    async def _startup(self) -> None:
        try:
            _check_profiles(self.config.manager)
        except (KernelError, OSError) as exc:  # kernels using it will fail; say so now
            log.error("profile problem: %s", exc)
        try:
            await self.manager.start()
        except Exception as exc:  # noqa: BLE001  (any failure here means: exit 1, logged)
            log.error("the kernel manager could not start error=%s", exc)
            self.commands.put_nowait("startup_failed")
            return
        log.info("ready address=%s pid=%s confine=%s %r", self.config.address, os.getpid(),
                 self.config.manager.confine, self.manager.pool)
        self._notify.send(f"READY=1\nSTATUS={self.status_line()}\nMAINPID={os.getpid()}")
        self._spawn(self._status_loop(), "kerneld-status")
        if self._notify.watchdog_interval:
            self._spawn(self._watchdog(self._notify.watchdog_interval), "kerneld-watchdog")

    async def handle_startup_failed(self) -> None:
        await self._shutdown(exit_code=1, grace=0.0)

    async def handle_shutdown(self) -> None:
        await self._shutdown(exit_code=0, grace=self.config.shutdown_grace)

    def _close_fronts(self) -> None:
        for front in self.fronts:
            front.close()

    # ================================================================== status

    def _kernel_counts(self) -> dict[str, int]:
        counts = {"total": 0, "starting": 0, "idle": 0, "busy": 0, "restarting": 0, "dead": 0}
        for status, n in self.manager.counts().items():
            counts["total"] += n
            counts[status] = counts.get(status, 0) + n
        return counts

    def status_line(self) -> str:
        c = self._kernel_counts()
        return (f"kernels={c['total']} idle={c['idle']} busy={c['busy']} "
                f"starting={c['starting']} restarting={c['restarting']} dead={c['dead']}; "
                f"{self.manager.pool!r}")

    def status(self) -> dict[str, Any]:
        """What the `status` op answers (`kerneld status`)."""
        cfg = self.config
        return {
            "status": "stopping" if self._stopping else "running",
            "version": version(), "protocol": p.VERSION, "pid": os.getpid(),
            "address": cfg.address, "tcp_address": cfg.tcp_address,
            "started": self.started, "uptime": time.time() - self.started,
            "kernels": self._kernel_counts(),
            "pool": repr(self.manager.pool), "pool_stats": self.manager.get_pool_stats(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "requests_in_flight": self.service.in_flight,
            "subscriptions": self.service.subscriptions,
            "executions_queued": self.manager.queued_executions()[0],
            "replies_waiting": sum(front.waiting() for front in self.fronts),
            "confine": cfg.manager.confine, "allow_in_process": cfg.manager.allow_in_process,
            "default_profile": cfg.manager.default_profile, "config_file": cfg.source,
        }

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            try:
                self.service.tick()
                for front in self.fronts:
                    front.tick()
                self._notify.send(f"STATUS={self.status_line()}")
            except Exception:
                log.exception("status update failed")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self._notify.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    # ================================================================== commands

    async def handle_reload(self) -> None:
        """SIGHUP: re-read the config file and check every profile. A failed reload keeps the
        old config; running kernels keep their policy either way."""
        if self._reload is None or self._stopping:
            return
        self._notify.send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            new = self._reload()
            _check_profiles(new.manager)
        except (KernelError, OSError) as exc:
            log.error("reload failed, keeping the old config error=%s", exc)
        else:
            self._apply(new)
        self._notify.send(f"READY=1\nSTATUS={self.status_line()}")

    def _apply(self, new: DaemonConfig) -> None:
        old = self.config
        kept = {f: getattr(old.manager, f) for f in _RESTART_ONLY
                if getattr(old.manager, f) != getattr(new.manager, f)}
        kept_daemon = {f: getattr(old, f) for f in _DAEMON_RESTART_ONLY
                       if getattr(old, f) != getattr(new, f)}
        if kept or kept_daemon:
            log.warning("reload: these settings take effect at the next restart keys=%s",
                        ",".join([*kept_daemon, *kept]))
        self.config = replace(new, manager=replace(new.manager, **kept), **kept_daemon)
        self.service.config = self.config
        for front in self.fronts:
            front.reconfigure(self.config)
        # New kernels get the new settings and re-read their profiles; running ones keep theirs.
        self.manager.reconfigure(replace(self.config.manager,
                                         runtime_dir=self.manager.config.runtime_dir))
        logging.getLogger().setLevel(self.config.log_level.upper())
        log.info("reloaded config=%s", new.source or "(defaults)")

    async def _shutdown(self, exit_code: int, grace: float) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.service.stop()
        start = time.monotonic()
        self._notify.send("STOPPING=1")
        running = self._running_executions()
        log.info("shutting down grace=%s running_executions=%d", grace, running)
        deadline = start + grace
        while running and time.monotonic() < deadline:
            try:
                command = await asyncio.wait_for(self.commands.get(), timeout=0.05)
            except TimeoutError:
                running = self._running_executions()
                continue
            if command == "shutdown":
                log.info("second shutdown signal: not waiting any longer")
                break
        for task in self._background:
            task.cancel()
        try:
            await asyncio.wait_for(self.manager.close("the daemon is shutting down"), timeout=1.2)
        except TimeoutError:
            log.error("the kernel manager did not close within 1.2 s; exiting anyway "
                      "(the zygote and workers die with the daemon)")
        except Exception:
            log.exception("closing the kernel manager failed")
        await self._finish_requests(0.3)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._close_fronts()
        log.info("stopped exit_code=%d after=%.2fs", exit_code, time.monotonic() - start)
        self.exit_code = exit_code

    def _running_executions(self) -> int:
        """Executions queued or running, all kernels (the manager keeps the count)."""
        return self.manager.queued_executions()[0]

    async def _finish_requests(self, timeout: float) -> None:
        """Let in-flight requests send their replies (the service cancels what still waits:
        those answer DaemonUnavailable); give the fronts' waiting replies what time is left."""
        deadline = time.monotonic() + timeout
        await self.service.finish(timeout)
        await asyncio.gather(*(front.flush(deadline) for front in self.fronts))


# ====================================================================== helpers


def _with_runtime_dir(config: DaemonConfig) -> ManagerConfig:
    """The manager keeps its private worker socket next to the daemon's ipc socket (under
    systemd: /run/kerneld, which systemd removes when the service stops, even after a crash)."""
    manager = config.manager
    if manager.runtime_dir is None and config.address.startswith("ipc://"):
        manager = replace(manager, runtime_dir=os.path.dirname(config.address[len("ipc://"):]))
    return manager


def _check_profiles(config: ManagerConfig) -> None:
    """Load every profile the config can reach, and the default one: a broken profile fails
    a reload (the error cites file:table.key) instead of failing kernels later."""
    from kerneld.permissions import available_profiles, load_profile
    for path in available_profiles(config.profile_dirs).values():
        load_profile(path)
    load_profile(config.default_profile, config.profile_dirs)
    for name in config.pool_profiles:
        load_profile(name, config.profile_dirs)


async def serve(config: DaemonConfig,
                reload: Callable[[], DaemonConfig] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the exit status (`kerneld serve`)."""
    return await Daemon(config, reload).run()


__all__ = ["Daemon", "serve"]
