"""The sandbox tier's plain-data form of a `sandbox.Policy` (JSON lines to `_driver.py`).

A test writes a policy as a dict of only the fields it cares about; `policy_from_dict` builds
the `Policy`, refusing unknown keys: a typo in a test must fail, not silently drop a rule and
let a confinement test pass against a wider policy. (The daemon's own wire does not need this:
the manager sends a real `Policy` with msgspec and the zygote converts it back, see
test_unit_policy.py.) Imported by the driver in the runtime interpreter too: stdlib only.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sandbox.policy import ALL, Limits, Mount, NetPolicy, Policy


def _tuple(value: Any) -> Any:
    return value if value == ALL else tuple(value)


def policy_from_dict(data: dict[str, Any]) -> Policy:
    """The `Policy` of `data` (`dataclasses.asdict` output or any subset of it)."""
    known = {f.name for f in fields(Policy)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown Policy keys: {sorted(unknown)}")
    kw: dict[str, Any] = dict(data)
    for name in ("read", "write", "exec_paths", "sys"):
        if name in kw:
            kw[name] = _tuple(kw[name])
    for name in ("deny_read", "deny_write", "system_paths", "cgroup_dirs"):
        if name in kw:
            kw[name] = tuple(kw[name])
    if "net" in kw:
        kw["net"] = NetPolicy(**kw["net"])
    if "limits" in kw:
        kw["limits"] = Limits(**kw["limits"])
    if "mounts" in kw:
        kw["mounts"] = tuple(Mount(**m) for m in kw["mounts"])
    if "bind_files" in kw:
        kw["bind_files"] = tuple((str(a), str(b)) for a, b in kw["bind_files"])
    if "env" in kw:
        kw["env"] = tuple((str(a), str(b)) for a, b in kw["env"])
    return Policy(**kw)
