"""`sandbox` is a pure library: it never imports kerneld, zmq or tomllib (STYLE.md item 4)."""

from __future__ import annotations

import ast
from pathlib import Path

import sandbox

FORBIDDEN = {"kerneld", "zmq", "tomllib"}
SANDBOX_DIR = Path(sandbox.__file__).parent


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            roots |= {a.value.split(".")[0] for a in node.args[:1]
                      if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return roots


def test_sandbox_never_imports_daemon_code() -> None:
    files = sorted(SANDBOX_DIR.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        bad = _imported_roots(ast.parse(path.read_text(), str(path))) & FORBIDDEN
        assert not bad, f"{path.name} imports {bad}"


def test_no_lazy_imports_inside_functions() -> None:
    """After stage 2 the checkout is unreadable: every import must run at module load."""
    for path in sorted(SANDBOX_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.name}:{fn.name} imports lazily"


def test_public_surface() -> None:
    assert set(sandbox.__all__) >= {"fork", "apply", "probe", "check", "Policy", "Limits",
                                     "NetPolicy", "Mount", "ALL", "SandboxError",
                                     "HostFeatures"}
    for name in sandbox.__all__:
        assert hasattr(sandbox, name), name


def test_ctypes_only_in_the_private_syscalls_module() -> None:
    for path in sorted(SANDBOX_DIR.glob("*.py")):
        if path.name != "_syscalls.py":
            roots = _imported_roots(ast.parse(path.read_text(), str(path)))
            assert "ctypes" not in roots, f"{path.name} calls libc directly"
