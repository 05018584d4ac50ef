"""The request service: what every front of the daemon shares, knowing no socket.

A front (the ZeroMQ ROUTER of `kerneld.fronts.zmq`; later Jupyter, Hypha, HTTP) reads its own
framing, and for each request calls `Service.handle(peer, rid, op, args)` with a `Peer`: the
request's way back to its client and who sent it. The service answers through the peer:
zero or more events, then exactly one terminal reply (a value, or a `KernelError`), whatever
happens — a bad request, an unknown op, a refusal, a failure, a shutdown. The front encodes
what it is given in its own format, so the service hands it values, never bytes.

Requests: the op is looked up in `kerneld.ops` and its arguments decoded into the op's Struct
(unknown, missing or mistyped arguments are refused before anything runs); then
- "call" ops call the manager method; a coroutine's value is answered from a task, a plain
  value at once. `execute` is the fast path: submitted synchronously (`manager.submit`) and
  answered from the future's done-callback, with no task per execution;
- "stream" ops (`execute_stream`, `send_comm`) send each event, waiting while the peer has no room
  (`Peer.event`), then the result (without its `outputs`: the client rebuilds them from the
  events);
- "local" ops are the service's own: subscriptions, `get_kernel`, `status`, `ping`.

Limits: requests being worked on by tasks, all peers together (MAX_INFLIGHT); subscriptions
per peer (MAX_SUBSCRIPTIONS_PER_PEER); executions queued or running per peer
(`max_queued_executions_per_client`; the manager limits them per kernel and in all). A peer's
state is kept under its `key` (the connection), so a front may hand a new Peer object for
each request of one connection.

Callers: a caller other than root sees and acts on the kernels it created only; another's
kernel is "not found" (never "access denied", which would tell that it exists). `[access]
profiles` decides which profiles a caller may create kernels with; every create is logged
with its caller. The caller's supplementary groups (a /proc read) are looked up only when a
mount or an access rule can use them.

Errors: a `KernelError` is answered as itself; anything else is logged with its traceback and
answered `InternalError`, whose message never carries host paths (`_internal`). While the
daemon stops (`stop()`), new requests are answered `DaemonUnavailable`; `finish()` lets the
tasks still running answer, then cancels them (they answer `DaemonUnavailable` too).

A peer that is gone (`peer_gone(key)`, reported by its front) loses its subscriptions; its
executions run on to their end and their replies go nowhere.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from kerneld import ops
from kerneld import protocol as p
from kerneld.access import Caller, caller_groups
from kerneld.errors import (
    DaemonUnavailable,
    InternalError,
    InvalidArgument,
    KernelError,
    LimitExceeded,
    PermissionDenied,
    kernel_not_found,
)
from kerneld.kernel import KernelEvents
from kerneld.systemd import Tally

if TYPE_CHECKING:
    from kerneld.config import DaemonConfig
    from kerneld.manager import KernelManager

log = logging.getLogger(__name__)

MAX_INFLIGHT = 10_000            # requests being worked on at once, all peers together
MAX_SUBSCRIPTIONS_PER_PEER = 1_000
_EVENT_TYPES = frozenset(e.value for e in KernelEvents)
_SCOPED_LISTS = ("list_kernels", "get_kernel_ids", "destroy_all")


class Peer(Protocol):
    """One request's way back to its client, as a front implements it.

    key: names the connection the request came on; the service keeps per-peer state
        (subscriptions, executions) under it and `peer_gone(key)` drops it.
    closed: True once the front knows the connection is gone; the service stops sending.
    caller: who sent the request (read while `handle` runs: a front may take it from the
        message being handled), without supplementary groups (the service adds them when
        needed).
    reply: the terminal reply, `value` or `error`; never blocks and is never dropped while
        the connection lives (a front queues what it cannot send yet).
    event_nowait: a subscription's event; False if it was not sent (no room, or gone).
    event: a stream's event; waits while the connection has no room, gives up (and sets
        `closed`) when it is gone.
    """

    closed: bool

    @property
    def key(self) -> Hashable: ...

    @property
    def caller(self) -> Caller: ...

    def reply(self, rid: str, value: Any = None, error: KernelError | None = None) -> None: ...

    def event_nowait(self, rid: str, event: p.KernelEvent) -> bool: ...

    async def event(self, rid: str, event: p.KernelEvent) -> None: ...


Listener = Callable[[p.KernelEvent], None]


class Service:
    """Request handling over one `KernelManager` (see the module docstring).

    config: the daemon's config (access rules, per-peer limits, the default profile); the
        daemon replaces it on reload.
    status: what the `status` op answers (the daemon's health: it knows the fronts too).
    """

    def __init__(self, manager: KernelManager, config: DaemonConfig,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.manager = manager
        self.config = config
        self.accepting = True
        self._status = status
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subs: dict[tuple[Hashable, str], tuple[str, str, Listener]] = {}
        self._subs_by_peer: dict[Hashable, set[str]] = {}
        self._executions_by_peer: dict[Hashable, int] = {}
        self._slow_subscribers = Tally(log, "subscriber too slow, event dropped")

    @property
    def in_flight(self) -> int:
        """Requests being worked on by tasks."""
        return len(self._tasks)

    @property
    def subscriptions(self) -> int:
        return len(self._subs)

    # ================================================================== requests

    def handle(self, peer: Peer, rid: str, name: str, args: dict[str, Any]) -> None:
        """Handle one request; its answer goes to `peer` (now, or later from a task or a
        done-callback). Never raises."""
        try:
            op = ops.lookup(name)
        except InvalidArgument as exc:
            peer.reply(rid, error=exc)
            return
        if not self.accepting:
            peer.reply(rid, error=DaemonUnavailable("the daemon is shutting down"))
            return
        if len(self._tasks) >= MAX_INFLIGHT:
            peer.reply(rid, error=LimitExceeded(
                f"the daemon is working on {MAX_INFLIGHT} requests already; retry later"))
            return
        try:
            params = ops.decode(op, args)
            if not self._scoped(peer, rid, op, params):
                self._dispatch(peer, rid, op, params)
        except KernelError as exc:
            peer.reply(rid, error=exc)
        except Exception as exc:
            log.exception("request failed op=%s", name)
            peer.reply(rid, error=_internal(name, exc))

    def _dispatch(self, peer: Peer, rid: str, op: ops.Op, params: Any) -> None:
        mgr = self.manager
        if op.name == "execute":
            # Submitted here, synchronously, and answered from the future's done-callback: no
            # task per execution. The manager refuses what exceeds its queue limits.
            self._admit_execution(peer.key)
            future = mgr.submit(params.kernel_id, params.code, allow_stdin=params.allow_stdin,
                                silent=params.silent, store_history=params.store_history,
                                user_expressions=params.user_expressions)
            self._count_execution(peer.key, 1)
            future.add_done_callback(functools.partial(self._answer_done, peer, rid))
        elif op.name == "create_kernel":
            caller = peer.caller
            if params.filesystem or self.config.access.rules:
                caller = _with_groups(caller)  # a /proc read: only where something uses them
            self._check_profile_access(caller, params.profile)
            log.info("create requested caller=%s profile=%s id=%.64s", caller,
                     params.profile or self.config.manager.default_profile, params.id or "")
            self._task(self._answer(peer, rid, op.name,
                                    mgr.create_kernel(**ops.as_kwargs(params), caller=caller)))
        elif op.kind == "call":
            value = getattr(mgr, op.method)(**ops.as_kwargs(params))
            if inspect.isawaitable(value):
                self._task(self._answer(peer, rid, op.name, value))
            else:
                peer.reply(rid, value)
        elif op.kind == "stream":
            self._admit_execution(peer.key)
            stream = getattr(mgr, op.method)(**ops.as_kwargs(params))
            self._count_execution(peer.key, 1)
            self._task(self._stream(peer, rid, op.name, stream))
        else:
            getattr(self, f"_op_{op.name}")(peer, rid, params)

    def _scoped(self, peer: Peer, rid: str, op: ops.Op, params: Any) -> bool:
        """A caller other than root sees and acts on the kernels it created only: another's
        kernel is "not found", and listing or destroying everything covers its own. True if
        answered here."""
        principal = peer.caller.principal
        if principal is None:
            return False
        mgr = self.manager
        kernel_id = getattr(params, "kernel_id", None)
        if kernel_id is not None and mgr.owner_of(kernel_id) != principal:
            raise kernel_not_found(kernel_id)
        if op.name not in _SCOPED_LISTS:
            return False
        mine = {k for k in mgr.get_kernel_ids() if mgr.owner_of(k) == principal}
        if op.name == "get_kernel_ids":
            peer.reply(rid, [k for k in mgr.get_kernel_ids() if k in mine])
            return True
        listed = [d for d in mgr.list_kernels(params.namespace) if d["id"] in mine]
        if op.name == "list_kernels":
            peer.reply(rid, listed)
        else:
            self._task(self._answer(peer, rid, op.name,
                                    self._destroy([d["id"] for d in listed])))
        return True

    async def _destroy(self, kernel_ids: list[str]) -> int:
        await asyncio.gather(*(self.manager.destroy_kernel(k) for k in kernel_ids),
                             return_exceptions=True)
        return len(kernel_ids)

    def _check_profile_access(self, caller: Caller, profile: str | None) -> None:
        """`[access] profiles`: which callers may create kernels with which profile."""
        name = profile or self.config.manager.default_profile
        if not self.config.access.allows(caller, name):
            raise PermissionDenied(f"profile {name!r} is not granted to this caller ({caller}); "
                                   "see [access] profiles in the daemon's config")

    def _admit_execution(self, key: Hashable) -> None:
        limit = self.config.max_queued_executions_per_client
        mine = self._executions_by_peer.get(key, 0)
        if mine >= limit:
            raise LimitExceeded(
                f"this client has {mine} executions queued or running, the limit "
                f"(max_queued_executions_per_client = {limit}); retry when some end")

    def _count_execution(self, key: Hashable, delta: int) -> None:
        mine = self._executions_by_peer.get(key, 0) + delta
        if mine > 0:
            self._executions_by_peer[key] = mine
        else:
            self._executions_by_peer.pop(key, None)

    def _task(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ================================================================== answers

    async def _answer(self, peer: Peer, rid: str, op: str, call: Any) -> None:
        try:
            value = await call
        except KernelError as exc:
            error = exc
        except asyncio.CancelledError:
            peer.reply(rid, error=DaemonUnavailable(
                "the daemon shut down before this request finished"))
            raise
        except Exception as exc:
            log.exception("request failed op=%s", op)
            error = _internal(op, exc)
        else:
            peer.reply(rid, value)
            return
        peer.reply(rid, error=error)

    def _answer_done(self, peer: Peer, rid: str, future: asyncio.Future[Any]) -> None:
        self._count_execution(peer.key, -1)
        if future.cancelled():
            peer.reply(rid, error=DaemonUnavailable(
                "the daemon shut down before this request finished"))
            return
        exc = future.exception()
        if exc is None:
            peer.reply(rid, future.result())
        elif isinstance(exc, KernelError):
            peer.reply(rid, error=exc)
        else:
            log.error("execute failed error=%r", exc)
            peer.reply(rid, error=_internal("execute", exc))

    async def _stream(self, peer: Peer, rid: str, op: str, stream: Any) -> None:
        value, error = None, None
        try:
            async for event in stream:
                if not peer.closed:
                    await peer.event(rid, event)
            # The client rebuilds `outputs` from the events it received: no second copy.
            value = msgspec.structs.replace(stream.result, outputs=[])
        except asyncio.CancelledError:
            peer.reply(rid, error=DaemonUnavailable(
                "the daemon shut down before this execution finished"))
            raise
        except Exception as exc:
            log.exception("%s failed", op)
            error = _internal(op, exc)
        finally:
            self._count_execution(peer.key, -1)
        if not peer.closed:
            peer.reply(rid, value, error)

    # ================================================================== local ops

    def _op_get_kernel(self, peer: Peer, rid: str, params: ops.GetKernel) -> None:
        peer.reply(rid, self.manager.get_kernel(params.kernel_id).info)

    def _op_ping(self, peer: Peer, rid: str, params: ops.Ping) -> None:
        peer.reply(rid, {"pong": True, "version": version(), "protocol": p.VERSION})

    def _op_status(self, peer: Peer, rid: str, params: ops.Status) -> None:
        peer.reply(rid, self._status())

    def _op_subscribe(self, peer: Peer, rid: str, params: ops.Subscribe) -> None:
        kernel_id, event_type = params.kernel_id, params.event_type
        if event_type not in _EVENT_TYPES:
            raise InvalidArgument(f"unknown event type {event_type!r} (one of "
                                  f"{', '.join(sorted(_EVENT_TYPES))})")
        key = peer.key
        if len(self._subs_by_peer.get(key, ())) >= MAX_SUBSCRIPTIONS_PER_PEER:
            raise LimitExceeded(f"at most {MAX_SUBSCRIPTIONS_PER_PEER} subscriptions per client")

        def listener(event: p.KernelEvent) -> None:
            if not peer.event_nowait(rid, event) and not peer.closed:
                self._slow_subscribers.note(f"kernel={event.kernel_id} event={event.type}")

        self.manager.on_kernel_event(kernel_id, event_type, listener)  # KernelNotFound
        self._subs_by_peer.setdefault(key, set()).add(rid)
        self._subs[(key, rid)] = (kernel_id, event_type, listener)
        peer.reply(rid, {"subscription": rid})

    def _op_unsubscribe(self, peer: Peer, rid: str, params: ops.Unsubscribe) -> None:
        peer.reply(rid, self._unsubscribe(peer.key, params.subscription))

    def _unsubscribe(self, key: Hashable, sub: str) -> bool:
        entry = self._subs.pop((key, sub), None)
        mine = self._subs_by_peer.get(key)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._subs_by_peer[key]
        if entry is None:
            return False
        kernel_id, event_type, listener = entry
        self.manager.off_kernel_event(kernel_id, event_type, listener)
        return True

    # ================================================================== the daemon's calls

    def peer_gone(self, key: Hashable) -> None:
        """A front lost this connection: drop its subscriptions."""
        for sub in list(self._subs_by_peer.get(key, ())):
            self._unsubscribe(key, sub)

    def tick(self) -> None:
        """Periodic housekeeping (the daemon's status loop): forget subscriptions whose kernel
        is gone (the manager dropped their listeners) and write out pending warnings."""
        alive = set(self.manager.get_kernel_ids())
        for (key, sub), (kernel_id, _, _) in list(self._subs.items()):
            if kernel_id not in alive:
                self._unsubscribe(key, sub)
        self._slow_subscribers.flush()

    def stop(self) -> None:
        """Stop accepting: new requests are answered DaemonUnavailable."""
        self.accepting = False

    async def finish(self, timeout: float) -> None:
        """Let the requests still worked on send their replies (up to `timeout` seconds);
        cancel the rest, which answer DaemonUnavailable."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=0.2)


# ====================================================================== helpers


def _with_groups(caller: Caller) -> Caller:
    """The caller with its supplementary groups (read from /proc), if it is a local user."""
    if caller.uid is None or caller.gid is None:
        return caller
    return replace(caller, groups=caller_groups(caller.pid, caller.uid, caller.gid))


_CGROUP_PATH = re.compile(r"/sys/fs/cgroup[^\s'\"]*")


def _internal(op: str, exc: BaseException) -> InternalError:
    """An unexpected exception as a client sees it: the op, the type and what went wrong, but
    no host paths (an OSError's file names, a cgroup path); the daemon's log has the rest."""
    if isinstance(exc, OSError):
        text = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else "OS error"
    else:
        text = _CGROUP_PATH.sub("<cgroup>", str(exc))
    return InternalError(f"{op}: {type(exc).__name__}: {text[:500]}")


def version() -> str:
    """kerneld's version (`ping` and `status` report it)."""
    from kerneld import __version__
    return __version__


__all__ = ["MAX_INFLIGHT", "MAX_SUBSCRIPTIONS_PER_PEER", "Peer", "Service", "version"]
