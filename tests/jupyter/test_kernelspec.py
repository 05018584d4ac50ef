"""`kerneld jupyter install | uninstall` and what `jupyter kernelspec list` (the real client,
from .venv-clients) makes of it; the adapter with no daemon to talk to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.integration._daemon import PYTHON, ROOT, free_port
from tests.jupyter.conftest import CLIENT_PYTHON


def kerneld_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "kerneld", *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=str(ROOT), env={**os.environ, **(env or {})})


def kernelspecs(prefix: Path) -> dict[str, dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
    env["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    env["JUPYTER_DATA_DIR"] = str(prefix / "nowhere")
    done = subprocess.run([str(CLIENT_PYTHON), "-m", "jupyter_client.kernelspecapp", "list",
                           "--json"], capture_output=True, text=True, timeout=60, env=env,
                          check=True)
    specs = json.loads(done.stdout)["kernelspecs"]
    return {name: spec for name, spec in specs.items() if name.startswith("kerneld-")}


def test_install_list_uninstall(tmp_path: Path) -> None:
    done = kerneld_cli("jupyter", "install", "--prefix", str(tmp_path))
    assert done.returncode == 0, done.stderr
    specs = kernelspecs(tmp_path)
    assert sorted(specs) == ["kerneld-data-science", "kerneld-default", "kerneld-networked"]
    for name, found in specs.items():
        spec = found["spec"]
        assert isinstance(spec, dict)
        profile = name.removeprefix("kerneld-")
        assert spec["display_name"] == f"Python 3 (kerneld: {profile})"
        assert spec["language"] == "python" and spec["interrupt_mode"] == "signal"
        assert spec["argv"] == [os.path.abspath(PYTHON), "-m", "kerneld.jupyter", "-f",
                                "{connection_file}", "--profile", profile]
        assert spec["metadata"] == {"debugger": False,
                                    "kerneld": {"profile": profile, "address": None}}
    foreign = tmp_path / "share" / "jupyter" / "kernels" / "kerneld-someone-else"
    foreign.mkdir()
    (foreign / "kernel.json").write_text(json.dumps({"argv": ["x"], "display_name": "x",
                                                     "language": "python"}))
    done = kerneld_cli("jupyter", "uninstall", "--prefix", str(tmp_path), "--profile",
                       "networked")
    assert done.returncode == 0 and "removed kerneld-networked" in done.stdout, done
    assert sorted(kernelspecs(tmp_path)) == ["kerneld-data-science", "kerneld-default",
                                             "kerneld-someone-else"]
    done = kerneld_cli("jupyter", "uninstall", "--prefix", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(kernelspecs(tmp_path)) == ["kerneld-someone-else"]  # not ours: kept


def test_profiles_address_and_locations(tmp_path: Path) -> None:
    done = kerneld_cli("jupyter", "install", "--user", "--profile", "trusted", "--profile",
                       "mine", "--address", "ipc:///srv/kd.sock",
                       env={"JUPYTER_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    kernels = tmp_path / "data" / "kernels"
    assert sorted(p.name for p in kernels.iterdir()) == ["kerneld-mine", "kerneld-trusted"]
    spec = json.loads((kernels / "kerneld-mine" / "kernel.json").read_text())
    assert spec["argv"][-4:] == ["--profile", "mine", "--address", "ipc:///srv/kd.sock"]
    both = kerneld_cli("jupyter", "install", "--user", "--sys-prefix")
    assert both.returncode == 2 and "not allowed with" in both.stderr, both
    bad = kerneld_cli("jupyter", "install", "--prefix", str(tmp_path), "--profile", "a/b")
    assert bad.returncode == 1 and "'a/b' cannot name a kernelspec" in bad.stderr, bad


def test_adapter_without_a_daemon_says_so(tmp_path: Path) -> None:
    ports = {f"{name}_port": free_port() for name in ("shell", "iopub", "stdin", "control", "hb")}
    conn = tmp_path / "kernel.json"
    conn.write_text(json.dumps({"ip": "127.0.0.1", "transport": "tcp", "key": "k",
                                "signature_scheme": "hmac-sha256", **ports}))
    address = f"ipc://{tmp_path}/no-daemon.sock"
    started = time.monotonic()
    done = subprocess.run([PYTHON, "-m", "kerneld.jupyter", "-f", str(conn), "--address",
                           address], capture_output=True, text=True, timeout=30, check=False,
                          cwd=str(ROOT))
    assert done.returncode == 1, done
    assert time.monotonic() - started < 10
    assert address in done.stderr and "kerneld serve" in done.stderr, done.stderr
    assert "never runs code outside" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "kerneld.jupyter", "-f",
                          str(tmp_path / "missing.json")], capture_output=True, text=True,
                         timeout=30, check=False, cwd=str(ROOT))
    assert bad.returncode == 2 and "cannot read the connection file" in bad.stderr, bad
