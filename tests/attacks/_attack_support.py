"""Support for the attack suite: run a snippet in a real kernel (or unconfined on the host) and
get its outcome as data; declarative attack cases with their positive controls.

A snippet is the *body* of a function: it `return`s a JSON-able value, or raises. The harness
turns the outcome into `{"ok": True, "value": ...}` or `{"ok": False, "exc": "PermissionError",
"errno": "EPERM", "msg": ...}` and prints it after a marker, so the test reads exactly what the
call did inside the kernel. Available in a snippet: `os`, `errno`, `socket`, `ctypes`, `sys`,
`time`, `json`, `P` (the parameters the test passed: ports, host paths, ...), and
`syscall(nr, *args)`: a raw system call through libc (no Python-level check on the way),
raising OSError(errno) on failure. Host controls run the very same text with the worker
runtime's interpreter, as root, outside any sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RUNTIME_PYTHON = "/opt/kerneld/runtime/bin/python"
MARK = "@@ATTACK-OUTCOME@@"

HARNESS = r'''
def __attack_run():
    import ctypes, errno, json, os, socket, sys, time
    P = json.loads({params!r})
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syscall.restype = ctypes.c_long

    def syscall(nr, *args):
        conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
        ctypes.set_errno(0)
        r = _libc.syscall(ctypes.c_long(nr), *conv)
        if r == -1:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r

    def body():
{body}

    try:
        out = {{"ok": True, "value": body()}}
    except OSError as e:
        out = {{"ok": False, "exc": type(e).__name__,
               "errno": errno.errorcode.get(e.errno) if e.errno else None, "msg": str(e)}}
    except BaseException as e:
        out = {{"ok": False, "exc": type(e).__name__, "errno": None, "msg": str(e)}}
    sys.stdout.flush()
    return json.dumps(out, default=repr)
print({mark!r} + __attack_run(), flush=True)
del __attack_run
'''


def wrap(body: str, params: dict[str, Any] | None = None) -> str:
    """The full cell text running `body` (a function body) with parameters `params`."""
    inner = textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8)
    return HARNESS.format(params=json.dumps(params or {}), body=inner, mark=MARK)


@dataclass
class Outcome:
    """What a snippet did: ok + value, or the exception type and errno name. `died` is set when
    the kernel died instead of answering (the KernelDied reason)."""

    ok: bool
    value: Any = None
    exc: str | None = None
    errno: str | None = None
    msg: str = ""
    died: str | None = None
    output: str = ""

    def __str__(self) -> str:
        if self.died:
            return f"<kernel died: {self.died}>"
        if self.ok:
            return f"<ok {self.value!r}>"
        return f"<{self.exc} {self.errno} {self.msg!r}>"


def parse(stdout: str, error: dict[str, Any] | None = None) -> Outcome:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            data = json.loads(line[len(MARK):])
            return Outcome(ok=data["ok"], value=data.get("value"), exc=data.get("exc"),
                           errno=data.get("errno"), msg=data.get("msg", ""), output=stdout)
    if error is not None and error.get("ename") in ("KernelDied", "KernelForcedTermination"):
        return Outcome(ok=False, exc=error["ename"], died=error.get("evalue", ""),
                       output=stdout)
    detail = error and (error.get("ename"), error.get("evalue"))
    raise AssertionError(f"no outcome from the snippet (error={detail}, output={stdout[-2000:]!r})")


def stdout_of(result: Any) -> str:
    return "".join(e.data.get("text", "") for e in result.outputs
                   if e.type == "stream" and e.data.get("name") == "stdout")


async def run_on_host(body: str, params: dict[str, Any] | None = None, *,
                      user: int | None = None, timeout: float = 30) -> Outcome:
    """The same snippet in an unconfined process (root unless `user`): the positive control for
    operations no profile can grant."""
    proc = await asyncio.create_subprocess_exec(
        RUNTIME_PYTHON, "-I", "-c", wrap(body, params), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/", user=user, group=user, extra_groups=[] if user is not None else None)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode(errors="replace")
    if MARK not in text:
        return Outcome(ok=False, exc="HostProcessDied", died=f"rc={proc.returncode}",
                       msg=err.decode(errors="replace")[-2000:], output=text)
    return parse(text)


# --------------------------------------------------------------------------- expectations

class Expect:
    def check(self, out: Outcome, what: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Err(Expect):
    """Failed with exactly this errno name (and exception type, if given; `msg` substring)."""

    errno: str | None
    exc: str | None = None
    msg: str | None = None

    def check(self, out: Outcome, what: str) -> None:
        assert not out.ok and out.died is None, f"{what}: expected {self}, got {out}"
        assert out.errno == self.errno, f"{what}: expected errno {self.errno}, got {out}"
        if self.exc is not None:
            assert out.exc == self.exc, f"{what}: expected {self.exc}, got {out}"
        if self.msg is not None:
            assert self.msg in out.msg, f"{what}: expected {self.msg!r} in the message, got {out}"


@dataclass(frozen=True)
class Ok(Expect):
    """Succeeded; `value` (if not None) must equal the returned value, `pred` must hold."""

    value: Any = None
    pred: Callable[[Any], bool] | None = None
    desc: str = ""

    def check(self, out: Outcome, what: str) -> None:
        assert out.ok, f"{what}: expected success{' ' + self.desc if self.desc else ''}, got {out}"
        if self.value is not None:
            assert out.value == self.value, f"{what}: expected {self.value!r}, got {out.value!r}"
        if self.pred is not None:
            assert self.pred(out.value), f"{what}: {self.desc or 'predicate'} failed on {out.value!r}"


@dataclass(frozen=True)
class Not(Expect):
    """The control fails *differently* (the call exists and reaches the kernel's real code)."""

    errno: str

    def check(self, out: Outcome, what: str) -> None:
        assert out.died is None, f"{what}: the control process died: {out}"
        assert out.ok or out.errno != self.errno, f"{what}: expected anything but {self.errno}, " \
                                                  f"got {out}"


HOST = "host"  # control target: an unconfined process on the host, as root


@dataclass(frozen=True)
class Case:
    """One attack: `body` in the shared default-profile kernel must give `expect`; the same
    `body` (or `control_body`) under `control` (a profile name, or HOST) must give
    `control_expect`. `host_check(lab, attack_outcome)` may assert a side effect is absent as
    seen from the host. `params(lab)` builds the snippet's parameters."""

    id: str
    body: str
    expect: Expect
    control: str
    control_expect: Expect = field(default_factory=Ok)
    control_body: str | None = None
    params: Callable[[Any], dict[str, Any]] | None = None
    host_check: Callable[[Any, Outcome, dict[str, Any]], Any] | None = None
    control_check: Callable[[Any, Outcome, dict[str, Any]], Any] | None = None
    attack_profile: str = "default"
    control_user: Callable[[Any], int] | None = None

    async def run(self, lab: Any) -> None:
        params = self.params(lab) if self.params else {}
        out = await lab.run(self.attack_profile, self.body, params)
        self.expect.check(out, f"attack {self.id} ({self.attack_profile} profile)")
        if self.host_check is not None:
            res = self.host_check(lab, out, params)
            if asyncio.iscoroutine(res):
                await res
        body = self.control_body or self.body
        if self.control == HOST:
            user = self.control_user(lab) if self.control_user else None
            ctl = await run_on_host(body, params, user=user)
        else:
            ctl = await lab.run(self.control, body, params)
        self.control_expect.check(ctl, f"control {self.id} ({self.control})")
        if self.control_check is not None:
            res = self.control_check(lab, ctl, params)
            if asyncio.iscoroutine(res):
                await res


def ids(cases: list[Case]) -> list[str]:
    seen = set()
    for c in cases:
        assert c.id not in seen, f"duplicate case id {c.id}"
        seen.add(c.id)
    return [c.id for c in cases]


def host_pidns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in_pidns(ns: str) -> list[int]:
    """Host pids of every process whose PID namespace is `ns` (zombies included)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and host_pidns(int(name)) == ns:
            out.append(int(name))
    return out


def processes_of_uid(uid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(name))
                        break
        except OSError:
            continue
    return out


def with_child(expr: str) -> str:
    """A snippet evaluating `expr` while a sleeping child process of its own (`child`) exists."""
    return ("child = os.fork()\n"
            "if child == 0:\n"
            "    time.sleep(30)\n"
            "    os._exit(0)\n"
            "try:\n"
            "    time.sleep(0.05)\n"
            f"    return {expr}\n"
            "finally:\n"
            "    os.kill(child, 9)\n"
            "    os.waitpid(child, 0)\n")
