"""The execution engine: one IPython shell, Jupyter-shaped events out, no ZeroMQ inside.

Process model: runs in a worker (one engine per process, created and warmed in the zygote before
the fork) or on a dedicated thread of the caller's interpreter (IN_PROCESS mode).

What it turns into events (all through the `emit(type, data)` callback it is given):
- the last expression of a cell → `execute_result` (IPython's display hook);
- `display()` / `update_display()` / `clear_output()` → `display_data` / `update_display_data`
  / `clear_output` (IPython's display publisher);
- a Python exception, a syntax error or an interrupt → `execute_error` with plain-text
  traceback lines;
- `input()` / `getpass()` → `input_request`, answered through `request_input` (the answer
  `EOF` = "\x04" raises EOFError, as in ipykernel: how a client says its stdin ended), or a
  clear `StdinNotImplementedError` when the caller did not allow stdin (as ipykernel does);
- what kernel-side comms publish → `comm_open` / `comm_msg` / `comm_close`
  (`kerneld.runtime.comms`); a front end's comm messages are run by `handle_comm`.
What it returns with a cell (`Outcome`), as ipykernel's execute_reply has it: the payloads
IPython's pager (`obj?`, `obj??`, `%pdoc`…) and `set_next_input` wrote (ipykernel's
`payloadpage`), and the values of the request's `user_expressions`. It keeps the kernel's
input/output history, bounded and in memory (`kerneld.runtime.history`), for `history`.
Text written to stdout/stderr is *not* handled here: the host of the engine captures it
(fd-level pipes in a worker, a thread-aware proxy in process), because only it knows the fds.

State: the shell's namespace persists across `execute` calls; `execution_count` is IPython's.
"""

from __future__ import annotations

import base64
import builtins
import getpass
import itertools
import os
import re
import subprocess
import sys
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

from IPython.core.completer import provisionalcompleter, rectify_completions
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import StdinNotImplementedError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.tokenutil import token_at_cursor
from traitlets import Type
from traitlets.config import Config

from kerneld.runtime import comms
from kerneld.runtime.history import KeptHistory

Emit = Callable[[str, dict[str, Any]], None]
EOF = "\x04"  # an input_reply of this value: the client's stdin ended (Jupyter's convention)
RequestInput = Callable[[str, bool], str]


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Binary mime payloads (PNG, JPEG, PDF) travel base64-encoded, as in Jupyter."""
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            value = base64.b64encode(bytes(value)).decode("ascii")
        out[mime] = value
    return out


class _Publisher(DisplayPublisher):  # type: ignore[misc]
    """Routes display()/update_display()/clear_output() to the engine's emit callback."""

    engine: Engine

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None,
                source: Any = None, *, transient: dict[str, Any] | None = None,
                update: bool = False, **_: Any) -> None:
        self.engine.flush_streams()
        self.engine.emit("update_display_data" if update else "display_data", {
            "data": _jsonable(data), "metadata": metadata or {}, "transient": transient or {},
        })

    def clear_output(self, wait: bool = False) -> None:
        self.engine.flush_streams()
        self.engine.emit("clear_output", {"wait": bool(wait)})


