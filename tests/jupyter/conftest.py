"""Fixtures of the Jupyter interoperability tests: real clients against real confined kernels.

Reuse (any test module in tests/jupyter):

    def test_x(jupyter_kernel):          # session scope: one daemon for the whole directory
        jupyter_kernel.daemon             # tests.integration._daemon.Daemon, confine = true
        jupyter_kernel.env                # os.environ for client subprocesses: KERNELD_ADDRESS,
                                          # JUPYTER_PATH (the installed kernelspec), private
                                          # JUPYTER_DATA_DIR / CONFIG_DIR / RUNTIME_DIR, IPYTHONDIR
        jupyter_kernel.name               # "kerneld-default" (argv also pins --address)
        jupyter_kernel.prefix             # the `kerneld jupyter install --prefix` directory
        jupyter_kernel.kernels()          # the daemon's kernels (list_kernels)
        jupyter_kernel.expect_daemon_kernels(n)   # wait ≤ 15 s until the daemon has n kernels,
                                          # all with the `default` profile; AssertionError if not
        jupyter_kernel.plot_code          # a cell that displays a matplotlib figure (image/png)

`client_env(daemon, prefix, home)` builds such an env for a daemon of your own.

The clients (jupyter_client, jupyter_kernel_test, nbclient, papermill, ...) are not in the
daemon's `.venv`: they live in `.venv-clients` (tests/envs/jupyter-clients.txt, built by
scripts/setup-test-envs.sh) and run as subprocesses: `CLIENT_PYTHON`, and `run_inner()` runs a
pytest file of `clients/` under it and returns each inner test's outcome by name, so that the
outer test of the same name passes or fails with it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kerneld
from tests._host import sandbox_missing
from tests.integration._daemon import PYTHON, ROOT, Daemon

CLIENT_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
KERNEL_NAME = "kerneld-default"
PLOT_CODE = ("import matplotlib.pyplot as plt\n"
             "plt.plot([1, 4, 2, 3])\n"
             "plt.title('kerneld')\n"
             "plt.show()")

CONFINED = """
[daemon]
shutdown_grace = 1

[runtime]
preload = []
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.parent == here and not path.name.startswith("test_wire"):  # wire: pure
            item.add_marker(pytest.mark.sandbox)
            reason = sandbox_missing()
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclasses.dataclass
class JupyterKernel:
    daemon: Daemon
    env: dict[str, str]
    name: str
    prefix: Path
    plot_code: str = PLOT_CODE

    def kernels(self) -> list[dict[str, Any]]:
        with kerneld.connect(self.daemon.address) as client:
            return client.list_kernels()

    def expect_daemon_kernels(self, n: int, profile: str = "default",
                              timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            kernels = self.kernels()
            if len(kernels) == n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(kernels) == n, f"the daemon has {len(kernels)} kernels, want {n}: {kernels}"
        assert all(k.get("profile") == profile for k in kernels), kernels
        return kernels


def client_env(daemon: Daemon, prefix: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KERNELD_", "JUPYTER_", "PYTEST_"))}
    env.update({
        "KERNELD_ADDRESS": daemon.address,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1",
        "KERNELD_TEST_PYTHON": PYTHON,   # the daemon env's python, for `kerneld ls` and such
    })
    return env


@pytest.fixture(scope="session")
def jupyter_kernel() -> Iterator[JupyterKernel]:
    if not CLIENT_PYTHON.exists():
        pytest.fail(f"{CLIENT_PYTHON} is missing: build the clients' environment with "
                    "`bash scripts/setup-test-envs.sh` (`make test` does)")
    home = Path(tempfile.mkdtemp(prefix="kd-jupyter-"))
    prefix = home / "prefix"
    daemon = Daemon(CONFINED)
    try:
        daemon.wait_ready()
        done = subprocess.run(
            [PYTHON, "-m", "kerneld", "jupyter", "install", "--prefix", str(prefix),
             "--profile", "default", "--address", daemon.address],
            capture_output=True, text=True, timeout=60, check=False, cwd=str(ROOT))
        assert done.returncode == 0, done.stderr
        yield JupyterKernel(daemon, client_env(daemon, prefix, home), KERNEL_NAME, prefix)
    finally:
        daemon.close()
        subprocess.run(["rm", "-rf", str(home)], check=False)


@dataclasses.dataclass
class InnerRun:
    outcomes: dict[str, str]   # test name → "passed" | "failed: ..." | "skipped: ..."
    output: str

    def check(self, name: str) -> None:
        outcome = self.outcomes.get(name)
        assert outcome is not None, f"inner test {name} did not run:\n{self.output[-4000:]}"
        assert outcome == "passed", f"{name}: {outcome}\n{self.output[-6000:]}"


def run_inner(file: str, jupyter: JupyterKernel, *args: str, timeout: float = 300) -> InnerRun:
    """Run `clients/<file>` with pytest in `.venv-clients`; every inner test's outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [str(CLIENT_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-c", str(CLIENTS_DIR / "pytest.ini"), "--rootdir", str(CLIENTS_DIR),
               "--confcutdir", str(CLIENTS_DIR), f"--junitxml={xml}",
               str(CLIENTS_DIR / file), *args]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**jupyter.env, "KERNELD_JUPYTER_KERNEL": jupyter.name},
                                  cwd=tmp, check=False)
            output = done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            output = f"timed out after {timeout} s\n{exc.stdout!r}\n{exc.stderr!r}"
        outcomes: dict[str, str] = {}
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                name = case.get("name", "?")
                outcome = "passed"
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome = f"failed: {child.get('message', '')}\n{child.text or ''}"
                    elif child.tag == "skipped":
                        outcome = f"skipped: {child.get('message', '')}"
                outcomes[name] = outcome
    return InnerRun(outcomes, output)
