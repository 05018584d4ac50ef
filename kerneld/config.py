"""Configuration, declared once and immutable (frozen dataclasses).

`ManagerConfig` is what a `KernelManager` needs, embedded or in the daemon. The daemon's own
settings wrap it (see `DaemonConfig`, loaded with precedence defaults < TOML < env < CLI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _default_runtime_python() -> str:
    return os.environ.get("KERNELD_RUNTIME_PYTHON", "/opt/kerneld/runtime/bin/python")


@dataclass(frozen=True)
class ManagerConfig:
    """Settings of one KernelManager.

    runtime_python: the worker runtime interpreter (a world-readable prefix; see SANDBOX.md).
    preload: modules the zygote imports once so every kernel starts with them warm.
    profile_dirs: where `<name>.toml` profiles are looked up before the packaged ones.
    default_profile: the profile of a kernel created without one.
    allow_in_process: whether IN_PROCESS kernels (no isolation) may be created.
    uid_range: [first, last] unprivileged uids handed out, one per kernel, when running as root.
    confine: apply the sandbox to workers. Only tests of the engine itself turn this off.
    pool_size: idle pre-forked workers kept per profile named in `pool_profiles`.
    inactivity_timeout / max_execution_time: defaults when neither request nor profile sets one.
    stall_grace: seconds an ignored stall interrupt waits before escalating.
    max_kernels: refuse to create more than this many kernels.
    """

    runtime_python: str = field(default_factory=_default_runtime_python)
    preload: tuple[str, ...] = ("numpy", "matplotlib", "matplotlib.pyplot")
    profile_dirs: tuple[str, ...] = ()
    default_profile: str = "default"
    allow_in_process: bool = True
    uid_range: tuple[int, int] = (200_000, 299_999)
    confine: bool = True
    pool_size: int = 0
    pool_profiles: tuple[str, ...] = ("default",)
    inactivity_timeout: float | None = None
    max_execution_time: float | None = None
    stall_grace: float = 2.0
    max_kernels: int = 2000
    runtime_dir: str | None = None
