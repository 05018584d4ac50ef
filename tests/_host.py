"""What this host can do, asked once per test session (shared by every suite that needs it)."""

from __future__ import annotations

import functools
import os


@functools.cache
def sandbox_missing(mount: bool = False) -> str | None:
    """Why this host cannot run confined kernels under the default profile, also with a
    filesystem mount when `mount` (None: it can)."""
    if os.geteuid() != 0:
        return "needs root"
    try:
        import sandbox
        from kerneld.permissions import load_profile, lower
        features = sandbox.probe()
        policy = lower(load_profile("default")).policy(uid=200000, gid=200000)
        missing = sandbox.check(policy, features)
        if mount:
            missing += sandbox.check(sandbox.Policy(uid=64000, gid=64000, mounts=(
                sandbox.Mount("/x", "/home/kernel"),)), features)
    except Exception as exc:  # noqa: BLE001  (an unusable sandbox is a reason to skip)
        return f"sandbox not usable here: {exc}"
    return "; ".join(missing) or None
