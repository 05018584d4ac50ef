"""`kerneld bench`: kerneld and ipykernel 7 side by side, on this machine, in one run.

Process model: the bench is an ordinary client program. It starts its own kerneld daemons
(`python -m kerneld serve` on a private ipc endpoint, the `default` profile fully enforced, each
in its own session) and talks to them with `kerneld.connect_async()`, exactly as a user would.
The peer is ipykernel 7 started by jupyter_client 8's `AsyncKernelManager` and driven by its
`AsyncKernelClient` sockets with our own loop (no `wait_for_ready()` fixed cost; ZeroMQ
reconnect interval 2 ms so a client that connects before the kernel binds pays no 100 ms
reconnect: see ../shared/docs/BASELINES.md). `--embedded` swaps the daemon for an in-process
`kerneld.KernelManager` (a development stand-in; its figures are labelled as such).

Phases, in order (kerneld and ipykernel alternate inside every phase, after a warm-up):
idle memory of the peer → create_cold → rtt (`1+1`, `x = 1`) → throughput 1×1 and 8×8 →
streaming (1 MiB writes, print loop; daemon RSS sampled) → sandbox overhead (confined worker vs
IN_PROCESS, same daemon) → idle confined kernels held at once (and their USS/PSS) → a second
daemon with a warm pool for create_pool.

Output: a table on stdout and `--json FILE` shaped as
`{"machine": {...}, "metrics": {NAME: {"unit", "kerneld": {"p50", "p99"}, "ipykernel": {...} |
null, "ratio": float | null}}, "targets": {...}, "details": {...}}`. `ratio` is how many times
better kerneld is (> 1 when it wins). For metrics where higher is better, "p99" is the tail
value that 99 % of samples reach (the 1st percentile), so p99 is always the pessimistic side.

Where it lives: `bench/kerneld_bench/` of the source checkout, next to the `kerneld` package but
outside it, so the wheel does not ship a harness that needs ipykernel, jupyter_client and root.
`kerneld bench` (kerneld/cli.py) puts `bench/` on `sys.path` and calls `main`; the scripts in
`bench/` (profile.py, sandbox_layers.py) import it as their neighbour.

Cleanup: every daemon, zygote, worker and ipykernel process the bench starts is recorded and
ended on exit, error, Ctrl-C or SIGTERM (gracefully first, then SIGKILL).
"""

from kerneld_bench.metrics import METRICS, summarize
from kerneld_bench.procs import Reaper
from kerneld_bench.report import main
from kerneld_bench.sides import KerneldSide, kd_execute, kd_stream
from kerneld_bench.workloads import CHUNK_CODE, PRINT_CODE

__all__ = ["CHUNK_CODE", "METRICS", "PRINT_CODE", "KerneldSide", "Reaper", "kd_execute",
           "kd_stream", "main", "summarize"]
