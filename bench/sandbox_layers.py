"""What each confinement layer costs per system call (behind `sandbox_overhead_pct`).

    .venv/bin/python bench/sandbox_layers.py [--n 100000]

Needs root. Runs the bench's own per-operation loop (`_kb_per_op` of
`kerneld_bench.workloads.SYSCALL_CODE`, the code kernels run: getpid, stat, a pipe write +
read, open + read + close of a stdlib file under /usr) in this process, unconfined, and in
children forked from it and confined with `sandbox.apply`: fully, without Landlock, without
seccomp, and without both. Prints nanoseconds per operation (CPU time, the fastest of 5
slices of `--n` calls) and the cost of each layer. The policy is `sandbox.Policy()`'s
defaults (the same system paths, mount view, Landlock rules and seccomp allowlist as the
default profile) with a throw-away uid and no cgroup. Switching a layer off replaces its install step with a no-op and skips the
canary that would refuse to run so: for diagnosis, never for untrusted code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sandbox
from kerneld_bench.workloads import SYSCALL_CODE
from sandbox import landlock, seccomp
from sandbox.policy import Limits, Policy

apply_module = sys.modules["sandbox.apply"]
VARIANTS = ("full", "no-landlock", "no-seccomp", "neither")


_LOOP: dict[str, Any] = {}
exec(SYSCALL_CODE, _LOOP)  # noqa: S102 - our own constant: defines _kb_per_op, as in a kernel


def per_op(n: int) -> dict[str, float]:
    return dict(_LOOP["_kb_per_op"](n))


def confined(variant: str, n: int) -> dict[str, float]:
    policy = Policy(uid=60999, gid=60999, enforcement="best-effort",
                    limits=Limits(cpu_shares=None, memory_bytes=None, processes=None))
    r, w = os.pipe()
    pid = sandbox.fork(policy)
    if pid == 0:
        try:
            os.close(r)
            off = lambda *_: None
            if variant in ("no-landlock", "neither"):
                setattr(landlock, "install", off)  # noqa: B010 - patching, for diagnosis
            if variant in ("no-seccomp", "neither"):
                setattr(seccomp, "install", off)  # noqa: B010
            if variant != "full":
                setattr(apply_module, "_canary", off)  # noqa: B010
            sandbox.apply(policy, keep_fds=[w])
            os.write(w, json.dumps(per_op(n)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000,
                    help="calls per operation (timed in 5 slices, the fastest kept)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the children switch to a throw-away uid)", file=sys.stderr)
        return 2
    rows = {"unconfined": per_op(args.n)}
    for variant in VARIANTS:
        rows[variant] = confined(variant, args.n)
    ops = list(rows["unconfined"])
    print(f"ns per operation (fastest of 5 slices of {args.n // 5}); file: {os.__file__}")
    print(f"{'':16s}" + "".join(f"{op:>17s}" for op in ops))
    for name, row in rows.items():
        print(f"{name:16s}" + "".join(f"{row[op]:17.0f}" for op in ops))
    full, no_ll, no_sc = rows["full"], rows["no-landlock"], rows["no-seccomp"]
    print(f"{'Landlock costs':16s}" + "".join(f"{full[op] - no_ll[op]:17.0f}" for op in ops))
    print(f"{'seccomp costs':16s}" + "".join(f"{full[op] - no_sc[op]:17.0f}" for op in ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
