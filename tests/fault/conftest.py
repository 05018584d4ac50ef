"""Fault tests: real daemons (confined, as deployed) whose processes are killed, starved or
sabotaged, and what the daemon then reports. Skipped, by probing, where the sandbox cannot run;
each test owns its daemon. Helpers: `_fault.py`; daemons: `tests/integration/_daemon.py`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
