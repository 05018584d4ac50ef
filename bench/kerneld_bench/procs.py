"""Every process the bench starts is recorded here and ended, whatever happens."""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import signal
import subprocess
import threading
from typing import Any, Self

import psutil

from kerneld_bench.metrics import MiB

# --------------------------------------------------------------------------- processes we own


class Reaper:
    """Every process the bench starts, so that it can end them whatever happens."""

    def __init__(self) -> None:
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.procs: dict[int, psutil.Process] = {}
        self.dirs: list[str] = []

    def track(self, pid: int | None) -> None:
        if pid and pid not in self.procs:
            try:
                self.procs[pid] = psutil.Process(pid)
            except psutil.Error:
                pass

    def alive(self, pid: int) -> bool:
        proc = self.procs.get(pid)
        try:
            return proc is not None and proc.is_running() and \
                proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def track_tree(self, pid: int) -> None:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                self.procs.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def stop_daemon(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            self.track_tree(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if proc in self.daemons:
            self.daemons.remove(proc)

    def kill_all(self) -> list[int]:
        """End everything still alive; returns the pids that had to be killed."""
        for proc in list(self.daemons):
            self.stop_daemon(proc)
        killed = []
        for pid, proc in list(self.procs.items()):
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.kill()
                    killed.append(pid)
            except psutil.Error:
                pass
        self.procs.clear()
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)
        return killed


class ProcTable:
    """One snapshot of the process tree (parent → children), so that finding the processes of
    hundreds of kernels costs one scan of /proc, not one per kernel."""

    def __init__(self) -> None:
        self.children: dict[int, list[int]] = {}
        for proc in psutil.process_iter(["ppid"]):
            self.children.setdefault(proc.info["ppid"] or 0, []).append(proc.pid)
        self.parent = {c: p for p, cs in self.children.items() for c in cs}

    def descendants(self, pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            kids = self.children.get(todo.pop(), [])
            out.extend(kids)
            todo.extend(kids)
        return out

    def kernel(self, pid: int) -> list[psutil.Process]:
        """A kerneld worker and every process of its kernel: all processes in its PID namespace
        (its init, e.g. kerneld-init, is a sibling under the zygote) and their descendants."""
        members = {pid}
        with contextlib.suppress(OSError):
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            for sibling in self.children.get(self.parent.get(pid, -1), []):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{sibling}/ns/pid") == ns:
                        members.add(sibling)
        members.update([d for member in members for d in self.descendants(member)])
        procs = []
        for member in sorted(members):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(member))
        return procs


def tree_memory(pid: int, procs: list[psutil.Process] | None = None
                ) -> tuple[float, float, float]:
    """(USS, PSS, RSS) in MiB of a process and all its descendants (or of `procs`)."""
    if procs is None:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    uss = pss = rss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        uss, pss, rss = uss + info.uss, pss + info.pss, rss + info.rss
    return uss / MiB, pss / MiB, rss / MiB


class RssSampler:
    """Samples one process's RSS every `interval` seconds on a thread; `peak` in bytes."""

    def __init__(self, pid: int, interval: float = 0.003) -> None:
        self.proc, self.interval = psutil.Process(pid), interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
