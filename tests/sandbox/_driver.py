"""Test driver: a tiny zygote running in the worker runtime interpreter.

It imports everything a confined snippet may use *before* forking (after `apply` the checkout
and the test venv are not visible), then serves JSON-line requests on stdin:

    {"policy": <a subset of dataclasses.asdict(Policy)>, "code": "...", "timeout": 10,
     "cgroup": {"limits": {...}} | null, "unconfined": false}

For each one it (optionally) creates a cgroup, forks with `sandbox.fork`, and in the child runs
`sandbox.apply(policy, keep_fds=[result pipe])`, then `exec(code)`; the child reports
`{"ok": true, "result": <ns["result"]>, "timings": ...}` (or the exception) through the pipe as
JSON. The driver answers one JSON line with the child's report, exit status and cgroup facts.
Runs as root (or as the uid it was started with, for the non-root tests).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import IPython  # noqa: F401  - preloaded for snippets
import numpy  # noqa: F401
import zmq  # noqa: F401
from _policy_dict import policy_from_dict

import sandbox
from sandbox import cgroups
from sandbox.policy import Limits

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def raw_syscall(nr: int, *args: int) -> tuple[int, int]:
    """(return value, errno) of syscall(nr, *args), errno read right after the call."""
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return int(ret), ctypes.get_errno()


def errno_of(fn: Any, *args: Any, **kw: Any) -> int:
    """0 if fn(*args) succeeds, else the errno of the OSError it raised."""
    try:
        fn(*args, **kw)
    except OSError as e:
        return e.errno or -1
    return 0


def _helpers() -> dict[str, Any]:
    return {"os": os, "sys": sys, "errno": errno, "socket": socket, "signal": signal,
            "ctypes": ctypes, "json": json, "time": time, "threading": threading,
            "subprocess": subprocess, "libc": libc, "raw_syscall": raw_syscall,
            "errno_of": errno_of}


def _child(req: dict[str, Any], policy: sandbox.Policy, w: int) -> None:
    out: dict[str, Any]
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0), os.dup2(devnull, 1), os.close(devnull)  # never the driver's protocol
    try:
        if not req.get("unconfined"):
            sandbox.apply(policy, keep_fds=[w])
        ns = _helpers()
        exec(req["code"], ns)  # noqa: S102 - the snippet under test
        out = {"ok": True, "result": ns.get("result"), "timings": sandbox.timings()}
    except sandbox.SandboxError as e:
        out = {"ok": False, "stage": e.stage, "message": e.message}
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out = {"ok": False, "exc": repr(e), "errno": getattr(e, "errno", None)}
    data = json.dumps(out, default=repr).encode()
    while data:
        data = data[os.write(w, data):]
    os._exit(0)


def _collect(pid: int, r: int, timeout: float, dirs: tuple[str, ...]) -> tuple[bytes, int, bool]:
    chunks, deadline, timed_out = [], time.monotonic() + timeout, False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            if dirs:
                cgroups.kill(dirs)
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks), os.waitstatus_to_exitcode(status), timed_out


def handle(req: dict[str, Any], counter: int) -> dict[str, Any]:
    policy = policy_from_dict(req.get("policy", {}))
    dirs: tuple[str, ...] = ()
    if req.get("cgroup") is not None:
        limits = Limits(**req["cgroup"].get("limits", {}))
        dirs = cgroups.create(f"test-{os.getpid()}-{counter}", limits)
        policy = dataclasses.replace(policy, cgroup_dirs=dirs)
    r, w = os.pipe()
    t0 = time.perf_counter()
    try:
        plain = req.get("plain_fork") or req.get("unconfined")
        pid = os.fork() if plain else sandbox.fork(policy)
    except sandbox.SandboxError as e:
        os.close(r), os.close(w)
        return {"parent_error": {"stage": e.stage, "message": e.message}}
    if pid == 0:
        os.close(r)
        _child(req, policy, w)
    fork_ms = (time.perf_counter() - t0) * 1000
    os.close(w)
    data, code, timed_out = _collect(pid, r, float(req.get("timeout", 20)), dirs)
    os.close(r)
    resp: dict[str, Any] = {"status": code, "timed_out": timed_out, "fork_ms": fork_ms,
                            "child": json.loads(data) if data else None}
    if dirs:
        resp["oom_killed"] = cgroups.oom_killed(dirs)
        resp["cgroup_killed_all"] = cgroups.kill(dirs)
        cgroups.remove(dirs)
    return resp


def main() -> None:
    out = sys.stdout
    out.write(json.dumps({"ready": True, "threads": threading.active_count(),
                          "tasks": len(os.listdir("/proc/self/task"))}) + "\n")
    out.flush()
    for counter, line in enumerate(sys.stdin):
        try:
            resp = handle(json.loads(line), counter)
        except Exception as e:  # noqa: BLE001 - the test sees it
            resp = {"driver_error": repr(e)}
        out.write(json.dumps(resp, default=repr) + "\n")
        out.flush()
