"""systemd/kerneld.service, rendered by scripts/install-systemd.sh for this checkout, passes
`systemd-analyze verify` (which also checks that ExecStart's binary exists)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_rendered_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "kerneld.service"
    subprocess.run([str(ROOT / "scripts" / "install-systemd.sh"), "--output", str(unit)],
                   check=True, timeout=30)
    text = unit.read_text()
    assert f"ExecStart={ROOT}/.venv/bin/kerneld serve --config /etc/kerneld/kerneld.toml" in text
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings either


def test_unit_has_what_the_daemon_relies_on() -> None:
    text = (ROOT / "systemd" / "kerneld.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "KillMode=mixed",
                 "RuntimeDirectory=kerneld", "Delegate=yes", "WatchdogSec=30",
                 "Restart=on-failure", "RestartPreventExitStatus=78", "ProtectSystem=full",
                 "ProtectHome=no", "PrivateTmp=no", "NoNewPrivileges=yes"):
        assert f"\n{line}\n" in text, line
