"""What each confinement layer costs per system call (behind `sandbox_overhead_pct`).

    .venv/bin/python bench/sandbox_layers.py [--n 20000] [--rounds 5]

Needs root. Runs the bench's per-operation loop (getpid, stat, a pipe write + read, open +
read + close of a stdlib file under /usr) in this process, unconfined, and in children forked
from it and confined with `sandbox.apply`: fully, without Landlock, without seccomp, and
without both. Prints nanoseconds per operation (CPU time of the loop, best of `--rounds`) and
the cost of each layer. The policy is `sandbox.Policy()`'s defaults (the same system paths,
mount view, Landlock rules and seccomp allowlist as the default profile) with a throw-away
uid and no cgroup. Switching a layer off replaces its install step with a no-op and skips the
canary that would refuse to run so: for diagnosis, never for untrusted code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sandbox
from sandbox import landlock, seccomp
from sandbox.policy import Limits, Policy

apply_module = sys.modules["sandbox.apply"]
PATH = os.__file__
VARIANTS = ("full", "no-landlock", "no-seccomp", "neither")


def per_op(n: int, rounds: int) -> dict[str, float]:
    r, w = os.pipe()
    buf = b"x" * 64

    def open_read_close() -> None:
        fd = os.open(PATH, os.O_RDONLY)
        os.read(fd, 128)
        os.close(fd)

    ops = {"getpid": os.getpid, "stat": lambda: os.stat(PATH),
           "pipe_write_read": lambda: (os.write(w, buf), os.read(r, 64)),
           "open_read_close": open_read_close}
    out = {}
    for name, op in ops.items():
        best = float("inf")
        for _ in range(rounds):
            t = time.thread_time()
            for _ in range(n):
                op()
            best = min(best, (time.thread_time() - t) / n * 1e9)
        out[name] = round(best)
    return out


def confined(variant: str, n: int, rounds: int) -> dict[str, float]:
    policy = Policy(uid=60999, gid=60999, enforcement="best-effort",
                    limits=Limits(cpu_shares=None, memory_bytes=None, processes=None))
    r, w = os.pipe()
    pid = sandbox.fork(policy)
    if pid == 0:
        try:
            os.close(r)
            if variant in ("no-landlock", "neither"):
                landlock.install = lambda _ruleset: None
            if variant in ("no-seccomp", "neither"):
                seccomp.install = lambda _bpf: None
            if variant != "full":
                apply_module._canary = lambda _prep: None
            sandbox.apply(policy, keep_fds=[w])
            os.write(w, json.dumps(per_op(n, rounds)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="calls per operation and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the children switch to a throw-away uid)", file=sys.stderr)
        return 2
    rows = {"unconfined": per_op(args.n, args.rounds)}
    for variant in VARIANTS:
        rows[variant] = confined(variant, args.n, args.rounds)
    ops = list(rows["unconfined"])
    print(f"ns per operation (best of {args.rounds} x {args.n}); file: {PATH}")
    print(f"{'':16s}" + "".join(f"{op:>17s}" for op in ops))
    for name, row in rows.items():
        print(f"{name:16s}" + "".join(f"{row[op]:17.0f}" for op in ops))
    full, no_ll, no_sc = rows["full"], rows["no-landlock"], rows["no-seccomp"]
    print(f"{'Landlock costs':16s}" + "".join(f"{full[op] - no_ll[op]:17.0f}" for op in ops))
    print(f"{'seccomp costs':16s}" + "".join(f"{full[op] - no_sc[op]:17.0f}" for op in ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
