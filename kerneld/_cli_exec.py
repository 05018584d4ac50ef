"""Executions at a shell prompt (private to `kerneld.cli`): `input()`, Ctrl-C, `attach`.

stdin: `run` and `exec` always send allow_stdin=True and answer each `input_request` with a
line read from their own stdin, a terminal or a pipe: the prompt goes to stdout and the line
is read as a Python script's own `input()` reads it (the terminal's line editing; a
`getpass()` prompt goes to the terminal, and what is typed is not echoed). At the end of stdin the kernel's `input()` raises EOFError, as
Python's does (the reply is "\\x04", Jupyter's end-of-file convention). When stdin cannot
answer — the code itself was read from it (`-`), `--no-stdin` was given, or it is closed —
every `input()` gets end-of-file too, and one line on stderr says why.

Ctrl-C: `run`/`exec` interrupt the kernel (KeyboardInterrupt in the running cell, which ends
with its traceback) and keep printing until the cell ends; a second Ctrl-C stops waiting.
Either way the exit status is 130. The events are read on a helper thread, so the main
thread (where Python delivers SIGINT) only ever waits, with a timeout, on a queue or on stdin.

`attach`: subscribes to every event of a kernel and prints them as `exec` would, whoever ran
the cell, until Ctrl-C (which only detaches: the cell runs on), the kernel's end, or — with
`--until-idle` — the moment nothing runs or waits in it. Output from before the attach is not
replayed (the daemon keeps none).
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from kerneld.errors import KernelError, KernelNotFound

EOF = "\x04"  # kerneld.runtime.engine.EOF: input() raises EOFError
_END = object()
POLL_SECONDS = 0.25


class Stdin:
    """Answers a kernel's input requests from this process's stdin (see the module doc)."""

    def __init__(self, unusable: str | None) -> None:
        self.unusable = unusable  # why stdin cannot answer, or None

    @classmethod
    def of(cls, code_from_stdin: bool, no_stdin: bool) -> Stdin:
        if no_stdin:
            return cls("--no-stdin was given")
        if code_from_stdin:
            return cls("the code itself was read from stdin")
        try:
            os.fstat(0)
        except OSError:
            return cls("stdin is closed")
        return cls(None if sys.stdin is not None else "stdin is closed")

    def answer(self, prompt: str, password: bool) -> str:
        """One line of stdin (without its newline), or EOF."""
        sys.stdout.flush()
        if self.unusable is not None:
            sys.stderr.write(f"kerneld: the code asked for input ({prompt!r}) but stdin "
                             f"cannot answer: {self.unusable}; input() gets end-of-file\n")
            sys.stderr.flush()
            return EOF
        if not os.isatty(0):
            try:
                return input(prompt)  # the prompt to stdout, as Python's input() on a pipe
            except EOFError:
                return EOF
        out = sys.stderr if password and os.isatty(2) else sys.stdout
        line = _tty_line(prompt, out, echo=not password)
        if not line:
            return EOF
        return line.removesuffix("\n")


def _tty_line(prompt: str, out: TextIO, echo: bool) -> str:
    """A line typed on the terminal at fd 0, after `prompt` (echo off for a password, before
    the prompt shows, as getpass does). It waits in select() with a timeout, in Python, so a
    Ctrl-C always lands at once: a blocking read() misses a SIGINT that arrives just before
    it (CPython checks signals only on EINTR)."""
    import termios
    old = termios.tcgetattr(0)
    if not echo:
        quiet = list(old)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(0, termios.TCSAFLUSH, quiet)
    try:
        out.write(prompt)
        out.flush()
        while not select.select([0], [], [], POLL_SECONDS)[0]:
            pass
        return sys.stdin.readline()
    finally:
        if not echo:
            termios.tcsetattr(0, termios.TCSAFLUSH, old)
            out.write("\n")
            out.flush()


def follow(client: Any, kernel_id: str, stream: Iterable[Any], stdin: Stdin,
           render: Callable[[Any], None]) -> int:
    """Print one execution's events, answering its input requests; its exit status (0 ok,
    1 error, 130 interrupted)."""
    items: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for event in stream:
                items.put(event)
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
            items.put(exc)
        else:
            items.put(_END)

    threading.Thread(target=pump, name="kerneld-events", daemon=True).start()
    interrupted = False
    while True:
        try:
            try:
                item = items.get(timeout=POLL_SECONDS)  # a timeout: see _tty_line
            except queue.Empty:
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            if item.type == "input_request":
                value = stdin.answer(str(item.data.get("prompt", "")),
                                     bool(item.data.get("password")))
                client.input_reply(kernel_id, value)
            else:
                render(item)
        except KeyboardInterrupt:
            if interrupted:
                return 130
            interrupted = True
            client.interrupt_kernel(kernel_id)
    if interrupted:
        return 130
    result = getattr(stream, "result", None)
    return 0 if result is not None and result.success else 1


def attach(client: Any, kernel_id: str, until_idle: bool,
           render: Callable[[Any], None]) -> int:
    """`kerneld attach` (see the module docstring); the exit status."""
    items: queue.Queue[Any] = queue.Queue()
    client.on_kernel_event(kernel_id, "*", items.put)
    try:
        while True:
            try:
                event = items.get(timeout=POLL_SECONDS)
            except queue.Empty:
                try:  # also how a gone daemon shows (DaemonUnavailable)
                    count = client.get_ongoing_execution_count(kernel_id)
                except KernelNotFound:  # destroyed (no event says so)
                    _note("kernel destroyed")
                    return 0
                if count == 0 and until_idle:
                    while not items.empty():  # what came before the count's reply
                        status = _attached_event(items.get(), render)
                        if status is not None:
                            return status
                    return 0
                continue
            status = _attached_event(event, render)
            if status is not None:
                return status
    finally:
        try:
            client.off_kernel_event(kernel_id, "*")
        except KernelError:
            pass


def _attached_event(event: Any, render: Callable[[Any], None]) -> int | None:
    """Print one event of an attached kernel; an exit status if the kernel is gone."""
    kind, data = event.type, event.data
    note = None
    if kind == "input_request":
        note = f"input requested: {data.get('prompt', '')!r} (answered by the cell's caller)"
    elif kind == "kernel_restarted":
        note = "kernel restarted"
    elif kind == "kernel_died":
        note = f"kernel died: {data.get('reason', '')}"
    elif kind == "kernel_terminated":
        note = f"kernel terminated: {data.get('reason', '')}"
    else:
        render(event)
        return None
    _note(note)
    return {"kernel_died": 1, "kernel_terminated": 0}.get(kind)


def _note(text: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"[kerneld: {text}]\n")
    sys.stderr.flush()
