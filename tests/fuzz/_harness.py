"""The fuzz daemon: one real `kerneld serve`, the kernels it keeps, and the per-example judge.

`FuzzDaemon` starts the daemon (confined when this host can confine, as in production; else
on the dev config), a bystander pinger (`tests/_watch.py`) in its own process, and three target
kernels the generated requests aim at (`TARGETS`). For each example it sends the requests,
waits for every reply (unblocking kernels stuck in `input()` or a long cell by interrupt, then
input_reply, then restart, if need be), judges each reply against what the protocol promises,
and puts the kernels back as they were: kernels the example created are destroyed, targets it
removed are created again, targets nothing should have killed but that died are reported.

If the daemon dies, that is recorded (with its log's tail) and a new daemon is started, so
hypothesis can go on shrinking the failing example against a live daemon.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from kerneld import protocol as p
from kerneld.ops import OPS
from tests._host import sandbox_missing
from tests._watch import NotifyDrain, Watch, daemon_fds
from tests.fuzz._known import active, example_defect, raw_defect, request_defect
from tests.fuzz._strategies import MOUNT_ROOT, SUBSCRIPTION_REF, TARGETS, RawCase, Req
from tests.fuzz._wire import Entry, Ledger, error_type, readable_id
from tests.integration._daemon import Daemon, alive

PING_LIMIT_MS = float(os.environ.get("KERNELD_FUZZ_PING_MS", "100"))
RSS_GROWTH_LIMIT = 300 * 1024**2
_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")

COMMON = frozenset({"InvalidArgument", "LimitExceeded"})
KNF = COMMON | {"KernelNotFound"}
ALLOWED_ERRORS: dict[str, frozenset[str]] = {
    "create_kernel": COMMON | {"ProfileError", "PermissionDenied", "SandboxUnavailable",
                               "KernelStartError"},
    # KernelNotFound: destroyed while it restarted
    "restart_kernel": KNF | {"KernelStartError", "SandboxUnavailable"},
    "complete": KNF | {"KernelError"}, "inspect": KNF | {"KernelError"},
    "is_complete": KNF | {"KernelError"},
    "check_profile": COMMON | {"ProfileError", "PermissionDenied"},
    **{op: COMMON for op in ("destroy_all", "list_kernels", "get_kernel_ids", "get_pool_stats",
                             "status", "ping", "interrupt_kernel", "ping_kernel",
                             "set_inactivity_timeout", "unsubscribe")},
}


def config(confine: bool) -> str:
    return f"""
[daemon]
shutdown_grace = 1

[runtime]
preload = []

[kernels]
confine = {"true" if confine else "false"}
max_kernels = 24
mount_roots = ["{MOUNT_ROOT}"]
"""


def violations(op: str, args: dict[str, Any]) -> list[str]:
    """How `args` break the whitelist's table for `op` (docs/protocol.md): names, types."""
    spec = OPS[op]
    out = [f"unknown argument {k!r:.40}" for k in args if k not in spec.args]
    for key, value in args.items():
        types = spec.args.get(key)
        if types is not None and (not isinstance(value, types)
                                  or (isinstance(value, bool) and bool not in types)):
            out.append(f"{key} of type {type(value).__name__}")
    out += [f"missing {k}" for k in sorted(spec.required - args.keys())]
    return out


def _bad_seconds(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and (math.isnan(value) or math.isinf(value) or value < 0))


@dataclass
class Expect:
    must: str | None = None           # the error type the reply must carry
    must_fail: str | None = None      # why the request must not succeed
    allowed: frozenset[str] = COMMON  # error types a well-formed request may get
    dispatched: bool = False          # it reaches the manager (so may change kernels)


def expectation(op: str, args: dict[str, Any], v: int, size: int) -> Expect:
    if size > p.MAX_REQUEST_BYTES:
        return Expect(must="LimitExceeded")
    if v != p.VERSION or op not in OPS or violations(op, args):
        return Expect(must="InvalidArgument")
    exp = Expect(allowed=ALLOWED_ERRORS.get(op, KNF), dispatched=True)
    if op == "create_kernel":
        for name in ("id", "namespace"):
            if args.get(name) is not None and not _NAME.fullmatch(args[name]):
                exp.must_fail = f"{name} {args[name]!r:.60} is not 1-128 of A-Za-z0-9._-"
        for name in ("inactivity_timeout", "max_execution_time"):
            if _bad_seconds(args.get(name)):
                exp.must_fail = f"{name} = {args[name]!r}"
    if op == "set_inactivity_timeout" and _bad_seconds(args.get("timeout")):
        exp.must_fail = f"timeout = {args['timeout']!r}"
    return exp


