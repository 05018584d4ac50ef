"""Smoke test of the bench's Jupyter side (issue 13): `kerneld bench --jupyter --smoke` runs end
to end (a private confined daemon, the kerneld kernelspec installed into the bench's own
directory, ipykernel's kernelspec, one jupyter_client driver for both), writes JSON of the
main bench's shape, checks the kerneld kernel's confinement from the inside, and leaves no
kernel in the daemon and no process behind. Figures of a smoke run are not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests._host import sandbox_missing

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.append(str(ROOT / "bench"))  # the harness is in the checkout, not in the package
from kerneld_bench.jupyter import JUPYTER_METRICS

pytestmark = [pytest.mark.timeout(180), pytest.mark.sandbox,
              pytest.mark.skipif(sandbox_missing() is not None, reason=str(sandbox_missing()))]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, float]:
    pytest.importorskip("ipykernel")
    pytest.importorskip("jupyter_client")
    out = tmp_path_factory.mktemp("bench") / "out.json"
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "kerneld", "bench", "--jupyter", "--smoke",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=150, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, started


def test_jupyter_side_reports_every_metric_with_both_systems(
        smoke: tuple[dict, str, float]) -> None:
    report, stdout, _ = smoke
    assert {m.name for m in JUPYTER_METRICS} == set(report["metrics"])
    for name, entry in report["metrics"].items():
        assert set(entry) == {"unit", "kerneld", "ipykernel", "ratio"}, name
        for system in ("kerneld", "ipykernel"):
            assert set(entry[system]) == {"p50", "p99"}, (name, entry)
            assert entry[system]["p50"] > 0, (name, entry)
        assert isinstance(entry["ratio"], (int, float)), (name, entry)
        assert name in stdout
    assert report["targets"]["jupyter_start_ms"]["target"] == ["ratio≥10×"]
    assert report["targets"]["jupyter_rtt_ms"]["target"] == ["ratio≥3×"]
    for target in report["targets"].values():
        assert target["status"] in ("met", "MISSED", "n/a"), target
    assert not report["details"]["errors"]


def test_kerneld_kernelspec_kernel_was_confined_and_listed(
        smoke: tuple[dict, str, float]) -> None:
    details = smoke[0]["details"]
    seen = details["confinement"]
    assert seen["uid"] != 0 and seen["Seccomp"] == "2" and seen["NoNewPrivs"] == "1"
    assert seen["checkout_readable"] is False
    assert [k["profile"] for k in details["daemon_kernels_during_run"]] == ["default"]
    argv = details["kernelspecs"]["kerneld"]["argv"]
    assert argv[1:3] == ["-m", "kerneld.jupyter"] and "{connection_file}" in argv


def test_no_kernel_and_no_process_left_behind(smoke: tuple[dict, str, float]) -> None:
    report, _, started = smoke
    details = report["details"]
    assert details["kernels_left_in_daemon"] == []
    assert details["killed_at_exit"] == []
    workdir = details["workdir"]
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
