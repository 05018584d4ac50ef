"""Import weight (issue 12): the error tree, the wire schema, a client-only program and the
command line's own modules load neither IPython, nor ZeroMQ, nor psutil, nor the sandbox — only
the embedded manager needs them, and `kerneld/__init__` loads its names lazily (PEP 562).
ZeroMQ is allowed once a client is actually made (it talks over it); IPython never is, outside
the manager.

Each case runs in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
HEAVY = ("IPython", "zmq", "psutil", "sandbox")
NO_DAEMON = "ipc:///nonexistent-kerneld-dir/kerneld.sock"

# statement -> the heavy packages it may load
CASES = {
    "import kerneld.errors": (),
    "import kerneld; kerneld.connect": (),
    "import kerneld; kerneld.connect_async; kerneld.__version__": (),
    "import kerneld.protocol": (),
    "import kerneld; kerneld.KernelError, kerneld.ExecutionResult, kerneld.KernelEvent": (),
    "import kerneld.cli": (),  # `kerneld --help`, `kerneld version`, before any command runs
    f"import kerneld\ntry:\n    kerneld.connect({NO_DAEMON!r})\n"
    "except kerneld.DaemonUnavailable:\n    pass": ("zmq",),
    f"import kerneld; kerneld.connect_async({NO_DAEMON!r})": ("zmq",),
}

_REPORT = "\nimport json, sys; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"


def loaded_packages(statement: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", statement + _REPORT], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


@pytest.mark.parametrize("statement", list(CASES))
def test_light_imports_load_nothing_heavy(statement: str) -> None:
    heavy = loaded_packages(statement) & set(HEAVY)
    assert heavy <= set(CASES[statement]), f"{statement!r} loaded {sorted(heavy)}"


def test_the_manager_still_loads_what_it_needs() -> None:
    """The check above is meaningful: the names it looks for are the real package names.
    IPython comes with the in-process backend, imported by the manager for the first
    in_process kernel only."""
    assert {"psutil", "sandbox", "zmq"} <= loaded_packages(
        "import kerneld; kerneld.KernelManager")
    assert "IPython" in loaded_packages("import kerneld.backends.inprocess")