class _DisplayHook(DisplayHook):  # type: ignore[misc]
    """Turns the value of a cell's last expression into `execute_result`."""

    engine: Engine

    def start_displayhook(self) -> None:
        self._data: dict[str, Any] = {}
        self._metadata: dict[str, Any] = {}

    def write_output_prompt(self) -> None:
        pass

    def quiet(self) -> bool:
        """IPython tokenizes the whole cell to look for a trailing `;` (a third of a `1+1`
        execution); a cell without any `;` cannot end with one."""
        try:
            cell = self.shell.history_manager.input_hist_parsed[-1]
        except IndexError:
            return False
        return ";" in cell and bool(self.semicolon_at_end_of_expression(cell))

    def compute_format_data(self, result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """`1+1` fast path: IPython runs ten formatters for an int; for exact int/str/bool
        with no user-registered formatter the outcome is just `repr` (a unit test compares)."""
        if type(result) in _FAST_TYPES and self.engine.formatters_untouched(type(result)):
            try:
                return {"text/plain": repr(result)}, {}
            except ValueError:  # e.g. int too large to convert: let IPython report it
                pass
        return super().compute_format_data(result)  # type: ignore[no-any-return]

    def write_format_data(self, format_dict: dict[str, Any],
                          md_dict: dict[str, Any] | None = None) -> None:
        self._data = _jsonable(format_dict)
        self._metadata = md_dict or {}

    def finish_displayhook(self) -> None:
        if not self._data:
            return
        self.engine.flush_streams()
        content = {"execution_count": self.prompt_count, "data": self._data,
                   "metadata": self._metadata}
        self.engine.last_result = content
        self.engine.emit("execute_result", content)


# What IPython's static input transformations react to (magics, shell escapes, help, pasted
# prompts, autocall escapes at a line start); a cell with none of it, starting with a
# non-blank character, comes out of them unchanged. Deliberately broader than needed
# (`!=` or `%` in a string take the full path): a false match only costs time.
_SPECIAL = re.compile(r"[%!?]|>>>|\.\.\.|In \[|^[ \t]*[,;/]", re.MULTILINE)


class _Shell(InteractiveShell):  # type: ignore[misc]
    """IPython's shell with kerneld's display hook and publisher built in (as ipykernel's
    ZMQInteractiveShell does), so `sys.displayhook` swaps use them too."""

    displayhook_class = Type(_DisplayHook)
    display_pub_class = Type(_Publisher)
    kerneld_comms: comms.Comms | None = None  # its engine's (comms.current finds them here)

    def init_instance_attrs(self) -> None:
        super().init_instance_attrs()
        self._stock_transforms: tuple[list[Any], ...] | None = None

    def init_history(self) -> None:
        """The bounded in-memory history (`KeptHistory`) instead of IPython's sqlite one."""
        self.history_manager = KeptHistory(shell=self, parent=self)
        self.configurables.append(self.history_manager)  # type: ignore[arg-type]

    def init_hooks(self) -> None:
        super().init_hooks()
        self.set_hook("show_in_pager", _page_to_payload, 99)

    def set_next_input(self, s: str, replace: bool = False) -> None:
        """As ipykernel: a `set_next_input` payload of the cell's reply (the front end puts
        the text into the next cell), not readline's next line."""
        self.payload_manager.write_payload(
            {"source": "set_next_input", "text": str(s), "replace": bool(replace)})

    def _plain(self, raw_cell: str) -> bool:
        """`raw_cell` needs none of the static transformations (tokenizing it for them is
        most of the cost of a small cell), and the transformer lists are IPython's own."""
        m = self.input_transformer_manager
        lists = (m.cleanup_transforms, m.line_transforms, m.token_transformers)
        if self._stock_transforms is None:
            self._stock_transforms = tuple(list(x) for x in lists)
        return (raw_cell[:1] not in ("", " ", "\t", "\n", "\r", "\f", "\v")
                and all(a == b for a, b in zip(lists, self._stock_transforms, strict=True))
                and _SPECIAL.search(raw_cell) is None)

    def should_run_async(self, raw_cell: str, *, transformed_cell: str | None = None,
                         preprocessing_exc_tuple: Any = None) -> bool:
        """IPython compiles every cell once more to find top-level `await`; a coroutine
        needs an `await` or `async` keyword, so a cell without either is never one."""
        if transformed_cell is not None and "await" not in transformed_cell \
                and "async" not in transformed_cell:
            return False
        return super().should_run_async(  # type: ignore[no-any-return]
            raw_cell, transformed_cell=transformed_cell,
            preprocessing_exc_tuple=preprocessing_exc_tuple)

    def transform_cell(self, raw_cell: str) -> str:
        """InteractiveShell.transform_cell, skipping the static transformations for plain
        cells (the dynamic ones, e.g. automagic `pwd`, and `input_transformers_post` run)."""
        if not self._plain(raw_cell):
            return super().transform_cell(raw_cell)  # type: ignore[no-any-return]
        cell = raw_cell if raw_cell.endswith("\n") else raw_cell + "\n"
        if len(cell.splitlines()) == 1:
            with self.builtin_trap:
                cell = self.prefilter_manager.prefilter_lines(cell) + "\n"
        lines = cell.splitlines(keepends=True)
        for transform in self.input_transformers_post:
            lines = transform(lines)
        return "".join(lines)


def _page_to_payload(shell: InteractiveShell, data: Any, start: int = 0,
                     screen_lines: int = 0, pager_cmd: Any = None) -> None:
    """IPython's `show_in_pager` hook, as ipykernel's `payloadpage.page`: what IPython would
    page (`obj?`, `%pdoc`, ...) becomes a `page` payload of the cell's reply."""
    bundle = data if isinstance(data, dict) else {"text/plain": str(data)}
    shell.payload_manager.write_payload(
        {"source": "page", "data": _jsonable(bundle), "start": max(0, int(start or 0))})


class Outcome(NamedTuple):
    """What a cell returns with (Jupyter's execute_reply, less its status bookkeeping)."""

    status: str                          # "ok" | "error"
    execution_count: int | None
    result: dict[str, Any] | None        # the execute_result content
    error: dict[str, Any] | None
    payload: list[dict[str, Any]]
    user_expressions: dict[str, Any]


_FAST_TYPES = (int, str, bool)
WARM_ROUNDS = 10  # CPython 3.11 specialises an instruction after 8 runs of it


def _shell_config() -> Config:
    config = Config()
    config.HistoryManager.enabled = False       # no sqlite file; kernels are ephemeral
    config.InteractiveShell.colors = "nocolor"  # plain traceback lines
    config.InteractiveShell.autocall = 0
    config.InteractiveShell.xmode = "Context"
    return config


# every kerneld module's frames (this package's and the in-process backend's thread), not just
# this file's: a user's traceback shows their code, not the machinery that ran it
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _without_own_frames(trace: TracebackType | None) -> TracebackType | None:
    """`trace` relinked without the frames of kerneld's own modules."""
    kept = []
    while trace is not None:
        if not trace.tb_frame.f_code.co_filename.startswith(_OWN_DIR):
            kept.append(trace)
        trace = trace.tb_next
    for a, b in itertools.pairwise(kept):
        a.tb_next = b
    if kept:
        kept[-1].tb_next = None
    return kept[0] if kept else None


class Engine:
    """One persistent IPython shell. Not thread-safe: one caller at a time."""

    def __init__(self, *, singleton: bool = True) -> None:
        config = _shell_config()
        if singleton:
            self.shell = _Shell.instance(config=config)
        else:
            self.shell = _Shell(config=config)
        self.shell.display_pub.engine = self
        self.shell.displayhook.engine = self
        self.shell._showtraceback = self._showtraceback
        self._full_showtraceback = self.shell.showtraceback
        self.shell.showtraceback = self._showtraceback_fast_interrupts
        self.shell.system = self._system
        self.comms = comms.Comms(self._emit_comm)
        self.shell.kerneld_comms = self.comms
        comms.install()
        self._baseline = self._printers()
        self._active_types = list(self.shell.display_formatter.active_types)
        self.emit: Emit = lambda _type, _data: None
        self.flush_streams: Callable[[], None] = lambda: None
        self.request_input: RequestInput | None = None
        self.last_result: dict[str, Any] | None = None
        self.last_error: dict[str, Any] | None = None

    def _printers(self) -> dict[tuple[str, type], Any]:
        formatters = self.shell.display_formatter.formatters
        return {(mime, t): f.type_printers.get(t) for mime, f in formatters.items()
                for t in _FAST_TYPES}

    def formatters_untouched(self, t: type) -> bool:
        """No display formatter was registered or changed for type `t` since start."""
        display = self.shell.display_formatter
        if display.active_types != self._active_types:
            return False
        for mime, f in display.formatters.items():
            if not f.enabled or f.type_printers.get(t) is not self._baseline.get((mime, t)):
                return False
        return True

    def _system(self, cmd: str) -> None:
        """`!cmd`: `/bin/sh -c cmd` writing to the cell's own stdout and stderr, no terminal.

        Why not IPython's `system`: it runs the command under a pty (pexpect), and a kernel has
        no pty devices ("out of pty devices"). ipykernel pipes too. `$x`/`{x}` are expanded
        as IPython does; the exit status lands in `_exit_code`. A refused program (the
        profile's `run` permission) is said in one line instead of a traceback."""
        cmd = self.shell.var_expand(cmd, depth=1)
        try:
            code = subprocess.call(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL)
        except PermissionError:
            print("kerneld: !cmd needs /bin/sh, and the kernel profile's `run` permission "
                  "does not allow running it", file=sys.stderr)
            code = 126
        else:
            if code == 126:
                print("kerneld: a program was refused (exit status 126): the kernel profile's "
                      "`run` permission does not allow it", file=sys.stderr)
        self.shell.user_ns["_exit_code"] = code

    # -- lifecycle ------------------------------------------------------------------------

    def hold_traps(self) -> None:
        """Enter the shell's builtin and display traps for the life of this process, as
        IPython's own terminal does around its main loop; each `run_cell` then finds them
        entered and leaves `builtins` alone.

        Why: the builtin trap deletes `exit`/`quit` from `builtins` and adds `get_ipython`
        on entry, and undoes both on exit, several times per cell. Every change of the
        builtins dict's keys invalidates what CPython 3.11 cached for each `len`, `isinstance`
        ... in all code, so each cell re-specialised code all over the process: ~10 % of a
        `1+1` cell's time, and code-object pages written (copied) in every forked worker.
        For worker processes only: in-process kernels share the daemon's `builtins`."""
        self.shell.builtin_trap.__enter__()
        self.shell.display_trap.__enter__()

    def warm(self, rounds: int = WARM_ROUNDS) -> None:
        """Run throwaway cells the way users' run (result, history, traceback, syntax error),
        then reset the shell to a fresh session (execution count 1, empty In/Out).

        Why: IPython creates much of its state lazily, and CPython 3.11 rewrites a function's
        bytecode in place (specialisation) over its first runs. Done here, in the zygote,
        both are shared by every worker instead of being redone (and copied page by page)
        in each: a worker's first cell is faster and its private memory smaller."""
        saved = self.emit
        self.emit = lambda _type, _data: None
        try:
            for _ in range(rounds):
                for cell in ("1+1", "x = 1", "1/0", "def f(:\n  pass"):
                    # through `execute` (payloads, user_expressions), as requests run: the
                    # code it runs is then specialised here, not in every worker
                    self.execute(cell, user_expressions={"x": "x"} if cell == "x = 1" else None)
            self.complete("pri", 3)
        finally:
            self.emit = saved
        self.shell.reset(new_session=True)
        self.shell.execution_count = 1

    def attach(self, emit: Emit, flush_streams: Callable[[], None],
               request_input: RequestInput | None) -> None:
        """Serve on the calling thread, emitting through `emit`."""
        self.emit, self.flush_streams, self.request_input = emit, flush_streams, request_input
        comms.attach(self.comms)

    def detach(self) -> None:
        """The serving thread ends (in process: the kernel is gone)."""
        comms.detach(self.comms)

    # -- execution ------------------------------------------------------------------------

    def execute(self, code: str, *, silent: bool = False, store_history: bool = True,
                allow_stdin: bool = False,
                user_expressions: dict[str, str] | None = None) -> Outcome:
        """Run one cell; then, if it succeeded, evaluate `user_expressions` (as ipykernel:
        after an error they are not evaluated)."""
        self.last_result = self.last_error = None
        payloads = self.shell.payload_manager
        if payloads.read_payload():  # a trait: set only when needed (traitlets' setter is
            payloads.clear_payload()  # costly, and ~0.05 MiB of private memory per worker)
        self._install_input(allow_stdin)
        result = self.shell.run_cell(code, store_history=store_history, silent=silent)
        self.flush_streams()
        failed = result.error_before_exec is not None or result.error_in_exec is not None
        if failed and self.last_error is None:
            exc = result.error_before_exec or result.error_in_exec
            self.last_error = {"ename": type(exc).__name__, "evalue": str(exc), "traceback": []}
        values: dict[str, Any] = {}
        if user_expressions and not failed:
            values = self.shell.user_expressions(user_expressions)
            for value in values.values():
                if value.get("status") == "ok":
                    value["data"] = _jsonable(value.get("data") or {})
        payload = list(payloads.read_payload())
        if payload:
            payloads.clear_payload()
        return Outcome("error" if failed else "ok", result.execution_count, self.last_result,
                       self.last_error, payload, values)

    # -- comms ----------------------------------------------------------------------------

    def _emit_comm(self, msg_type: str, data: dict[str, Any]) -> None:
        self.flush_streams()  # what the code printed before it sent the message comes first
        self.emit(msg_type, data)

    def handle_comm(self, msg_type: str, content: dict[str, Any], metadata: dict[str, Any],
                    buffers: list[bytes]) -> dict[str, Any] | None:
        """A front end's comm_open / comm_msg / comm_close, run through this kernel's
        CommManager; returns the error content of a handler that raised, or None."""
        try:
            exc = self.comms.deliver(msg_type, content, metadata, buffers)
        finally:
            self.flush_streams()
        if exc is None:
            return None
        error = failure(exc)
        self.emit("execute_error", error)
        return error

    def comm_info(self, target_name: str | None = None) -> dict[str, Any]:
        return self.comms.info(target_name)

    def history(self, hist_access_type: str = "tail", output: bool = False, raw: bool = True,
                session: int = 0, start: int = 0, stop: int | None = None,
                n: int | None = None, pattern: str | None = None,
                unique: bool = False) -> dict[str, Any]:
        """Jupyter's history_reply content (`KeptHistory.reply`)."""
        manager = self.shell.history_manager
        assert isinstance(manager, KeptHistory)
        return manager.reply(hist_access_type, output, raw, session, start, stop, n, pattern,
                             unique)

    def _showtraceback_fast_interrupts(self, exc_tuple: Any = None, *args: Any,
                                       **kwargs: Any) -> None:
        """An interrupt is reported with a plain traceback: the rich one parses the source
        of every file on the stack (100+ ms the first time a numpy frame shows up), and an
        interrupt must land within 100 ms."""
        etype, value, trace = exc_tuple or sys.exc_info()
        if value is not None:  # the user's frames only: never kerneld's own (signal handler,
            trace = _without_own_frames(trace)  # input hooks) in what the user reads
            exc_tuple = (etype, value.with_traceback(trace), trace)
        tb = self.shell.InteractiveTB
        if etype is None or not issubclass(etype, KeyboardInterrupt):
            self._full_showtraceback(exc_tuple, *args, **kwargs)
            return
        mode = tb.mode
        tb.set_mode("Plain")
        try:
            self._full_showtraceback(exc_tuple, *args, **kwargs)
        finally:
            tb.set_mode(mode)

    def _showtraceback(self, etype: type[BaseException], evalue: BaseException,
                       stb: list[str]) -> None:
        self.flush_streams()
        error = {"ename": getattr(etype, "__name__", str(etype)), "evalue": str(evalue),
                 "traceback": [str(line) for line in stb]}
        self.last_error = error
        self.emit("execute_error", error)

    def _install_input(self, allow_stdin: bool) -> None:
        if allow_stdin and self.request_input is not None:
            ask = self.request_input

            def answer(prompt: object, password: bool) -> str:
                value = ask(str(prompt), password)
                if value == EOF:
                    raise EOFError("EOF when reading a line")
                return value

            builtins.input = lambda prompt="": answer(prompt, False)
            getpass.getpass = lambda prompt="Password: ", stream=None: answer(prompt, True)
        else:
            builtins.input = _no_stdin
            getpass.getpass = _no_stdin

    # -- introspection --------------------------------------------------------------------

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any]:
        """Jupyter's complete_reply, from IPython's completion API (as ipykernel ≥ 6)."""
        with provisionalcompleter():
            found = list(rectify_completions(
                code, self.shell.Completer.completions(code, cursor_pos)))
        start = found[0].start if found else cursor_pos
        end = found[0].end if found else cursor_pos
        types = [{"start": c.start, "end": c.end, "text": c.text, "type": c.type,
                  "signature": c.signature} for c in found]
        return {"status": "ok", "matches": [c.text for c in found], "cursor_start": start,
                "cursor_end": end, "metadata": {"_jupyter_types_experimental": types}}

    def inspect(self, code: str, cursor_pos: int, detail_level: int = 0) -> dict[str, Any]:
        name = token_at_cursor(code, cursor_pos)
        try:
            data = self.shell.object_inspect_mime(name, detail_level=detail_level)
            found = True
        except KeyError:
            data, found = {}, False
        return {"status": "ok", "found": found, "data": _jsonable(data), "metadata": {}}

    def is_complete(self, code: str) -> dict[str, Any]:
        status, indent = self.shell.input_transformer_manager.check_complete(code)
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply


def failure(exc: BaseException) -> dict[str, Any]:
    """An exception as Jupyter's error content (`ename`, `evalue`, `traceback` lines)."""
    return {"ename": type(exc).__name__, "evalue": str(exc),
            "traceback": [line.rstrip("\n") for line in traceback.format_exception(exc)]}


def answered(method: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """`method(*args)` (complete, inspect, is_complete), or Jupyter's error reply content
    (`status: "error"`) if it raises: IPython fails on some requests (a completion far
    outside the code), and a request must never end the kernel."""
    try:
        return method(*args)
    except Exception as exc:  # noqa: BLE001  (whatever it is, it is this request's answer)
        return {"status": "error", **failure(exc)}


def _no_stdin(prompt: str = "", stream: Any = None) -> str:
    raise StdinNotImplementedError(
        "input() was called, but this execution does not accept input: "
        "pass allow_stdin=True to execute/execute_stream to answer input requests"
    )
