"""`kerneld bench --hypha --smoke` runs end to end (a Hypha server, two daemons, two attach
processes), writes its JSON and leaves no process behind. Figures of a smoke run are not
checked; the shape and the placement are."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest
from _fleet import PYTHON, ROOT, skip_unconfined

pytestmark = [pytest.mark.sandbox, skip_unconfined(), pytest.mark.timeout(180)]


def _ours() -> set[int]:
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "hypha.server" in line or "kerneld hypha" in line or " hypha --server-url" in line:
            found.add(proc.pid)
    return found


def test_bench_hypha_smoke(tmp_path: Path) -> None:
    before = _ours()
    out = tmp_path / "hypha.json"
    proc = subprocess.run([PYTHON, "-m", "kerneld", "bench", "--hypha", "--smoke", "--json",
                           str(out)], capture_output=True, text=True, timeout=170,
                          cwd=str(ROOT), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    for name in ("hypha_execute_ms", "hypha_stream_ms"):
        assert metrics[name]["hypha"]["p50"] > 0 and metrics[name]["direct"]["p50"] > 0
        assert metrics[name]["hypha_over_direct"] is not None
    assert metrics["hypha_create_per_s"]["hypha"]["p50"] > 0
    assert report["details"]["placement"] == {"kerneld-a": 2, "kerneld-b": 2}
    assert not report["details"]["errors"] and report["details"]["killed_at_exit"] == []
    assert "hypha_execute_ms" in proc.stdout
    assert _ours() - before == set()
