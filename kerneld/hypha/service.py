"""The Hypha service functions of one kerneld host: the seed's, in the seed's shapes, over the
daemon's client.

This module knows no Hypha connection: `HostService.functions()` is the table the attach
process registers (`kerneld.hypha.attach`), and each function is a plain coroutine (or async
generator) taking the seed's arguments (`kerneld.hypha.args`) and Hypha's `context`.

Functions (docs/hypha.md lists arguments and results): createKernel, listKernels,
destroyKernel, getKernelInfo, pingKernel, restartKernel, interruptKernel,
getInactivityTimerStatus, setInactivityTimeout, resetInactivityTimer, getStatus, executeCode,
getExecutionResult, streamExecution, getEngineLoad (the seed's), and completeCode, inspectCode,
inputReply (kerneld's).

Tenancy: the caller's Hypha workspace WS (`context["ws"]`, set by the server) owns the
daemon namespace `hypha.WS` (`kerneld.hypha.args`: never WS itself, which a local user or
another adapter may use); callers see ids `WS:<id>`; every kernel id is read in that
namespace (`scoped_kernel_id`), so another workspace's kernel, and any kernel made outside
Hypha, is "not found" in the same words as one that does not exist; listings are the
namespace's only. Quotas: kernels and executions (running or queued) per workspace and host,
kernels made through Hypha per host (`max_kernels`); anonymous callers (a fresh workspace
per connection, which would void per-workspace quotas) create nothing unless
`allow_anonymous`. Callers name profiles from `[hypha] profiles` only;
`permissions` and `limits` can only narrow them (the daemon's lowering refuses widening);
`filesystem` is refused (a remote caller must not name host directories); in-process kernels
are refused. Kernels get no Hypha token (the seed gave each one a token of the service's own
workspace, with which untrusted code could register fake hosts).

Units: every timeout a caller passes or sees is in milliseconds, the seed's unit
(`inactivity_timeout`, `max_execution_time`, setInactivityTimeout's and getExecutionResult's
`timeout`, `timeUntilShutdown`); kerneld's are seconds; this module converts at the boundary.

Failure modes: daemon errors pass through `DaemonLink.failure` (a lost daemon names this host
and its address); while the daemon is down every function but getEngineLoad's raising fails at
once with the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kerneld.errors import InvalidArgument, KernelError, LimitExceeded, PermissionDenied, shown
from kerneld.hypha.args import (
    PREFIX,
    Args,
    daemon_namespace,
    namespace_of,
    public_id,
    public_text,
    scoped_kernel_id,
)
from kerneld.hypha.link import DaemonLink
from kerneld.hypha.state import Execution, InFlight, OpenStream, Results, Streams

if TYPE_CHECKING:
    from kerneld.config import HyphaConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
HISTORY = 20                 # executions remembered per kernel for getKernelInfo
RESULT_WAIT_MS = 30_000      # getExecutionResult's default wait (ms, the seed's unit)
MAX_RESULT_WAIT_MS = 300_000  # the most it may be asked to wait
_EXEC_ARGS = ("kernel_id", "code", "allow_stdin", "silent", "store_history")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _name(kernel_id: str) -> str:
    return f"Kernel-{kernel_id.split(':', 1)[-1][:8]}"


def _bytes(n: float) -> str:
    for unit in ("Bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "Bytes" else f"{int(n)} Bytes"
        n /= 1024
    return f"{n:.2f} GB"


def _uptime(seconds: float) -> str:
    s = int(seconds)
    parts = [f"{v}{u}" for v, u in ((s // 86400, "d"), (s % 86400 // 3600, "h"),
                                    (s % 3600 // 60, "m")) if v]
    return " ".join([*parts, f"{s % 60}s"] if s % 60 or not parts else parts)


def seed_event(event: Any, execution_id: str | None = None) -> dict[str, Any]:
    """A kerneld event as the seed's streams carried them: {type, data, executionId}."""
    return {"type": event.type, "data": event.data,
            "executionId": execution_id or event.execution_id}


def closing_events(result: Any, execution_id: str | None) -> list[dict[str, Any]]:
    """What follows an execution's events: the seed's `error` event for a Python error (it sent
    one after `execute_error`), then `complete` with kerneld's status (the seed always said
    "success", even after an error)."""
    out: list[dict[str, Any]] = []
    eid = execution_id or (result.execution_id if result is not None else None)
    if result is not None and result.error:
        out.append({"type": "error", "executionId": eid,
                    "data": {"status": "error", **result.error}})
    status = "success" if result is not None and result.status == "ok" else (
        result.status if result is not None else "error")
    out.append({"type": "complete", "status": status, "executionId": eid,
                "executionCount": result.execution_count if result is not None else None})
    return out


