"""Machine facts, the JSON report, the table, and the `kerneld bench` entry point."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from kerneld_bench.metrics import METRICS, MODES, Counts, evaluate, ratio, summarize
from kerneld_bench.procs import Reaper
from kerneld_bench.run import Bench

# --------------------------------------------------------------------------- report


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import kerneld
    from kerneld.config import ManagerConfig
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    runtime = ManagerConfig().runtime_python
    try:
        runtime_version = subprocess.run(
            [runtime, "-I", "-c", "import sys; print(sys.version.split()[0])"],
            check=False, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        runtime_version = None
    os_name = None
    try:
        with open("/etc/os-release") as f:
            os_name = next((line.split("=", 1)[1].strip().strip('"') for line in f
                            if line.startswith("PRETTY_NAME=")), None)
    except OSError:
        pass
    import zmq
    return {
        "cpu_model": cpu, "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "kernel": platform.release(), "os": os_name,
        "python": platform.python_version(), "runtime_python": runtime_version,
        "runtime_python_path": runtime,
        "kerneld": kerneld.__version__, "ipykernel": _version("ipykernel"),
        "jupyter_client": _version("jupyter_client"), "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(), "ipython": _version("ipython"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared VM: other work may run concurrently; see loadavg at start and end",
    }


def build_report(bench: Bench, machine: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    cold_peer = summarize(bench.samples["create_cold_ms"]["ipykernel"], False)
    for m in METRICS:
        kd = summarize(bench.samples[m.name]["kerneld"], m.higher_better)
        peer = summarize(bench.samples[m.name]["ipykernel"], m.higher_better) if m.peer else None
        r = ratio(m, kd, cold_peer if m.name == "create_pool_ms" else peer)
        metrics[m.name] = {"unit": m.unit, "kerneld": kd, "ipykernel": peer, "ratio": r}
        status, texts = evaluate(m, metrics[m.name])
        targets[m.name] = {"target": texts, "status": status}
    details = dict(bench.details)
    details["samples"] = {name: {sys_: len(v) for sys_, v in s.items()}
                          for name, s in bench.samples.items()}
    details["p99_meaning"] = ("for higher-is-better metrics (throughput, MB/s, max_idle_kernels) "
                              "p99 is the 1st percentile: the value 99 % of samples reach")
    return {"machine": machine, "metrics": metrics, "targets": targets, "details": details}


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def render_table(report: dict[str, Any]) -> str:
    head = ("metric", "unit", "kerneld p50", "p99", "ipykernel p50", "p99", "ratio", "target",
            "status")
    rows = [head]
    for name, entry in report["metrics"].items():
        kd, peer = entry["kerneld"] or {}, entry["ipykernel"] or {}
        t = report["targets"][name]
        label = name
        if name == "max_idle_kernels" and "EXTRAPOLATED" in str(
                report["details"].get("max_idle_kernels", {}).get("value_is", "")):
            label += " (extrapolated)"
        rows.append((label, entry["unit"], _fmt(kd.get("p50")), _fmt(kd.get("p99")),
                     _fmt(peer.get("p50")), _fmt(peer.get("p99")),
                     "—" if entry["ratio"] is None else f"{entry['ratio']:g}×",
                     ", ".join(t["target"]) or "—", "" if t["status"] == "n/a" else t["status"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        cells = [c.ljust(w) if j in (0, 1, 7, 8) else c.rjust(w)
                 for j, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    m = report["machine"]
    lines.append("")
    lines.append(f"machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, "
                 f"Linux {m['kernel']}, Python {m['python']} (runtime {m['runtime_python']}), "
                 f"kerneld {m['kerneld']}, ipykernel {m['ipykernel']}, jupyter_client "
                 f"{m['jupyter_client']}, {m['date']}, loadavg {m['loadavg_at_start']} → "
                 f"{m.get('loadavg_at_end')}")
    d = report["details"]
    lines.append(f"mode: {d['mode']}; kerneld side: {d['kerneld_side']}; "
                 "ratio = times better than ipykernel; create_pool ratio vs ipykernel cold "
                 "start; p99 of higher-is-better metrics = 1st percentile")
    curve = d.get("scale_curve")
    if curve and curve["points"]:
        lines.append("scale (kernels held: daemon RSS MiB, KiB per kernel, fds per kernel, "
                     "system MiB per kernel, creates/s since the previous point): " + "; ".join(
                         f"{p['kernels']}: {p['daemon_rss_mib']}, {p['daemon_rss_kib_per_kernel']}"
                         f", {p['fds_per_kernel']}, {p['system_mib_per_kernel']}, "
                         f"{p['create_per_s']}/s" for p in curve["points"])
                     + f"; destroy all {curve['destroy_all'].get('seconds')} s")
    for phase, error in d["errors"].items():
        lines.append(f"ERROR in {phase}: {error}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


async def _run(bench: Any) -> None:
    """Ctrl-C (asyncio.run) and SIGTERM both cancel this task: cleanup runs in `finally`s."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await bench.run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def run_and_report(make: Callable[[Reaper, str], Any], args: argparse.Namespace,
                   build: Callable[[Any, dict[str, Any]], dict[str, Any]],
                   render: Callable[[dict[str, Any]], str]) -> int:
    """One bench run, whatever its side: `make(reaper, workdir)` gives an object with
    `async run()` and `details`; `build(bench, machine)` its report, `render(report)` its
    table. Every process it starts is ended on exit, error, Ctrl-C or SIGTERM. Exit status:
    1 if a phase failed, 2 with --check if a target is missed."""
    reaper = Reaper()
    workdir = tempfile.mkdtemp(prefix="kb-", dir="/tmp")
    os.chmod(workdir, 0o755)
    reaper.dirs.append(workdir)
    t0 = time.perf_counter()
    bench = make(reaper, workdir)
    try:
        machine = machine_info()
        asyncio.run(_run(bench))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("kerneld bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - reported with the figures, after the cleanup
        bench.details["errors"]["run"] = f"{type(exc).__name__}: {exc}"
    finally:
        killed = reaper.kill_all()
        bench.details["killed_at_exit"] = killed   # processes that outlived their owner
        if killed:
            print(f"kerneld bench: killed leftover processes {killed}", file=sys.stderr)
    bench.details["elapsed_seconds"] = round(time.perf_counter() - t0, 1)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = build(bench, machine)
    print(render(report))
    print(f"elapsed: {bench.details['elapsed_seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    if bench.details["errors"]:
        return 1
    if args.check and any(t["status"] == "MISSED"
                          for t in report.get("targets", {}).values()):
        return 2
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kerneld bench", description="kerneld vs ipykernel 7 side by side on this machine "
        "(see docs/benchmarks.md). Default: the full run.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="routine run, under 60 s")
    group.add_argument("--smoke", action="store_true",
                       help="minimal counts, checks the harness only (figures are meaningless)")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE")
    parser.add_argument("--idle-kernels", type=int, metavar="N",
                        help="kernels to hold at once, measured, with the scale curve "
                             "(full: 3000; quick: 100, extrapolated to 20 GiB)")
    parser.add_argument("--embedded", action="store_true",
                        help="measure an in-process KernelManager instead of the daemon "
                             "(development stand-in; not the official figures)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 2 if a target is missed")
    parser.add_argument("--jupyter", action="store_true",
                        help="the Jupyter side instead: one jupyter_client driver against "
                             "ipykernel and the kerneld kernelspec (kerneld_bench/jupyter.py)")
    parser.add_argument("--hypha", action="store_true",
                        help="the Hypha side instead: round trips through a Hypha server and "
                             "`kerneld hypha` vs direct, creates/s over two hosts "
                             "(kerneld_bench/hypha.py; needs .venv-hypha)")
    parser.add_argument("--address", help=argparse.SUPPRESS)  # passed on by `kerneld --address`
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.address:
        print("kerneld bench: --address ignored: the bench starts and measures its own private "
              "daemons", file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.jupyter:
        from kerneld_bench import jupyter
        return jupyter.main(args, mode)
    if args.hypha:
        from kerneld_bench import hypha
        return hypha.main(args, mode)
    counts = MODES[mode]
    if args.idle_kernels:
        counts = Counts(**{**counts.__dict__, "idle_kernels": args.idle_kernels,
                           "extrapolate": False})
    return run_and_report(
        lambda reaper, workdir: Bench(counts, mode, reaper, workdir, args.embedded),
        args, build_report, render_table)
