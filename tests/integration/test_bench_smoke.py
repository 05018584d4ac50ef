"""Smoke test of the benchmark harness (issue 6): `kerneld bench --smoke` runs end to end
against a real daemon and ipykernel, writes JSON of the agreed shape and leaves no process
behind. The figures of a smoke run are meaningless and are not checked; benchmarks are not
timed tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import sandbox
from kerneld.config import ManagerConfig

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.append(str(ROOT / "bench"))  # the harness is in the checkout, not in the package
from kerneld_bench import METRICS

RUNTIME = ManagerConfig().runtime_python
FEATURES = sandbox.probe()
REQUIRED = ("create_cold_ms", "create_pool_ms", "rtt_ms", "throughput_1x1_per_s",
            "throughput_8x8_per_s", "stream_mb_per_s", "stream_rss_growth_mib", "idle_uss_mib",
            "idle_pss_mib", "max_idle_kernels", "sandbox_overhead_pct")
MACHINE = ("cpu_model", "cores", "memory_gib", "kernel", "python", "runtime_python", "kerneld",
           "ipykernel", "jupyter_client", "date")

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the daemon confines kernels)"),
    pytest.mark.skipif(not os.access(RUNTIME, os.X_OK), reason=f"no worker runtime at {RUNTIME}"),
    pytest.mark.skipif(not FEATURES.seccomp or FEATURES.landlock_abi < 1,
                       reason="host lacks seccomp or Landlock"),
    pytest.mark.skipif(bool(sandbox.check(sandbox.Policy(uid=64000, gid=64000), FEATURES)),
                       reason="host cannot enforce the default policy"),
]


def _is_pair(value: object) -> bool:
    return (isinstance(value, dict) and set(value) == {"p50", "p99"}
            and all(isinstance(v, (int, float)) for v in value.values()))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, float]:
    pytest.importorskip("ipykernel")
    pytest.importorskip("jupyter_client")
    out = tmp_path_factory.mktemp("bench") / "out.json"
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "kerneld", "bench", "--smoke", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=200,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, started


def test_json_has_every_metric_with_the_agreed_shape(smoke: tuple[dict, str, float]) -> None:
    report, _, _ = smoke
    assert {"machine", "metrics"} <= set(report)
    metrics = report["metrics"]
    assert set(REQUIRED) <= set(metrics)
    assert {m.name for m in METRICS} == set(metrics)
    for name, entry in metrics.items():
        assert set(entry) == {"unit", "kerneld", "ipykernel", "ratio"}, name
        assert isinstance(entry["unit"], str) and entry["unit"], name
        assert _is_pair(entry["kerneld"]), (name, entry)
        assert entry["ipykernel"] is None or _is_pair(entry["ipykernel"]), (name, entry)
        assert entry["ratio"] is None or isinstance(entry["ratio"], (int, float)), (name, entry)
    for name in ("create_cold_ms", "rtt_ms", "throughput_1x1_per_s", "throughput_8x8_per_s",
                 "stream_mb_per_s", "idle_uss_mib", "idle_pss_mib"):
        assert _is_pair(metrics[name]["ipykernel"]), name
        assert isinstance(metrics[name]["ratio"], (int, float)), name


def test_machine_and_targets_are_reported(smoke: tuple[dict, str, float]) -> None:
    report, stdout, _ = smoke
    assert set(MACHINE) <= set(report["machine"])
    assert report["details"]["kerneld_side"] == "daemon"
    assert report["details"]["confinement"]["Seccomp"] == "2"
    assert not report["details"]["errors"]
    for name, target in report["targets"].items():
        assert target["status"] in ("met", "MISSED", "n/a"), (name, target)
    header = stdout.splitlines()[0].split()
    assert header[:3] == ["metric", "unit", "kerneld"] and "status" in header
    for metric in METRICS:
        assert metric.name in stdout


def test_no_process_left_behind(smoke: tuple[dict, str, float]) -> None:
    report, _, started = smoke
    # every daemon, zygote, init and worker the bench saw had ended before its final sweep
    assert report["details"]["killed_at_exit"] == []
    workdir = report["details"]["workdir"]
    assert not os.path.exists(workdir)
    leftovers = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            if proc.info["create_time"] >= started - 1 and any(
                    workdir in arg for arg in proc.info["cmdline"] or ()):
                leftovers.append((proc.pid, proc.info["cmdline"]))
        except psutil.Error:
            pass
    assert not leftovers