def _pending(events: Any) -> bool:
    """Whether the daemon stream `events` (an async generator) can still yield: not
    finished (ag_frame is None once it returned or raised)."""
    return getattr(events, "ag_frame", None) is not None


def _public(exc: KernelError) -> KernelError:
    """`exc` with the daemon's kernel ids (`hypha.WS:<id>`) shown as the caller knows them."""
    text = public_text(str(exc))
    if text == str(exc):
        return exc
    try:
        return type(exc)(text)
    except Exception:  # noqa: BLE001 - an error type with another signature: keep it as is
        return exc


class HostService:
    """The service functions of one host (see the module docstring)."""

    def __init__(self, link: DaemonLink, config: HyphaConfig, *, fleet_workspace: str) -> None:
        self.link, self.config, self.fleet_workspace = link, config, fleet_workspace
        self.service_id = ""          # the instance's full id, set once registered
        self.results = Results(config.results_ttl, config.max_results_per_workspace)
        self.streams = Streams(config.stream_idle_timeout)
        self.inflight = InFlight(config.max_executions_per_workspace)
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self.started = time.time()
        self._tasks: set[asyncio.Task[Any]] = set()

    def functions(self) -> dict[str, Callable[..., Any]]:
        names = ("createKernel", "listKernels", "destroyKernel", "getKernelInfo", "pingKernel",
                 "restartKernel", "interruptKernel", "getInactivityTimerStatus",
                 "setInactivityTimeout", "resetInactivityTimer", "getStatus", "executeCode",
                 "getExecutionResult", "streamExecution", "getEngineLoad", "completeCode",
                 "inspectCode", "inputReply")
        return {name: getattr(self, name) for name in names}

    # ------------------------------------------------------------------ helpers

    async def _daemon(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except KernelError as exc:
            raise self.link.failure(_public(exc)) from None

    async def _kernel(self, fn: str, params: Any, context: Any, kwargs: dict[str, Any],
                      allowed: tuple[str, ...] = ("kernel_id",)) -> tuple[Args, str, str]:
        """(args, namespace, the daemon's kernel id) of a call naming one kernel."""
        ns = namespace_of(context)
        args = Args(fn, params, kwargs, allowed)
        return args, ns, scoped_kernel_id(args.required("kernel_id"), ns)

    async def _info(self, kernel_id: str) -> dict[str, Any]:
        client = self.link.require_up()
        handle = await self._daemon(client.get_kernel(kernel_id))
        return dict(handle.info)

    def _remember(self, kernel_id: str, execution_id: str, code: str, outputs: int) -> None:
        entries = self.history.setdefault(kernel_id, deque(maxlen=HISTORY))
        entries.append({"id": execution_id, "script": code[:1000], "outputs": outputs})

    def _describe(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"id": public_id(info["id"]), "name": _name(info["id"]), "mode": info.get("mode"),
                "language": "python", "status": info.get("status"),
                "created": info.get("created"), "profile": info.get("profile"),
                "executionCount": info.get("execution_count"),
                "serviceId": self.service_id, "host": self.link.host}

    def _timeout_ms(self, fn: str, value: float | None, ns: str) -> float | None:
        """A seed timeout in ms → kerneld seconds, within [hypha] max_inactivity_timeout
        (the fleet's own workspace may ask for anything, 0 = never, as the seed let it)."""
        if value is None:
            return None
        limit = self.config.max_inactivity_timeout
        if ns != self.fleet_workspace and not 0 < value <= limit * 1000:
            raise InvalidArgument(f"{fn}: timeout must be 1 .. {int(limit * 1000)} ms "
                                  f"([hypha] max_inactivity_timeout), got {shown(value)}")
        return value / 1000 if value else 0.0

    # ------------------------------------------------------------------ kernels

    async def createKernel(self, params: Any = None, /, *, context: Any = None,
                           **kwargs: Any) -> dict[str, Any]:
        ns = namespace_of(context)
        user = context.get("user") if isinstance(context, dict) else None
        if (isinstance(user, dict) and user.get("is_anonymous")
                and not self.config.allow_anonymous):
            raise PermissionDenied("createKernel: anonymous Hypha users cannot create kernels "
                                   "on this host ([hypha] allow_anonymous = false); connect "
                                   "with a token of your own")
        if isinstance(params, str):   # the seed accepted the mode alone
            params = {"mode": params}
        a = Args("createKernel", params, kwargs,
                 ("id", "mode", "lang", "language", "profile", "env", "permissions", "limits",
                  "inactivity_timeout", "max_execution_time", "filesystem"))
        mode = a.string("mode") or "worker"
        language = a.string("language") or a.string("lang") or mode.partition("-")[2] or "python"
        if mode.partition("-")[0] not in ("worker", "python") or language != "python":
            raise InvalidArgument(f"createKernel: mode {shown(mode)} is not offered here: "
                                  "kernels run as confined Python workers (\"worker-python\"); "
                                  "in-process and other languages are refused")
        if a.has("filesystem"):
            raise InvalidArgument("createKernel: filesystem mounts are not offered through "
                                  "Hypha (a remote caller cannot name host directories)")
        allowed = self.config.profiles
        profile = a.string("profile") or allowed[0]
        if profile not in allowed:
            raise InvalidArgument(f"createKernel: profile {shown(profile)} is not offered by "
                                  f"this service (offered: {', '.join(allowed)})")
        inactivity = self._timeout_ms("createKernel", a.number("inactivity_timeout") or None, ns)
        stall = a.number("max_execution_time")
        client = self.link.require_up()
        quota, cap = self.config.max_kernels_per_workspace, self.config.max_kernels
        self.inflight.creating[ns] += 1
        try:
            every = await self._daemon(client.list_kernels())
            ours = [k for k in every if str(k.get("id", "")).startswith(PREFIX)
                    and k.get("status") != "dead"]
            have = sum(1 for k in ours if k.get("namespace") == daemon_namespace(ns))
            if have + self.inflight.creating[ns] - 1 >= quota:
                raise LimitExceeded(f"createKernel: this workspace has {have} kernels on this "
                                    f"host (limit [hypha] max_kernels_per_workspace = {quota})")
            if len(ours) + sum(self.inflight.creating.values()) - 1 >= cap:
                raise LimitExceeded(f"createKernel: this host has {len(ours)} kernels made "
                                    f"through Hypha (limit [hypha] max_kernels = {cap})")
            kernel_id = await self._daemon(client.create_kernel(
                id=a.string("id", empty=False), namespace=daemon_namespace(ns),
                profile=profile,
                env=a.mapping("env"), permissions=a.mapping("permissions"),
                limits=a.mapping("limits"),
                inactivity_timeout=inactivity or self.config.inactivity_timeout,
                max_execution_time=stall / 1000 if stall else None))
        finally:
            self.inflight.creating[ns] -= 1
            if not self.inflight.creating[ns]:
                del self.inflight.creating[ns]
        self.link.adjust(+1)
        log.info("kernel created ws=%s kernel=%s profile=%s", ns, kernel_id, profile)
        return self._describe(await self._info(kernel_id))

    async def listKernels(self, params: Any = None, /, *, context: Any = None,
                          **kwargs: Any) -> list[dict[str, Any]]:
        ns = namespace_of(context)
        Args("listKernels", params, kwargs, ())
        client = self.link.require_up()
        kernels = await self._daemon(client.list_kernels(namespace=daemon_namespace(ns)))
        return [self._describe(k) for k in kernels]

    async def destroyKernel(self, params: Any = None, /, *, context: Any = None,
                            **kwargs: Any) -> dict[str, Any]:
        _, _, kernel_id = await self._kernel("destroyKernel", params, context, kwargs)
        client = self.link.require_up()
        await self._daemon(client.destroy_kernel(kernel_id))
        self.link.adjust(-1)
        self.history.pop(kernel_id, None)
        return {"success": True}

    async def getKernelInfo(self, params: Any = None, /, *, context: Any = None,
                            **kwargs: Any) -> dict[str, Any]:
        _, _, kernel_id = await self._kernel("getKernelInfo", params, context, kwargs)
        info = self._describe(await self._info(kernel_id))
        info["history"] = list(self.history.get(kernel_id, ()))
        return info

    async def _flag(self, fn: str, params: Any, context: Any, kwargs: dict[str, Any],
                    call: Callable[[Any, str], Awaitable[bool]], failed: str) -> str:
        """Run a daemon call answering True/False (False also for an unknown id)."""
        _, _, kernel_id = await self._kernel(fn, params, context, kwargs)
        client = self.link.require_up()
        if not await self._daemon(call(client, kernel_id)):
            await self._info(kernel_id)   # KernelNotFound if it is not there (any more)
            raise KernelError(f"{fn}: {failed}")
        return kernel_id

    async def pingKernel(self, params: Any = None, /, *, context: Any = None,
                         **kwargs: Any) -> dict[str, Any]:
        await self._flag("pingKernel", params, context, kwargs,
                         lambda c, k: c.ping_kernel(k), "failed to ping the kernel")
        return {"success": True, "message": "Kernel activity timer reset",
                "timestamp": _now_iso()}

    async def restartKernel(self, params: Any = None, /, *, context: Any = None,
                            **kwargs: Any) -> dict[str, Any]:
        await self._flag("restartKernel", params, context, kwargs,
                         lambda c, k: c.restart_kernel(k), "failed to restart the kernel")
        return {"success": True, "message": "Kernel restarted successfully",
                "timestamp": _now_iso()}

    async def interruptKernel(self, params: Any = None, /, *, context: Any = None,
                              **kwargs: Any) -> dict[str, Any]:
        await self._flag("interruptKernel", params, context, kwargs,
                         lambda c, k: c.interrupt_kernel(k), "failed to interrupt the kernel")
        return {"success": True, "message": "Kernel execution interrupted",
                "timestamp": _now_iso()}

    async def getInactivityTimerStatus(self, params: Any = None, /, *, context: Any = None,
                                       **kwargs: Any) -> dict[str, Any]:
        _, _, kernel_id = await self._kernel("getInactivityTimerStatus", params, context, kwargs)
        client = self.link.require_up()
        await self._info(kernel_id)
        timeout = await self._daemon(client.get_inactivity_timeout(kernel_id))
        left = await self._daemon(client.get_time_until_shutdown(kernel_id))
        last = None
        if timeout and left is not None:
            last = datetime.fromtimestamp(time.time() - (timeout - left), UTC).isoformat()
        return {"lastActivityTime": last,
                "timeUntilShutdown": round(left * 1000) if left is not None else None,
                "inactivityTimeout": round(timeout * 1000) if timeout else 0,
                "isTimeoutEnabled": bool(timeout), "timestamp": _now_iso()}

    async def setInactivityTimeout(self, params: Any = None, /, *, context: Any = None,
                                   **kwargs: Any) -> dict[str, Any]:
        a, ns, kernel_id = await self._kernel("setInactivityTimeout", params, context, kwargs,
                                              ("kernel_id", "timeout"))
        if not a.has("timeout"):
            raise InvalidArgument("setInactivityTimeout: timeout (milliseconds) is required")
        ms = a.number("timeout")
        seconds = self._timeout_ms("setInactivityTimeout", ms, ns)
        client = self.link.require_up()
        if not await self._daemon(client.set_inactivity_timeout(kernel_id, seconds or None)):
            await self._info(kernel_id)
            raise KernelError("setInactivityTimeout: failed to set the inactivity timeout")
        return {"success": True, "message": "Inactivity timeout updated", "timeout": ms,
                "timestamp": _now_iso()}

    async def resetInactivityTimer(self, params: Any = None, /, *, context: Any = None,
                                   **kwargs: Any) -> dict[str, Any]:
        kernel_id = await self._flag("resetInactivityTimer", params, context, kwargs,
                                     lambda c, k: c.ping_kernel(k),
                                     "failed to reset the inactivity timer")
        return {"success": True, "message": "Inactivity timer reset successfully",
                "kernelId": public_id(kernel_id), "timestamp": _now_iso()}

    def getEngineLoad(self, params: Any = None, /, *, context: Any = None,
                      **kwargs: Any) -> int:
        """This host's kernel count, from memory (Hypha asks every instance before each
        `select:min:getEngineLoad` placement); raises while the daemon is gone."""
        return self.link.load()

    async def getStatus(self, params: Any = None, /, *, context: Any = None,
                        **kwargs: Any) -> dict[str, Any]:
        ns = namespace_of(context)
        Args("getStatus", params, kwargs, ())
        client = self.link.require_up()
        status = await self._daemon(client.status())
        mine = await self._daemon(client.list_kernels(namespace=daemon_namespace(ns)))
        gathered = await asyncio.gather(*(self._daemon(client.get_execution_info(k["id"]))
                                          for k in mine), return_exceptions=True)
        infos: list[dict[str, Any]] = [i for i in gathered if isinstance(i, dict)]
        counts = status.get("kernels") or {}
        total = int(counts.get("total", 0)) - int(counts.get("dead", 0))
        rss = float(status.get("rss_bytes") or 0)
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
        return {
            "systemStats": {
                "uptime": round(status.get("uptime", 0)),
                "uptimeFormatted": _uptime(status.get("uptime", 0)),
                "memoryUsage": {"rss": _bytes(rss)},
                "avgMemoryPerKernel": _bytes(rss / total if total else 0),
                "cpuUsage": f"{round(min(load, 1.0) * 100)}%"},
            "kernelStats": {
                "total": total, "namespaceCount": len(mine),
                "activeExecutions": {"total": status.get("executions_queued"),
                                     "namespace": sum(i.get("count", 0) for i in infos)},
                "executionsByStatus": {
                    "total": {"active": int(counts.get("busy", 0)), "stuck": None},
                    "namespace": {"active": sum(1 for i in infos if i.get("count")),
                                  "stuck": sum(1 for i in infos if i.get("is_stuck"))}}},
            "poolStats": {"config": {"enabled": bool(status.get("pool_stats") or {})},
                          "statistics": status.get("pool_stats")},
            "host": self.link.host, "serviceId": self.service_id,
            "daemon": {"version": status.get("version"), "confine": status.get("confine")},
            "hypha": self.counts(),
        }

    # ------------------------------------------------------------------ executions

    async def _open_execution(self, fn: str, params: Any, context: Any,
                              kwargs: dict[str, Any], extra: tuple[str, ...] = ()
                              ) -> tuple[Args, str, str, str, Any, Callable[[], None]]:
        a, ns, kernel_id = await self._kernel(fn, params, context, kwargs, _EXEC_ARGS + extra)
        code = a.string("code", required=True)
        assert code is not None
        if not code:
            raise InvalidArgument(f"{fn}: no code provided")
        client = self.link.require_up()
        await self._info(kernel_id)            # "not found" now, not at the first event
        release = self.inflight.admit(ns, fn)
        stream = client.execute_stream(kernel_id, code, allow_stdin=a.boolean("allow_stdin"),
                                       silent=a.boolean("silent"),
                                       store_history=a.boolean("store_history", True))
        return a, ns, kernel_id, code, stream, release

    async def executeCode(self, params: Any = None, /, *, context: Any = None,
                          **kwargs: Any) -> dict[str, Any]:
        _, ns, kernel_id, code, stream, release = await self._open_execution(
            "executeCode", params, context, kwargs)
        execution = Execution(uuid.uuid4().hex, ns, kernel_id, code)
        try:
            self.results.add(execution)
        except BaseException:
            release()
            raise
        self._spawn(self._run(execution, stream, release))
        return {"execution_id": execution.id, "executionId": execution.id,
                "kernelId": public_id(kernel_id)}

    async def _run(self, execution: Execution, stream: Any, release: Callable[[], None]
                   ) -> None:
        try:
            async for event in stream:
                execution.outputs.append(seed_event(event, execution.id))
            execution.outputs += closing_events(stream.result, execution.id)
        except KernelError as exc:
            execution.failure = self.link.failure(_public(exc))
        except Exception as exc:  # a bug: the caller still gets an answer
            log.exception("executeCode failed kernel=%s", execution.kernel_id)
            execution.failure = KernelError(f"executeCode failed: {type(exc).__name__}")
        finally:
            release()
            self.results.finish(execution)
            self._remember(execution.kernel_id, execution.id, execution.code,
                           len(execution.outputs))

    async def getExecutionResult(self, params: Any = None, /, *, context: Any = None,
                                 **kwargs: Any) -> list[dict[str, Any]]:
        a, ns, kernel_id = await self._kernel("getExecutionResult", params, context, kwargs,
                                              ("kernel_id", "execution_id", "timeout"))
        execution = self.results.get(ns, kernel_id, a.required("execution_id"))
        wait_ms = min(a.number("timeout") or RESULT_WAIT_MS, MAX_RESULT_WAIT_MS)
        if not execution.done.is_set():
            try:
                await asyncio.wait_for(execution.done.wait(), wait_ms / 1000)
            except TimeoutError:
                raise KernelError(f"getExecutionResult: execution {execution.id} is still "
                                  f"running after {wait_ms:g} ms; call again") from None
        if execution.failure is not None:
            raise execution.failure
        return list(execution.outputs)

    async def streamExecution(self, params: Any = None, /, *, context: Any = None,
                              **kwargs: Any) -> AsyncGenerator[dict[str, Any], None]:
        """Checks the call now (a bad id is an error of this call, not of the first event),
        then hands the caller a generator of the execution's events."""
        _, ns, kernel_id, code, stream, release = await self._open_execution(
            "streamExecution", params, context, kwargs)
        entry = OpenStream(ns, kernel_id, release)
        entry.generator = self._stream(entry, stream, code)
        self.streams.add(entry)
        return entry.generator

    async def _stream(self, entry: OpenStream, stream: Any, code: str
                      ) -> AsyncGenerator[dict[str, Any], None]:
        """The caller's generator. If the caller goes away first (it closes the generator,
        or the idle sweep does), the execution runs on in the kernel: `_drain` keeps reading
        the daemon's stream and releases the execution's slot only at its real end, so
        abandoned streams cannot run more executions than the quota allows."""
        entry.started = True
        self.streams.working(entry)
        events = stream.__aiter__()
        count = 0
        ended = False
        try:
            try:
                async for event in events:
                    count += 1
                    self.streams.waiting(entry)
                    yield seed_event(event)
                    self.streams.working(entry)
            except KernelError as exc:
                raise self.link.failure(_public(exc)) from None
            finally:
                ended = stream.result is not None or not _pending(events)
            for event in closing_events(stream.result, stream.execution_id):
                self.streams.waiting(entry)
                yield event
                self.streams.working(entry)
        finally:
            self.streams.finished(entry)
            self._remember(entry.kernel_id, stream.execution_id or "", code, count)
            if ended:
                await events.aclose()
                entry.done()
            else:
                self._spawn(self._drain(entry, events))

    async def _drain(self, entry: OpenStream, events: Any) -> None:
        """Read an abandoned execution's events to its end (discarding them: the daemon's
        output caps bound what arrives), then release its slot."""
        try:
            async for _ in events:
                pass
        except Exception as exc:  # noqa: BLE001 - the daemon went away or the kernel died
            log.info("abandoned execution ended with %s kernel=%s", type(exc).__name__,
                     entry.kernel_id)
        finally:
            with contextlib.suppress(Exception):
                await events.aclose()
            entry.done()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ kerneld's additions

    async def completeCode(self, params: Any = None, /, *, context: Any = None,
                           **kwargs: Any) -> dict[str, Any]:
        a, _, kernel_id = await self._kernel("completeCode", params, context, kwargs,
                                             ("kernel_id", "code", "cursor_pos"))
        client = self.link.require_up()
        return await self._daemon(client.complete(kernel_id, a.string("code", required=True)
                                                  or "", a.integer("cursor_pos")))

    async def inspectCode(self, params: Any = None, /, *, context: Any = None,
                          **kwargs: Any) -> dict[str, Any]:
        a, _, kernel_id = await self._kernel("inspectCode", params, context, kwargs,
                                             ("kernel_id", "code", "cursor_pos", "detail_level"))
        client = self.link.require_up()
        return await self._daemon(client.inspect(
            kernel_id, a.string("code", required=True) or "", a.integer("cursor_pos"),
            a.integer("detail_level") or 0))

    async def inputReply(self, params: Any = None, /, *, context: Any = None,
                         **kwargs: Any) -> dict[str, Any]:
        a, _, kernel_id = await self._kernel("inputReply", params, context, kwargs,
                                             ("kernel_id", "value"))
        value = a.string("value", required=True) or ""
        client = self.link.require_up()
        await self._info(kernel_id)
        return {"success": bool(await self._daemon(client.input_reply(kernel_id, value)))}

    # ------------------------------------------------------------------ housekeeping

    async def sweep(self) -> None:
        """Expire results, close idle streams, forget the history of kernels that are gone
        (destroyed by their inactivity timeout, or with their daemon)."""
        self.results.sweep()
        await self.streams.sweep()
        if self.history and self.link.up:
            try:
                alive = {k for k in await self.link.client.get_kernel_ids()}
            except KernelError:
                return
            for kernel_id in [k for k in self.history if k not in alive]:
                del self.history[kernel_id]

    async def close(self) -> None:
        await self.streams.close_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def counts(self) -> dict[str, int]:
        """This host's bridge state, all workspaces together (getStatus's `hypha`)."""
        return {"streams": len(self.streams.open), "results": len(self.results),
                "executions": self.inflight.total(),
                "idleStreamsClosed": self.streams.closed_idle}

