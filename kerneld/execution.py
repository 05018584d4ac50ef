"""Executions as the manager tracks them, and the stream object `execute_stream` returns.

An `Execution` is created when a request is queued and finished exactly once: by the worker's
`Done`, or by the manager when the kernel dies, restarts, is terminated or the daemon stops
(`fail`). Whatever ends it, `outputs` holds every event in order and the stream sees the same
events, then ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kerneld.protocol import CommRequest, ExecutionResult, KernelEvent


class Execution:
    """One queued or running execution (manager-internal)."""

    def __init__(self, kernel_id: str, code: str, *, allow_stdin: bool, silent: bool,
                 store_history: bool, streaming: bool,
                 user_expressions: dict[str, str] | None = None,
                 comm: CommRequest | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.kernel_id, self.code = kernel_id, code
        self.allow_stdin, self.silent, self.store_history = allow_stdin, silent, store_history
        self.user_expressions = user_expressions
        # a front end's comm message (`send_comm`) queued in the FIFO instead of a cell: its
        # fields, sent with this execution's id when it starts
        self.comm = comm
        self.outputs: list[KernelEvent] = []
        self.has_result = False  # an execute_result event is among the outputs
        self.comm_bytes = 0  # of the comm messages seen (kernel.COMM_BYTES_PER_EXECUTION)
        self.queue: asyncio.Queue[KernelEvent | None] | None = (
            asyncio.Queue() if streaming else None)
        self.future: asyncio.Future[ExecutionResult] = (
            asyncio.get_running_loop().create_future())
        self.started: float | None = None     # wall clock (epoch seconds)
        self.started_mono: float | None = None
        self.stalled = False
        self.interrupted_at: float | None = None

    @property
    def done(self) -> bool:
        return self.future.done()

    def add(self, event: KernelEvent) -> None:
        self.outputs.append(event)
        if event.type == "execute_result":
            self.has_result = True
        if self.queue is not None:
            self.queue.put_nowait(event)

    def finish(self, status: str, execution_count: int | None = None,
               result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None, *,
               payload: list[dict[str, Any]] | None = None,
               user_expressions: dict[str, Any] | None = None) -> ExecutionResult:
        res = ExecutionResult(
            execution_id=self.id, kernel_id=self.kernel_id, status=status,
            execution_count=execution_count, result=result, error=error,
            outputs=list(self.outputs), started=self.started, finished=time.time(),
            payload=payload or [], user_expressions=user_expressions or {})
        if not self.future.done():
            self.future.set_result(res)
        if self.queue is not None:
            self.queue.put_nowait(None)
        return res

    def fail(self, ename: str, evalue: str, *, status: str = "error") -> None:
        """End this execution from the manager's side with an `execute_error`."""
        if self.done:
            return
        error = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.add(KernelEvent("execute_error", error, self.kernel_id, self.id))
        self.finish(status, None, None, error)

    def info(self, now_mono: float) -> dict[str, Any]:
        runtime = now_mono - self.started_mono if self.started_mono is not None else 0.0
        return {"id": self.id, "start_time": self.started, "runtime": runtime,
                "code": self.code, "is_stuck": self.stalled}


class ExecutionStream:
    """Async iterator over one execution's events; `result` is set once it ends."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self.execution_id = execution.id
        self.kernel_id = execution.kernel_id
        self.result: ExecutionResult | None = None

    def __aiter__(self) -> AsyncIterator[KernelEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[KernelEvent]:
        queue = self._execution.queue
        assert queue is not None
        while True:
            event = await queue.get()
            if event is None:
                break
            yield event
        self.result = await self._execution.future

    async def wait(self) -> ExecutionResult:
        """The final result (draining nothing: events stay available to the iterator)."""
        self.result = await self._execution.future
        return self.result
