"""The package's shape, read from the source: no import cycles, and one public name per job.

Import graph rule: an edge A -> B for every `import` / `from ... import` of a mugv module B in
module A, at module level AND inside functions (a lazy import still runs; it may not close a
cycle either). Two kinds of import are not edges: those under `if TYPE_CHECKING:` (never executed,
annotations only) and the implicit import of a module's parent packages (`import mugv.a.b` runs
`mugv/a/__init__.py`, but a package's `__init__` re-exporting its own submodules is not a cycle).

Name rule: a public (no leading underscore) top-level function or class is defined in one module
only. The exceptions are the same job done per stage, per model or per command, listed in
`SAME_JOB` with the modules they may repeat in.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mugv"

# name -> fnmatch patterns of the modules that may each define it (the same job, once per module)
SAME_JOB = {
    "Config": ["mugv.stages.*"],  # each stage's params section
    "run": ["mugv.stages.*"],  # each stage's entry point
    "key_metrics": ["mugv.stages.*"],  # each stage's numbers for its committed metrics file
    "main": ["mugv.cli", "mugv.planning.*"],  # console-script entry points
    "to_official": ["mugv.models.*.convert"],  # each model's official <-> mugv state-dict converter
    "from_official": ["mugv.models.*.convert"],
    "FinalLayer": ["mugv.models.dit.model", "mugv.models.dit.reference"],  # the plain-PyTorch twin of the model
    "modulate": ["mugv.models.dit.model", "mugv.models.dit.reference"],
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package.parent): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict) -> set[str]:
    """The mugv modules an import statement names (a `from pkg import name` of a submodule names the submodule)."""
    if isinstance(node, ast.Import):
        candidates = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = set()
    for name in candidates:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name.startswith("mugv") and name != module:
            found.add(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the mugv modules it imports, at module level or inside functions (TYPE_CHECKING blocks aside)."""
    modules = package_modules(package)
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def visit(node: ast.AST, module: str, is_package: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for other in child.orelse:
                    visit(other, module, is_package)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(child, module, is_package, modules)
            visit(child, module, is_package)

    for module, path in modules.items():
        visit(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle met by a depth-first walk (each as its modules in order, the first repeated last)."""
    cycles, done, path, on_path = [], set(), [], set()

    def walk(node: str) -> None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                walk(nxt)
        path.pop()
        on_path.discard(node)
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            walk(node)
    return cycles


def public_definitions() -> dict[str, list[str]]:
    """Public top-level function/class name -> the modules defining it."""
    defined = defaultdict(list)
    for module, path in package_modules().items():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                if module == "mugv.cli" and any("command" in ast.unparse(d) for d in node.decorator_list):
                    continue  # a CLI command function is named after its command, and calls the stage of that name
                defined[node.name].append(module)
    return defined


def test_the_package_has_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_two_modules_define_the_same_public_name():
    clashes = {}
    for name, modules in public_definitions().items():
        allowed = SAME_JOB.get(name, [])
        if len(modules) > 1 and not all(any(fnmatch(m, pattern) for pattern in allowed) for m in modules):
            clashes[name] = modules
    assert not clashes, f"public names defined in more than one module (rename one, or list a same-job name): {clashes}"


def test_the_scan_counts_lazy_imports_and_skips_type_checking_ones(tmp_path):
    """The graph rule above, on a small package: a function-level import is an edge, a TYPE_CHECKING one is not."""
    package = tmp_path / "mugv"
    (package / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from mugv.sub import b\n",
        "sub/__init__.py": "from mugv.sub.b import run  # re-export: not a cycle with sub.b\n",
        "sub/b.py": "def run():\n    from mugv import c\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mugv.a import x\nfrom . import d\n",
        "d.py": "import os\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(package)
    assert graph == {"mugv": set(), "mugv.a": {"mugv.sub.b"}, "mugv.sub": {"mugv.sub.b"}, "mugv.sub.b": {"mugv.c"},
                     "mugv.c": {"mugv.d"}, "mugv.d": set()}
    assert find_cycles(graph) == []
    (package / "d.py").write_text("def late():\n    import mugv.a\n")
    assert find_cycles(import_graph(package)) == [["mugv.a", "mugv.sub.b", "mugv.c", "mugv.d", "mugv.a"]]
