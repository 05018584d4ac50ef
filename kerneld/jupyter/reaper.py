"""The reaper: a forked child that destroys the adapter's kernel when the adapter dies.

Process model: `start(address, kernel_id)` forks before the adapter makes any ZeroMQ context
or thread (fork-safe); the child starts its own session (`setsid`), so the SIGINT a Jupyter
client sends to the adapter's process group for an interrupt, and the group kill of a
shutdown, do not reach it. It keeps the read end of a pipe whose write end only the adapter
holds.

State, written by the adapter on the pipe: `c` once the kernel exists, `d` once the adapter
destroyed it itself (a clean exit).

Liveness: the pipe reads end-of-file when the adapter exits in any way, SIGKILL included (the
kernel closes the fd); no polling. Then, unless `d` came, the reaper connects to the daemon and
destroys the kernel. If `c` never came the create may still be in flight, so it keeps
looking for the kernel for `_CREATE_GRACE` seconds.

Failure modes: a daemon that is gone has already taken the kernel with it: the reaper gives up
after its connection timeout. It never raises: it logs one line to stderr and exits.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["start"]

_CREATE_GRACE = 15.0  # seconds a create in flight at the adapter's death may still take


def start(address: str, kernel_id: str) -> int:
    """Fork the reaper; return the write end of its pipe (the adapter keeps it open)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reaper
        code = 0
        try:
            os.close(write)
            os.setsid()
            _wait_and_reap(read, address, kernel_id)
        except BaseException as exc:  # noqa: BLE001  (the child must end here, whatever happens)
            print(f"kerneld.jupyter reaper: kernel {kernel_id}: {exc}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    os.close(read)
    os.set_inheritable(write, False)
    return write


def _wait_and_reap(read: int, address: str, kernel_id: str) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)  # keep stderr: the one line of a failure
    said = b""
    while chunk := os.read(read, 64):
        said += chunk
    if b"d" in said:
        return
    from kerneld.client import Client
    from kerneld.errors import KernelNotFound
    deadline = time.monotonic() + (0 if b"c" in said else _CREATE_GRACE)
    with Client(address, connect_timeout=3.0, timeout=10.0) as client:
        while True:
            try:
                client.destroy_kernel(kernel_id)
                return
            except KernelNotFound:
                if time.monotonic() >= deadline:
                    return
            time.sleep(0.25)


def tell(fd: int, what: bytes) -> None:
    """Write `c` (created) or `d` (destroyed) to the reaper; a reaper gone is no error."""
    try:
        os.write(fd, what)
    except OSError:
        pass
