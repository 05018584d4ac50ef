"""A fleet per test module: one real Hypha server on 127.0.0.1, two real confined kerneld
daemons, and a `kerneld hypha` process for each (clients kerneld-a and kerneld-b of the
workspace kerneld-fleet). Users are alice, bob, … with tokens of their own workspaces."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from _daemon import Daemon
from _fleet import CONFINED, Fleet, HyphaServer, fleet_token


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    server = HyphaServer()
    daemons = {name: Daemon(CONFINED) for name in ("kerneld-a", "kerneld-b")}
    made = Fleet(server, "", daemons)
    try:
        server.wait_ready()
        for d in daemons.values():
            d.wait_ready()
        made.token = asyncio.run(fleet_token(server))
        for name in daemons:
            made.attach(name)
        for proc in made.attached.values():
            proc.wait_log("registered service")
        yield made
    finally:
        for proc in made.attached.values():
            proc.close()
        for d in [*made.daemons.values(), *made.retired]:
            d.close()
        server.close()
