"""The request → engine loop, written once for both ways a kernel runs.

Process model: runs on the thread that owns the engine — a worker's main thread
(`kerneld.runtime.worker`) or an in-process kernel's own thread (`kerneld.backends.inprocess`).
What differs between the two (where requests come from, where output and replies go, how
stdout/stderr are captured, what must hold around a request) is the `Channel` the loop is
given; what a request means is decided here only:

- `Execute` runs one cell; its output belongs to that execution (`Channel.begin`), and it ends
  with exactly one `Done`, whatever happened: an interrupt that arrived outside IPython's own
  handler and a failure of IPython itself are that cell's error, never the kernel's end. The
  value of the cell's last expression travels inside `Done`, not as an `Output` of its own
  (one message less per cell; the record emits the `execute_result` event from it).
- `CommRequest` (a front end's comm_open / comm_msg / comm_close) runs like a cell: queued
  with them, its handler's output and messages belong to its `exec_id`, it ends with a `Done`
  (status "error" with the error content if a handler raised; no execution count).
- `Complete` / `Inspect` / `IsComplete` / `History` / `CommInfo` are answered with an
  `Answer`, IPython's failures included (`answered`).
- Comm messages the kernel sends while no execution runs (from a thread, between cells) are
  sent as an `Output` with exec_id "": the manager gives them to the kernel's listeners, not
  to any execution. Every other event outside an execution is dropped, as before.
- `Activate` sets the kernel's environment; `Shutdown` ends the loop.
- While a cell waits in `input()`, the `InputReply` answers it; requests that arrive meanwhile
  are served after the cell, in their order.

`OutputCap` is the one rule for the profile's `limits.output`: each execution may write that
many bytes of stdout/stderr, the rest is dropped with one notice.
"""

from __future__ import annotations

import collections
from contextlib import AbstractContextManager
from typing import Any, Protocol

from kerneld import protocol as p
from kerneld.runtime.engine import Engine, Outcome, answered, failure

# the error of a cell whose KeyboardInterrupt arrived outside IPython's own handler (e.g. just
# before the cell's code started): IPython reported nothing, so the loop says what happened
INTERRUPTED: dict[str, Any] = {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []}


class Channel(Protocol):
    """The engine's host: requests in, messages out, captured output."""

    def receive(self) -> Any:
        """The next request (blocks); None for one that could not be read."""

    def poll(self) -> Any:
        """A request that arrived while a cell waits in input(), or None after a moment
        (so that other threads get their turn and an interrupt can land)."""

    def serving(self) -> AbstractContextManager[Any]:
        """What holds around each request (in process: the shared lock, the kernel's
        environment, its shell as IPython's instance)."""

    def begin(self, exec_id: str, output_limit: int) -> None:
        """A cell starts: from now on its output belongs to `exec_id`."""

    def cell_ended(self) -> None:
        """The cell's code returned or raised (the execution is not finished yet)."""

    def flush(self) -> None:
        """Send the cell's captured output written so far."""

    def publish(self, msg: p.Output) -> None:
        """Send `msg` after every output written before it."""

    def finish(self, done: p.Done) -> None:
        """Send the rest of the cell's output, then `done`; output is nobody's from now on."""

    def answer(self, msg: p.Answer) -> None:
        """Send the answer to a Complete/Inspect/IsComplete."""

    def activate(self, env: dict[str, str]) -> None:
        """From now on the kernel's code sees `env` as its environment."""