def namespace_of(kernel_id: str) -> str | None:
    return kernel_id.split(":", 1)[0] if ":" in kernel_id else None


@dataclass
class Stats:
    examples: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    raw: collections.Counter[str] = field(default_factory=collections.Counter)
    set_aside: collections.Counter[str] = field(default_factory=collections.Counter)
    kernels_created: int = 0
    limit_deaths: int = 0  # targets whose own code hit a limit (memory, CPU)
    bytes_sent: int = 0
    unblocked: int = 0


class FuzzDaemon:
    """See the module docstring."""

    def __init__(self) -> None:
        os.makedirs(MOUNT_ROOT, exist_ok=True)
        self.why_unconfined = sandbox_missing()
        self.confined = self.why_unconfined is None
        self.stats = Stats()
        self.crashes: list[str] = []
        self.found: list[str] = []            # every problem of every failing example
        self.watch_figures: list[dict[str, Any]] = []
        self.history: collections.deque[tuple[float, float, str]] = collections.deque(
            maxlen=400)  # (wall start, wall end, summary) of the last examples
        self.slowest: list[tuple[float, str]] = []
        self.rss_first: int | None = None
        self.fds_first: int | None = None
        self.started = time.monotonic()
        self._start()

    # ------------------------------------------------------------------ daemon

    def _start(self) -> None:
        self.daemon = Daemon(config(self.confined)).wait_ready()
        self.drain = NotifyDrain(self.daemon)
        self.ledger = Ledger(self.daemon.address, "f")
        proc = psutil.Process(self.daemon.pid)
        if self.rss_first is None:
            self.rss_first = proc.memory_info().rss
            self.fds_first = daemon_fds(self.daemon.pid)
        self.watch = Watch(self.daemon.address, self.daemon.pid, limit_ms=PING_LIMIT_MS)
        for target in TARGETS:
            self._create(target)

    def _stop(self) -> None:
        self.watch_figures.append(self.watch.stop())
        self.ledger.close()
        self.drain.stop()
        self.daemon.close()

    def close(self) -> None:
        self._stop()
        shutil.rmtree(MOUNT_ROOT, ignore_errors=True)

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None

    def _crashed(self, context: str) -> str:
        text = (f"the daemon exited with {self.daemon.proc.returncode} after {context}\n"
                f"--- daemon log (tail) ---\n{self.daemon.log[-4000:]}")
        self.crashes.append(text)
        self._stop()
        self._start()
        return text

    def _create(self, kernel_id: str) -> None:
        ns = namespace_of(kernel_id)
        args = {"id": kernel_id.split(":", 1)[-1]} | ({"namespace": ns} if ns else {})
        reply = self.ledger.call("create_kernel", args)
        assert reply.ok, f"cannot create target kernel {kernel_id}: {reply.error}"

    # ------------------------------------------------------------------ one example

    def run_requests(self, reqs: list[Req]) -> None:
        t0, wall = time.monotonic(), time.time()
        try:
            self._run_requests(reqs)
        finally:
            self._timed(t0, wall, "; ".join(r.summary() for r in reqs))

    def _timed(self, t0: float, wall: float, what: str) -> None:
        took = time.monotonic() - t0
        self.history.append((wall, time.time(), what[:300]))
        self.slowest.append((took, what[:300]))
        self.slowest.sort(key=lambda s: -s[0])
        del self.slowest[5:]

    def _run_requests(self, reqs: list[Req]) -> None:
        led, problems = self.ledger, []
        seen = len(led.problems)
        sent: list[tuple[Entry, Expect, Req]] = []
        last_sub = "no-subscribe-yet"
        known = example_defect([(r.op, r.args) for r in reqs])
        if known and active(known):
            self.stats.set_aside[known] += 1
            return
        for req in reqs:
            args = dict(req.args)
            if args.get("subscription") == SUBSCRIPTION_REF:
                args["subscription"] = last_sub
            known = request_defect(req.op, args) if req.op in OPS else None
            if known and active(known):
                self.stats.set_aside[known] += 1
                continue
            rid = led.unique(req.rid)
            payload = p.encode(p.Request(req.v, rid, req.op, args))
            what = f"{req.summary()} [{len(payload)} bytes]"
            self.stats.requests[req.op if req.op in OPS else "(unknown op)"] += 1
            self.stats.bytes_sent += len(payload)
            if len(payload) > 2 * p.MAX_REQUEST_BYTES:
                problems += self._oversize([payload], what)
                continue
            entry = led.register(Entry(rid, what, req.op if req.op in OPS else None))
            led.send([payload])
            sent.append((entry, expectation(req.op, args, req.v, len(payload)),
                         Req(req.op, args, req.v, rid)))
            if req.op == "subscribe":
                last_sub = rid
        self.stats.examples["requests"] += 1
        problems += self._settle([e.rid for e, _, _ in sent])
        for entry, exp, _ in sent:
            problems += self._judge(entry, exp)
            entry.forget()
        if not self.alive():
            problems.append(self._crashed("; ".join(e.what for e, _, _ in sent)))
        else:
            problems += self._restore(sent)
        problems += led.problems[seen:]
        self._verdict(problems, [e.what for e, _, _ in sent])

    def run_raw(self, case: RawCase) -> None:
        t0, wall = time.monotonic(), time.time()
        try:
            self._run_raw(case)
        finally:
            self._timed(t0, wall, case.summary())

    def _run_raw(self, case: RawCase) -> None:
        led, problems = self.ledger, []
        seen = len(led.problems)
        embedded: list[str] = []

        def ids() -> Any:
            for rid in led.ids():
                embedded.append(rid)
                yield rid
        frames = case.frames = case.build(ids())
        readable = [readable_id(f) for f in frames]
        known = raw_defect(case.depth, frames, readable)
        self.stats.raw[case.label.split("(")[0].split("-")[0]] += 1
        self.stats.bytes_sent += sum(map(len, frames))
        if known and active(known):
            self.stats.set_aside[known] += 1
            return
        what = case.summary()
        self.stats.examples["raw"] += 1
        if max(map(len, frames)) > 2 * p.MAX_REQUEST_BYTES:
            self._verdict(self._oversize(frames, what), [what])
            return
        for rid in embedded:
            led.register(Entry(rid, what, None, must_answer=False, group=embedded))
        led.send(frames)
        sentinel = led.call("ping", timeout=10)
        answerable = [r for r in readable if r is not None]  # one reply, with one of them
        if answerable and not led.wait_any(embedded, 5.0):
            problems.append(f"{what}: no reply, though the id {answerable[-1]!r:.40} can be read")
        for rid in embedded:
            reply = led.entries[rid].reply
            if reply is not None and error_type(reply) == "InternalError":
                problems.append(f"{what}: InternalError {reply.error}")
        if not sentinel.ok:
            problems.append(f"{what}: the ping after it failed: {sentinel.error}")
        for rid in embedded:
            led.entries[rid].forget()
        if not self.alive():
            problems.append(self._crashed(what))
        problems += led.problems[seen:]
        self._verdict(problems, [what])

    def _verdict(self, problems: list[str], sent: list[str]) -> None:
        if problems:
            self.found.extend(problems)
            raise AssertionError("\n".join(
                ["sent:", *(f"  {s}" for s in sent), "problems:",
                 *(f"  {x}" for x in dict.fromkeys(problems))]))

    def _oversize(self, frames: list[bytes], what: str) -> list[str]:
        """Frames past ZMQ_MAXMSGSIZE: the daemon drops the connection; use a spare one."""
        spare = Ledger(self.daemon.address, "spare")
        try:
            spare.send(frames)
            spare.drain(0.3)
            problems = [f"{what}: {x}" for x in spare.problems]
        finally:
            spare.close()
        reply = self.ledger.call("ping")
        if not reply.ok:
            problems.append(f"{what}: the daemon stopped answering pings")
        return problems

    # ------------------------------------------------------------------ waiting

    def _settle(self, rids: list[str]) -> list[str]:
        """Wait for every reply; unblock what waits on input or runs long, step by step."""
        led = self.ledger
        missing = led.wait(rids, 1.5)
        for op, args, wait in (("interrupt_kernel", {}, 3.0),
                               ("input_reply", {"value": ""}, 3.0),
                               ("restart_kernel", {}, 10.0)):
            if not missing:
                return []
            self.stats.unblocked += 1
            for target in TARGETS:
                reply = led.call(op, {"kernel_id": target, **args})
                if not reply.ok and error_type(reply) != "KernelNotFound":
                    return [f"{op}({target}) while unblocking failed: {reply.error}"]
            missing = led.wait(missing, wait)
        return [f"{led.entries[r].what}: no terminal reply within 17.5 s" for r in missing]

    # ------------------------------------------------------------------ judging

    def _judge(self, entry: Entry, exp: Expect) -> list[str]:
        reply, what = entry.reply, entry.what
        if reply is None:
            return []  # reported by _settle
        kind = error_type(reply)
        self.stats.outcomes["ok" if kind is None else kind] += 1
        if exp.must is not None:
            if kind != exp.must:
                got = "ok" if kind is None else f"{kind}: {reply.error}"
                return [f"{what}: expected {exp.must}, got {got:.300}"]
            return []
        if kind == "InternalError":
            return [f"{what}: InternalError {reply.error!s:.400}"]
        if kind is not None:
            if kind not in exp.allowed:
                return [f"{what}: unexpected {kind} {reply.error!s:.300}"]
            return []
        if exp.must_fail is not None:
            return [f"{what}: accepted, but {exp.must_fail}"]
        return self._check_value(entry, reply.value)

    def _check_value(self, entry: Entry, value: Any) -> list[str]:
        op, what = entry.op, entry.what
        if op == "create_kernel":
            self.stats.kernels_created += 1
            return [] if isinstance(value, str) else [f"{what}: kernel id {value!r:.80}"]
        if op in ("execute", "execute_stream"):
            if not isinstance(value, dict) or value.get("status") not in ("ok", "error",
                                                                           "aborted"):
                return [f"{what}: not an ExecutionResult: {value!r:.200}"]
            if op == "execute_stream":
                wrong = [e for e in entry.events if e.kernel_id != value.get("kernel_id")
                         or e.execution_id not in (None, value.get("execution_id"))]
                if wrong or value.get("outputs"):
                    return [f"{what}: events of another execution or outputs repeated"]
        if op == "ping" and not (isinstance(value, dict) and value.get("pong") is True):
            return [f"{what}: ping answered {value!r:.200}"]
        if op == "subscribe" and value != {"subscription": entry.rid}:
            return [f"{what}: subscribe answered {value!r:.200}"]
        return []

    # ------------------------------------------------------------------ restoring

    def _restore(self, sent: list[tuple[Entry, Expect, Req]]) -> list[str]:
        led, problems = self.ledger, []
        may_remove: set[str] = set()
        may_die: set[str] = set()
        reset_timeout: set[str] = set()
        ran_code: set[str] = set()
        unsubscribed = {req.args.get("subscription") for _, exp, req in sent
                        if exp.dispatched and req.op == "unsubscribe"}
        for entry, exp, req in sent:
            if not exp.dispatched:
                continue
            kid = req.args.get("kernel_id")
            if req.op in ("destroy_kernel", "force_terminate_kernel"):
                may_remove.add(kid)
            elif req.op == "destroy_all":
                ns = req.args.get("namespace")
                may_remove |= {t for t in TARGETS if ns is None or namespace_of(t) == ns}
            elif req.op == "set_inactivity_timeout":
                reset_timeout.add(kid)
                if req.args.get("timeout"):
                    may_remove.add(kid)
            elif req.op == "restart_kernel":
                may_die.add(kid)
            elif req.op in ("execute", "execute_stream"):
                ran_code.add(kid)  # user code may exhaust its kernel's limits
            elif req.op == "subscribe" and entry.subscribed:
                reply = led.call("unsubscribe", {"subscription": entry.rid})
                entry.subscribed = False
                if reply.value is not True and entry.rid not in unsubscribed:
                    problems.append(f"unsubscribe({entry.rid}) answered {reply.value!r:.80}")
        for kernel_id in led.call("get_kernel_ids").value:
            if kernel_id not in TARGETS:
                reply = led.call("destroy_kernel", {"kernel_id": kernel_id})
                if not reply.ok and error_type(reply) != "KernelNotFound":
                    problems.append(f"destroying {kernel_id!r:.60}: {reply.error}")
        kernels = {k["id"]: k for k in led.call("list_kernels").value}
        for target in TARGETS:
            info = kernels.get(target)
            if info is None:
                if target not in may_remove:
                    problems.append(f"kernel {target} vanished, though nothing removed it")
                self._create(target)
            elif info["status"] == "dead":
                death = self._death_of(target)
                by_limit = target in ran_code and ("limit" in death or "memory" in death)
                if target not in may_die | may_remove and not by_limit:
                    problems.append(f"kernel {target} died, though nothing killed it: {death}")
                elif by_limit:
                    self.stats.limit_deaths += 1
                led.call("destroy_kernel", {"kernel_id": target})
                self._create(target)
            elif target in reset_timeout:
                led.call("set_inactivity_timeout", {"kernel_id": target, "timeout": None})
        orphans = self.orphans(settle=2.0)
        if orphans:
            problems.append(f"worker processes that no kernel owns: {orphans}")
            for pid in orphans:  # so that the next examples start clean
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
        return problems

    def ensure_targets(self) -> None:
        """The target kernels exist and are alive (for tests that run after a failure)."""
        kernels = {k["id"]: k for k in self.ledger.call("list_kernels").value}
        for target in TARGETS:
            info = kernels.get(target)
            if info is not None and info["status"] == "dead":
                self.ledger.call("destroy_kernel", {"kernel_id": target})
            if info is None or info["status"] == "dead":
                self._create(target)

    def _death_of(self, kernel_id: str) -> str:
        lines = [ln for ln in self.daemon.log.splitlines()
                 if "kernel died" in ln and f"kernel={kernel_id} " in ln]
        return lines[-1] if lines else "(no 'kernel died' line in the daemon log)"

    # ------------------------------------------------------------------ whole-run checks

    def orphans(self, settle: float = 3.0) -> list[int]:
        """Worker processes under the zygote that no listed kernel owns."""
        deadline = time.monotonic() + settle
        while True:
            owned = {k["pid"] for k in self.ledger.call("list_kernels").value if k["pid"]}
            try:
                children = psutil.Process(self.daemon.pid).children()
            except psutil.Error:
                return []
            workers = [w for z in children if "kerneld.runtime.zygote" in " ".join(z.cmdline())
                       for w in z.children() if "kerneld-init" not in " ".join(w.cmdline())]
            extra = sorted(w.pid for w in alive(workers) if w.pid not in owned)
            if not extra or time.monotonic() > deadline:
                return extra
            time.sleep(0.1)

    def log_lines(self, needle: str) -> int:
        return sum(1 for line in self.daemon.log.splitlines() if needle in line)

    def slow_moments(self, slow: list[list[float]]) -> list[str]:
        """What the fuzzer was sending around each slow ping."""
        out = []
        for wall, ms in slow[:5]:
            near = [s for a, b, s in self.history if a - 0.05 <= wall <= b + 0.05]
            out.append(f"{ms:.0f} ms at {wall:.3f}: "
                       + (" || ".join(near[-3:])[:600] or "between examples"))
        return out


# ---------------------------------------------------------------------- hypothesis settings

EXAMPLES = int(os.environ.get("KERNELD_FUZZ_EXAMPLES", "150"))
SEED = os.environ.get("KERNELD_FUZZ_SEED")


def fuzz(examples: int | None = None) -> Any:
    """Decorator: hypothesis settings of the fuzz suite. `examples` (default
    `$KERNELD_FUZZ_EXAMPLES`) examples, no deadline, no example database; derandomized (the
    same examples every run, for CI) unless `$KERNELD_FUZZ_SEED` picks a seed."""
    from hypothesis import HealthCheck, seed, settings

    def wrap(test: Any) -> Any:
        test = settings(max_examples=examples or EXAMPLES, deadline=None, database=None,
                        derandomize=SEED is None, suppress_health_check=list(HealthCheck),
                        print_blob=True)(test)
        return seed(int(SEED))(test) if SEED is not None else test
    return wrap


def timeout_for(examples: int, per_example: float) -> float:
    """A pytest-timeout that grows with the budget (the suite's default is 120 s)."""
    return max(120.0, examples * per_example * 3)
