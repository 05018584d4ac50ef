"""No import cycle inside `kerneld/`, and `sandbox/` stays a pure library (issue 12).

The graph is read from the source (the AST of every file), not from a running interpreter, and
counts EVERY import statement: at module level, inside functions and under `if TYPE_CHECKING:`.
A lazy or type-only import that closes a loop still couples the two modules both ways; making it
lazy only hides the cycle from the interpreter, not from the reader.

Edges: `import kerneld.a.b` and `from kerneld.a.b import name` import `kerneld.a.b`;
`from kerneld.a import x` imports `kerneld.a.x` when that is a module, else `kerneld.a` (the
package's `__init__`); relative imports resolve against the importing module's package.
Importing `a.b.c` also initialises `a.b` (and `a`): that is an edge too, except to the
importer's own ancestors (which are initialised before it anyway: every module would
otherwise form a loop with its own package's `__init__`). A package `__init__` that
re-exports its submodules can close a loop that way.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
Edge = tuple[str, str, str]  # importer, imported, "file:line"


def _modules(package: str, root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of every import in the file; `from a import x` yields `a.x`, so the
    caller can tell a submodule from a name."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not is_package:
                    package = package[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def import_graph(package: str = "kerneld", root: Path = ROOT
                 ) -> tuple[dict[str, Path], list[Edge]]:
    modules = _modules(package, root)
    edges = []
    for module, path in modules.items():
        for name, line in _imports(module, path):
            target = name if name in modules else name.rpartition(".")[0]
            if target not in modules:  # not `import kerneld.x` nor `from kerneld.x import name`
                continue
            at = f"{path.relative_to(root)}:{line}"
            edges.append((module, target, at))
            parts = target.split(".")
            for n in range(1, len(parts)):  # the packages initialised on the way
                parent = ".".join(parts[:n])
                if parent in modules and not (module + ".").startswith(parent + "."):
                    edges.append((module, parent, at))
    return modules, edges


def _components(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan), iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    out.append(sorted(component))
    return out


def _one_cycle(start: str, component: set[str], where: dict[tuple[str, str], str],
               succ: dict[str, list[str]]) -> list[str]:
    """The shortest loop from `start` back to it inside its component, edge by edge."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in succ[node]:
            if child == start:
                hops = paths[node] + [start]
                return [f"{a} -> {b}  ({where[a, b]})" for a, b in itertools.pairwise(hops)]
            if child in component and child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"no loop through {start}")


def cycles(package: str = "kerneld", root: Path = ROOT) -> list[list[str]]:
    """Each loop as its edges; every module caught in a cycle is on at least one loop."""
    modules, edges = import_graph(package, root)
    succ: dict[str, list[str]] = {m: [] for m in modules}
    where: dict[tuple[str, str], str] = {}
    for a, b, at in edges:
        if (a, b) not in where:
            succ[a].append(b)
            where[a, b] = at
    found = []
    for component in _components(sorted(modules), succ):
        if len(component) == 1 and component[0] not in succ[component[0]]:
            continue
        covered: set[str] = set()
        for member in component:  # a loop through every module of the tangle
            if member not in covered:
                loop = _one_cycle(member, set(component), where, succ)
                covered.update(hop.split(" -> ")[0] for hop in loop)
                found.append(loop)
    return found


def test_the_graph_sees_every_kind_of_import() -> None:
    """Guards the parser itself: module level, function level, TYPE_CHECKING, relative."""
    modules, edges = import_graph("kerneld")
    assert len(modules) > 20 and len(edges) > 40
    pairs = {(a, b) for a, b, _ in edges}
    assert ("kerneld", "kerneld.errors") in pairs     # under `if TYPE_CHECKING:` only
    assert ("kerneld", "kerneld.client") in pairs     # inside `connect()` (and TYPE_CHECKING)
    sandbox_modules, sandbox_edges = import_graph("sandbox")
    assert ("sandbox", "sandbox.apply") in {(a, b) for a, b, _ in sandbox_edges}  # `from .`
    assert "sandbox.policy" in sandbox_modules


def test_the_finder_reports_direct_loops_and_loops_through_a_package_init(
        tmp_path: Path) -> None:
    """Positive control: a package with a plain a <-> b loop, and d -> sub.y where sub's
    `__init__` imports sub.x, which imports d (the interpreter fails on that one too)."""
    files = {"__init__.py": "", "a.py": "from pkg import b\n", "b.py": "import pkg.a\n",
             "c.py": "", "d.py": "import pkg.sub.y\n", "sub/__init__.py": "from pkg.sub import x\n",
             "sub/x.py": "from pkg import d\n", "sub/y.py": "from pkg import c\n"}
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    loops = [{hop.split(" -> ")[0] for hop in loop} for loop in cycles("pkg", tmp_path)]
    assert {"pkg.a", "pkg.b"} in loops
    assert any({"pkg.d", "pkg.sub", "pkg.sub.x"} <= loop for loop in loops), loops
    assert not any("pkg.c" in loop or "pkg.sub.y" in loop for loop in loops)


def test_no_import_cycle_inside_kerneld() -> None:
    found = cycles("kerneld")
    report = "\n\n".join("\n".join(cycle) for cycle in found)
    if found:
        print(f"import cycles inside kerneld/:\n{report}")
    assert not found, f"{len(found)} import cycle(s) inside kerneld/:\n{report}"


def test_sandbox_is_a_pure_library() -> None:
    """sandbox/ never imports kerneld (the daemon), zmq (the transport) or tomllib (config):
    it is the part a reviewer of the confinement must be able to read alone."""
    bad = []
    for module, path in _modules("sandbox").items():
        for name, line in _imports(module, path):
            top = name.split(".")[0]
            if top in ("kerneld", "zmq", "tomllib"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert not bad, "\n".join(bad)
