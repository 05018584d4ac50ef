"""`kerneld/runtime/` is all loaded before the zygote forks (issue 12).

A worker is confined the moment the zygote forks it: from then on it cannot read kerneld's
source (nor, under most profiles, the runtime's site-packages), so an import that runs only
when a function is called would fail in a worker — or worse, work unconfined and fail in
production. Hence, for every module of the package, read statically:

- no import statement inside a function or method, and no `importlib` / `__import__` call,
  except the zygote's `_preload`, whose job is to import the configured modules before the
  first fork;
- of kerneld, only `kerneld.runtime` itself and the wire records (`kerneld.protocol`): the
  runtime interpreter loads no more of the daemon than a worker speaks (`kerneld.errors` is
  not needed: failures travel as Jupyter error content, not as KernelError);
- every module is reached from `kerneld.runtime.zygote` by module-level imports, so the zygote
  has loaded all of them before its first fork.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "kerneld" / "runtime"
ALLOWED_KERNELD = ("kerneld.runtime", "kerneld.protocol")
DYNAMIC_IMPORT_ALLOWED = {("zygote", "_preload")}  # the configured preload, before any fork


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path))
            for path in sorted(RUNTIME.glob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names `node` imports (`from kerneld import protocol` → kerneld.protocol)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert node.level == 0, "relative imports are not used in kerneld"
    base = node.module or ""
    return [f"{base}.{alias.name}" for alias in node.names]


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return (isinstance(func, ast.Attribute)
            and (func.attr in ("__import__", "import_module", "reload")
                 or (isinstance(func.value, ast.Name) and func.value.id == "importlib")))


def test_the_package_is_found() -> None:
    assert {"zygote", "heap", "engine", "serve", "worker"} <= set(_modules())


def test_no_import_runs_after_the_module_is_loaded() -> None:
    lazy = []
    for name, tree in _modules().items():
        for func in _functions(tree):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    lazy.append(f"{name}.py:{node.lineno} {func.name}: import {_imported(node)}")
                elif (isinstance(node, ast.Call) and _is_dynamic_import(node)
                      and (name, func.name) not in DYNAMIC_IMPORT_ALLOWED):
                    lazy.append(f"{name}.py:{node.lineno} {func.name}: {ast.unparse(node)}")
    assert not lazy, "lazy imports in kerneld/runtime:\n" + "\n".join(lazy)


def test_the_dynamic_import_test_sees_what_it_looks_for() -> None:
    tree = ast.parse("import importlib\ndef f():\n    import os\n    importlib.import_module('x')"
                     "\n    __import__('y')\n    return importlib.util\n")
    func = _functions(tree)[0]
    assert [type(n).__name__ for n in ast.walk(func) if isinstance(n, ast.Import)] == ["Import"]
    calls = [n for n in ast.walk(func) if isinstance(n, ast.Call) and _is_dynamic_import(n)]
    assert len(calls) == 2


def test_only_the_runtime_and_the_wire_records_of_kerneld() -> None:
    outside = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for dotted in _imported(node):
                    if (dotted == "kerneld" or dotted.startswith("kerneld.")) and not any(
                            dotted == ok or dotted.startswith(ok + ".")
                            for ok in ALLOWED_KERNELD):
                        outside.append(f"{name}.py:{node.lineno} {dotted}")
    assert not outside, "kerneld/runtime imports from outside it:\n" + "\n".join(outside)


def test_the_zygote_loads_every_runtime_module() -> None:
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for name, tree in modules.items():
        edges[name] = set()
        for node in tree.body:  # module level only: what importing the module runs
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for dotted in _imported(node):
                    parts = dotted.split(".")
                    if parts[:2] == ["kerneld", "runtime"] and len(parts) > 2:
                        edges[name].add(parts[2])
    seen, todo = {"zygote"}, ["zygote"]
    while todo:
        for nxt in edges.get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert set(modules) - {"__init__"} <= seen, set(modules) - seen


def test_a_fresh_interpreter_importing_the_zygote_loads_only_these_parts_of_kerneld() -> None:
    """The real import, run in the runtime interpreter (what the static checks stand for):
    the zygote loads every runtime module and, of the rest of kerneld, only the wire records
    (and the package's lazy `__init__`, which imports nothing itself)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import kerneld.runtime.zygote; "
            "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == 'kerneld')))")
    runtime = "/opt/kerneld/runtime/bin/python"
    out = subprocess.run([runtime if os.path.exists(runtime) else sys.executable, "-I", "-c",
                          code, str(RUNTIME.parents[1])],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    runtime_modules = {f"kerneld.runtime.{m}" for m in _modules()} - {"kerneld.runtime.__init__"}
    assert runtime_modules | {"kerneld.runtime"} <= set(out)
    assert set(out) - runtime_modules - {"kerneld.runtime"} == {"kerneld", "kerneld.protocol"}