class Loop:
    """Serves one engine's requests, one at a time, on the calling thread (`run`)."""

    def __init__(self, engine: Engine, channel: Channel) -> None:
        self.engine, self.channel = engine, channel
        self.exec_id: str | None = None
        self.executing = False  # a cell's code runs: only now may an interrupt raise in it
        self.later: collections.deque[Any] = collections.deque()  # arrived during input()

    def run(self) -> None:
        """Serve until Shutdown."""
        self.engine.attach(self._emit, self.channel.flush, self._request_input)
        try:
            self._serve()
        finally:
            self.engine.detach()

    def _serve(self) -> None:
        channel = self.channel
        while True:
            try:
                msg = self.later.popleft() if self.later else channel.receive()
                if isinstance(msg, p.Shutdown):
                    return
                with channel.serving():
                    reply = self._handle(msg)
                # only now, with what `serving` held around the request released
                if isinstance(reply, p.Done):
                    channel.finish(reply)
                elif reply is not None:
                    channel.answer(reply)
            except KeyboardInterrupt:  # in process: an interrupt that landed after its cell
                continue

    def _handle(self, msg: Any) -> p.Done | p.Answer | None:
        engine = self.engine
        if isinstance(msg, p.Execute):
            return self._execute(msg)
        if isinstance(msg, p.CommRequest):
            return self._comm(msg)
        if isinstance(msg, p.Complete):
            return p.Answer(msg.req_id, answered(engine.complete, msg.code, msg.cursor_pos))
        if isinstance(msg, p.Inspect):
            return p.Answer(msg.req_id, answered(engine.inspect, msg.code, msg.cursor_pos,
                                                 msg.detail_level))
        if isinstance(msg, p.IsComplete):
            return p.Answer(msg.req_id, answered(engine.is_complete, msg.code))
        if isinstance(msg, p.History):
            return p.Answer(msg.req_id, answered(
                engine.history, msg.hist_access_type, msg.output, msg.raw, msg.session,
                msg.start, msg.stop, msg.n, msg.pattern, msg.unique))
        if isinstance(msg, p.CommInfo):
            return p.Answer(msg.req_id, answered(engine.comm_info, msg.target_name))
        if isinstance(msg, p.Activate):
            self.channel.activate(msg.env)
        return None  # an InputReply nobody waits for, or a request that could not be read

    def _execute(self, msg: p.Execute) -> p.Done:
        self.exec_id = msg.exec_id
        self.channel.begin(msg.exec_id, msg.output_limit)
        try:
            self.executing = True
            try:
                out = self.engine.execute(
                    msg.code, silent=msg.silent, store_history=msg.store_history,
                    allow_stdin=msg.allow_stdin, user_expressions=msg.user_expressions)
            finally:
                self.executing = False
                self.channel.cell_ended()
        except KeyboardInterrupt:  # arrived outside IPython's own handler
            error = dict(INTERRUPTED)
            self._emit("execute_error", error)
            out = Outcome("error", None, None, error, [], {})
        except Exception as exc:  # noqa: BLE001  (IPython itself failed: this cell's error,
            error = failure(exc)  # not the kernel's end)
            self._emit("execute_error", error)
            out = Outcome("error", None, None, error, [], {})
        self.exec_id = None
        return p.Done(msg.exec_id, out.status, out.execution_count, out.result, out.error,
                      payload=out.payload, user_expressions=out.user_expressions)

    def _comm(self, msg: p.CommRequest) -> p.Done:
        """A front end's comm message, run as an execution (interruptible like a cell)."""
        self.exec_id = msg.exec_id
        self.channel.begin(msg.exec_id, msg.output_limit)
        try:
            self.executing = True
            try:
                error = self.engine.handle_comm(msg.msg_type, msg.content, msg.metadata,
                                                msg.buffers)
            finally:
                self.executing = False
                self.channel.cell_ended()
        except KeyboardInterrupt:
            error = dict(INTERRUPTED)
            self._emit("execute_error", error)
        except Exception as exc:  # noqa: BLE001  (a malformed message: this request's error)
            error = failure(exc)
            self._emit("execute_error", error)
        self.exec_id = None
        return p.Done(msg.exec_id, "ok" if error is None else "error", None, None, error)

    def _emit(self, type_: str, data: dict[str, Any]) -> None:
        exec_id = self.exec_id
        if exec_id is not None:
            if type_ != "execute_result":  # that one rides in Done
                self.channel.publish(p.Output(exec_id, type_, data))
        elif type_ in p.COMM_EVENTS:  # sent outside any execution: the kernel's listeners'
            self.channel.publish(p.Output("", type_, data))

    def _request_input(self, prompt: str, password: bool) -> str:
        """`input()` in a cell: ask the client, wait for its InputReply."""
        self.channel.flush()  # the prompt's own lines come first
        self._emit("input_request", {"prompt": prompt, "password": password})
        while True:
            msg = self.channel.poll()
            if isinstance(msg, p.InputReply):
                return msg.value
            if msg is not None:
                self.later.append(msg)


class OutputCap:
    """One execution's share of the profile's `limits.output` (0: unlimited)."""

    def __init__(self) -> None:
        self.limit = 0
        self.written = 0
        self.truncated = False

    def reset(self, limit: int) -> None:
        """A new execution, allowed `limit` bytes."""
        self.limit, self.written, self.truncated = limit, 0, False

    def admit(self, text: str, size: int) -> str | None:
        """What to keep of `text` (`size` bytes written): all of it within the limit, its head
        when it crosses the limit (`truncated` is then set: add `notice()`), None past it."""
        if not self.limit:
            return text
        if self.truncated:
            return None
        if self.written + size > self.limit:
            text = text[: max(0, self.limit - self.written)]
            self.truncated = True
        self.written += size
        return text

    def notice(self) -> str:
        """The one stderr line that says the output was cut."""
        return (f"\n[kerneld] output truncated: this execution wrote more than {self.limit} "
                "bytes (profile limits.output); further output is discarded\n")
