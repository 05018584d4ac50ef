"""Support for the sandbox tier: a driver (mini zygote) in the worker runtime interpreter.

Child-process tests send `{"policy", "code"}` to the driver, which forks with `sandbox.fork`,
applies the policy in the child and runs the snippet; the snippet sets `result`. Skip markers
are computed by probing the host (never to hide a failure on a host that has the feature).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# With `.venv/bin/pytest` (no cwd on sys.path) the rootdir conftest puts tests/ first on
# sys.path, and this very directory then shadows the real package as a *namespace* package
# named `sandbox`. Put the checkout first and drop such a shadow before importing.
sys.path.insert(0, str(ROOT))
if getattr(sys.modules.get("sandbox"), "__file__", "") is None:
    del sys.modules["sandbox"]

import sandbox

RUNTIME = "/opt/kerneld/runtime/bin/python"
BOOT = ("import sys; sys.path[:0] = [{root!r}, {here!r}]; import _driver; _driver.main()")

FEATURES = sandbox.probe()
IS_ROOT = os.geteuid() == 0
HAS_RUNTIME = os.access(RUNTIME, os.X_OK)

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (uid switch, cgroups)")
needs_runtime = pytest.mark.skipif(not HAS_RUNTIME, reason=f"no worker runtime at {RUNTIME}")
needs_landlock = pytest.mark.skipif(FEATURES.landlock_abi < 1, reason="Landlock not enabled")
needs_landlock_net = pytest.mark.skipif(FEATURES.landlock_abi < 4, reason="Landlock ABI < 4")
needs_seccomp = pytest.mark.skipif(not FEATURES.seccomp, reason="seccomp unavailable")
needs_cgroups = pytest.mark.skipif(
    not IS_ROOT or not {"memory", "pids"} <= FEATURES.cgroup_controllers,
    reason="no writable memory+pids cgroup controllers")
needs_userns = pytest.mark.skipif(
    not IS_ROOT or "user" not in FEATURES.namespaces,
    reason="needs root to start a non-root driver, and user namespaces")
confined = [needs_runtime, needs_root, needs_seccomp, needs_landlock,
            pytest.mark.skipif(bool(sandbox.check(sandbox.Policy(uid=64000, gid=64000),
                                                  FEATURES)),
                               reason="host cannot enforce the default policy")]


class Driver:
    """A driver process; `run(policy, code)` → the driver's JSON report for one child."""

    def __init__(self, user: int | None = None) -> None:
        env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
               "LANG": "C.UTF-8", "SECRET_TOKEN": "do-not-leak", "HOME": "/tmp"}
        code = BOOT.format(root=str(ROOT), here=str(Path(__file__).parent))
        self.proc = subprocess.Popen(
            [RUNTIME, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, cwd="/", user=user, group=user,
            extra_groups=[] if user is not None else None)
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        assert hello["ready"] and hello["tasks"] == 1, hello  # single-threaded, like the zygote

    def run(self, policy: dict[str, Any], code: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"policy": policy, "code": code, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "driver died"
        resp: dict[str, Any] = json.loads(line)
        assert "driver_error" not in resp, resp
        return resp

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def result(resp: dict[str, Any]) -> Any:
    """The snippet's `result`, asserting the child confined itself and ran the snippet."""
    child = resp.get("child")
    assert child and child.get("ok"), resp
    return child["result"]
