"""Jupyter comms in a kernel: the `comm` package's hooks, implemented over the engine's events.

Libraries that talk to a front end (ipywidgets, bqplot, plotly's FigureWidget, …) do it through
the `comm` package: `comm.create_comm(...)` gives them a Comm whose `publish_msg` must reach
the front end, and `comm.get_comm_manager()` the CommManager where they register targets and
where the front end's comm_open / comm_msg / comm_close are delivered. ipykernel installs both
hooks when it starts; a kerneld kernel installs them here (`install`), so that:

- what a kernel-side comm publishes becomes an event of the engine (`comm_open`, `comm_msg`,
  `comm_close`; data = the Jupyter content, plus `metadata` and `buffers`: a list of bytes);
- the front end's messages are run by `deliver` (the engine's `handle_comm`) through the
  engine's own CommManager, as ipykernel's shell runs them.

Which engine: a worker process has exactly one. In process, several kernels share the one
`comm` module: the engine is the one serving on the calling thread (each engine registers its
serving thread, `attach`), else the one whose shell is IPython's current instance (the kernel
serving a request now; in a worker, always its only engine). A comm created where there is no
engine at all (a thread of the host program) is the package's DummyComm, which sends nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import comm
from comm.base_comm import BaseComm, CommManager
from IPython.core.interactiveshell import InteractiveShell

COMM_LOG = logging.getLogger("Comm")  # the comm package's logger (handler failures)
MSG_TYPES = ("comm_open", "comm_msg", "comm_close")

Publish = Callable[[str, dict[str, Any]], None]


class KernelComm(BaseComm):
    """A kernel-side comm whose messages are events of its kernel (`publish`)."""

    def __init__(self, *args: Any, publish: Publish, **kwargs: Any) -> None:
        self._publish = publish  # before BaseComm.__init__: a primary comm opens at once
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type: str, data: dict[str, Any] | None = None,
                    metadata: dict[str, Any] | None = None,
                    buffers: list[Any] | None = None, **keys: Any) -> None:
        """As ipykernel's Comm: content = {data, comm_id, **keys} (target_name and
        target_module for comm_open); the event's data is that content plus the message's
        `metadata` and its `buffers`, each as bytes (memoryviews, bytearrays and numpy arrays
        are copied: the event outlives them)."""
        content = {"data": {} if data is None else data, "comm_id": self.comm_id, **keys,
                   "metadata": {} if metadata is None else metadata,
                   "buffers": [bytes(b) for b in buffers or ()]}
        self._publish(msg_type, content)


class Comms:
    """One engine's comms: its CommManager and the messages in and out."""

    def __init__(self, publish: Publish) -> None:
        self.manager = CommManager()
        self.publish = publish

    def create(self, *args: Any, **kwargs: Any) -> KernelComm:
        return KernelComm(*args, publish=self.publish, **kwargs)

    def info(self, target_name: str | None = None) -> dict[str, Any]:
        """Jupyter's comm_info_reply content (as ipykernel: every open comm, or those of one
        target)."""
        comms = {cid: {"target_name": c.target_name} for cid, c in self.manager.comms.items()
                 if target_name is None or c.target_name == target_name}
        return {"status": "ok", "comms": comms}

    def deliver(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any],
                buffers: list[bytes]) -> BaseException | None:
        """Run a front end's comm message through the CommManager, as ipykernel does; returns
        the exception a handler raised (the CommManager logs and swallows it: caught here
        from its log record), or None."""
        if msg_type not in MSG_TYPES:
            raise ValueError(f"unknown comm message type {msg_type!r} "
                             f"(one of {', '.join(MSG_TYPES)})")
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": "", "username": "",
                  "date": dt.datetime.now(dt.UTC).isoformat(), "version": "5.3"}
        msg = {"header": header, "msg_id": msg_id, "msg_type": msg_type, "parent_header": {},
               "metadata": metadata, "content": content, "buffers": buffers}
        caught = _Caught()
        COMM_LOG.addHandler(caught)
        propagate, COMM_LOG.propagate = COMM_LOG.propagate, False
        try:
            getattr(self.manager, msg_type)(None, None, msg)
        finally:
            COMM_LOG.propagate = propagate
            COMM_LOG.removeHandler(caught)
        return caught.error


class _Caught(logging.Handler):
    """Keeps the first exception logged by the comm package while a message is handled."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.error is None and record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]


_BY_THREAD: dict[int, Comms] = {}


def attach(comms: Comms) -> None:
    """`comms` serve the calling thread (the thread that runs its engine's requests)."""
    _BY_THREAD[threading.get_ident()] = comms


def detach(comms: Comms) -> None:
    if _BY_THREAD.get(threading.get_ident()) is comms:
        del _BY_THREAD[threading.get_ident()]


def current() -> Comms | None:
    """The comms of the engine this call belongs to (see the module docstring)."""
    found = _BY_THREAD.get(threading.get_ident())
    if found is None:
        found = getattr(InteractiveShell._instance, "kerneld_comms", None)
    return found


def _create_comm(*args: Any, **kwargs: Any) -> BaseComm:
    comms = current()
    if comms is None:
        return comm.DummyComm(*args, **kwargs)
    return comms.create(*args, **kwargs)


def _get_comm_manager() -> CommManager:
    comms = current()
    if comms is None:
        return comm._get_comm_manager()  # the package's own default manager
    return comms.manager


def install() -> None:
    """Make the `comm` package's hooks kerneld's (idempotent)."""
    comm.create_comm = _create_comm
    comm.get_comm_manager = _get_comm_manager
