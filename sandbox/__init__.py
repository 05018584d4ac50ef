"""kerneld's confinement library: a pure library, no daemon code, never imports kerneld, zmq or
tomllib.

    policy = sandbox.Policy(uid=64001, gid=64001, write=("/srv/k1",), ...)
    pid = sandbox.fork(policy)          # zygote: child is PID 1 of a new PID namespace
    if pid == 0:
        sandbox.apply(policy, keep_fds=(3,))   # every stage, in order; SandboxError on failure
        ... user code ...

`sandbox.probe()` says what the host can enforce, `sandbox.check(policy, features)` what a policy
needs that it cannot. `sandbox.cgroups` holds the supervisor-side cgroup helpers. See
`sandbox.apply.apply` for the stages and SANDBOX.md for the threat model.
"""

from __future__ import annotations

from . import cgroups
from .apply import (
    SandboxError,
    apply,
    fork,
    last_init_pid,
    prepare,
    supervised,
    timings,
    warm,
)
from .policy import ALL, Limits, Mount, NetPolicy, Policy
from .probe import HostFeatures, check, probe

__all__ = [
    "ALL",
    "HostFeatures",
    "Limits",
    "Mount",
    "NetPolicy",
    "Policy",
    "SandboxError",
    "apply",
    "cgroups",
    "check",
    "fork",
    "last_init_pid",
    "prepare",
    "probe",
    "supervised",
    "timings",
    "warm",
]
