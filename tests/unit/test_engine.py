"""The execution engine on its own (no processes): events, errors, the display fast path."""

from __future__ import annotations

import pytest

from kerneld.runtime.engine import Engine


@pytest.fixture(scope="module")
def engine():
    eng = Engine(singleton=False)
    eng.warm()
    return eng


def run(engine, code, **kw):
    events = []
    engine.attach(lambda t, d: events.append((t, d)), lambda: None, None)
    outcome = engine.execute(code, **kw)
    return outcome[:4], events  # status, execution_count, result, error


@pytest.mark.parametrize("value", ["0", "-7", "2**100", "True", "False", "'x'", "''",
                                   "'a\\nb'", "'quote\\'s'", "'ü' * 3", "'x' * 5000"])
def test_fast_path_matches_ipython_formatting(engine, value):
    obj = eval(value)
    expected, _ = engine.shell.display_formatter.format(obj)
    (status, _, result, _), _ = run(engine, value)
    assert status == "ok" and result["data"] == expected


def test_fast_path_yields_to_user_formatters(engine):
    plain = engine.shell.display_formatter.formatters["text/plain"]
    plain.for_type(int, lambda obj, p, cycle: p.text(f"<int {obj}>"))
    try:
        (_, _, result, _), _ = run(engine, "5")
        assert result["data"]["text/plain"] == "<int 5>"
    finally:
        plain.pop(int)
    (_, _, result, _), _ = run(engine, "5")
    assert result["data"]["text/plain"] == "5"


def test_execution_count_starts_at_one_after_warm_up():
    eng = Engine(singleton=False)
    eng.warm()
    (_, count, _, _), _ = run(eng, "1")
    assert count == 1


def test_error_and_result_events(engine):
    (status, _, result, error), events = run(engine, "raise ValueError('bad')")
    assert status == "error" and result is None
    assert error["ename"] == "ValueError" and error["evalue"] == "bad"
    assert events == [("execute_error", error)]


def test_silent_execution_has_no_result(engine):
    (status, _, result, _), events = run(engine, "42", silent=True)
    assert status == "ok" and result is None and events == []


def test_is_complete_and_complete(engine):
    assert engine.is_complete("if x:") == {"status": "incomplete", "indent": "    "}
    assert engine.is_complete("x = (")["status"] == "incomplete"
    assert engine.is_complete("x = 1")["status"] == "complete"
    assert engine.is_complete("x = )")["status"] == "invalid"
    run(engine, "zebra_count = 3")
    reply = engine.complete("zebra_c", 7)
    assert "zebra_count" in reply["matches"] and reply["cursor_start"] == 0


@pytest.mark.parametrize(("cell", "shown"), [
    ("1+1;", False), ("1+1 ;  # quiet", False), ("x = 1\nx;", False), ("[1, 2]\n1;", False),
    ("1+1", True), ("1+1 # ; in a comment", True), ("'a;b'", True), ("f = 3\nf", True),
    (" 1+2", True), ("\n\n1+3", True), ("a = 2 != 3\na", True), ("'%d' % 4", True),
    ("pwd", True), ("def g(): return 'k'\ng()", True), ("y = 1", False)])
def test_input_fast_paths_agree_with_ipython(engine, cell, shown):
    """The quiet (`;`) check and the plain-cell shortcut past IPython's static transforms
    give what stock IPython gives: the same transformed text, the same result shown."""
    shell = engine.shell
    stock = type(shell).__mro__[1]                     # IPython's InteractiveShell
    assert shell.transform_cell(cell) == stock.transform_cell(shell, cell)
    (status, _, result, _), _ = run(engine, cell)
    assert status == "ok" and (result is not None) == shown


def test_plain_cell_shortcut_yields_to_added_transformers(engine):
    shell = engine.shell
    manager = shell.input_transformer_manager
    manager.cleanup_transforms.append(lambda lines: [ln.replace("41", "42") for ln in lines])
    try:
        (_, _, result, _), _ = run(engine, "41")
        assert result["data"]["text/plain"] == "42"
    finally:
        manager.cleanup_transforms.pop()
    (_, _, result, _), _ = run(engine, "41")
    assert result["data"]["text/plain"] == "41"


@pytest.mark.parametrize(("cell", "value"), [
    ("import asyncio\nawait asyncio.sleep(0)\n'awaited'", "'awaited'"),
    ("async def agen():\n    yield 7\n[x async for x in agen()]", "[7]"),
    (("import contextlib\n@contextlib.asynccontextmanager\nasync def cm():\n    yield 8\n"
      "async with cm() as v:\n    pass\nv"), "8"),
    ("def not_async(): return 'plain'\nnot_async()", "'plain'")])
def test_top_level_async_still_runs_as_a_coroutine(engine, cell, value):
    (status, _, result, error), _ = run(engine, cell)
    assert status == "ok", error
    assert result["data"]["text/plain"] == value


def test_held_traps_leave_builtins_alone_across_cells():
    """Workers hold the builtin and display traps (Engine.hold_traps): cells then neither add
    nor delete builtins, whose key changes would invalidate CPython's specialised globals
    lookups process-wide. Cells still see IPython's `get_ipython`, `exit` and displayhook."""
    import builtins
    import sys

    eng = Engine(singleton=False)
    before = set(vars(builtins))
    hook = sys.displayhook
    eng.hold_traps()
    try:
        held = set(vars(builtins))
        assert "get_ipython" in held and "exit" not in held  # as inside a cell
        for code in ("1+1", "x = get_ipython()", "exit.__class__.__name__", "1/0"):
            run(eng, code)
            assert set(vars(builtins)) == held
        (status, _, result, _), _ = run(eng, "type(exit).__name__")
        assert status == "ok" and result["data"]["text/plain"] == "'ExitAutocall'"
        assert sys.displayhook is eng.shell.displayhook
    finally:
        eng.shell.display_trap.__exit__(None, None, None)
        eng.shell.builtin_trap.__exit__(None, None, None)
    assert set(vars(builtins)) == before and sys.displayhook is hook
