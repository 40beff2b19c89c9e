"""The project files a dvc.yaml stage runs: its stage module and every mugv module it imports, transitively.

Run as a script to print each stage's code deps (what dvc.yaml should list):
    python -m tests.support.code_deps
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "mugv"


def module_file(name: str) -> Path | None:
    """The file of a dotted mugv module name (a module or a package's __init__), or None."""
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_trivial(path: Path) -> bool:
    """A package __init__ holding only a docstring runs no code: it is not a code dependency."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_nodes(tree: ast.AST, module_level_only: bool = False):
    """Every node that can run (`if TYPE_CHECKING:` blocks are for type checkers only); optionally
    only what runs at import time (function bodies skipped)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if _is_type_checking(child):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def _imported_names(path: Path, module_level_only: bool = False) -> set[str]:
    """Dotted names of the mugv modules one file imports, at module level or also inside functions."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text()), module_level_only):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parent = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                if node.level > 1 and path.name == "__init__.py":
                    parent = module.split(".")[: -(node.level - 1)]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != PACKAGE:
                continue
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return names


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def closure(stage_module: str) -> frozenset[Path]:
    """Every non-trivial mugv file that running `stage_module` imports, itself included.

    Imports inside functions count (stages keep their heavy imports there), except in *other*
    stage modules: a stage imports another only for its output names, and never runs its steps.
    A helper module under mugv/stages/ that no stage is named after (publish) runs: all its imports count.
    """
    own = module_file(stage_module)
    seen: set[Path] = set()
    todo = [stage_module]
    while todo:
        for name in _with_parents(todo.pop()):
            path = module_file(name)
            if path is None or path in seen:
                continue
            seen.add(path)
            other_stage = (path.parent == ROOT / PACKAGE / "stages" and path != own and path.name != "__init__.py"
                           and path.stem not in HELPER_MODULES)
            todo.extend(_imported_names(path, module_level_only=other_stage))
    return frozenset(p for p in seen if not (p.name == "__init__.py" and _is_trivial(p)))


STAGE_MODULES = {"post_train": "preference_opt"}  # a dvc.yaml stage whose module has another name
HELPER_MODULES = {"publish"}  # modules under mugv/stages/ that are no stage: what stages call to finish


def stage_module(stage: str) -> str:
    """dvc.yaml stage name (or foreach group) -> its module under mugv/stages/."""
    name = stage.split("@")[0]
    return f"{PACKAGE}.stages.{STAGE_MODULES.get(name, name)}"


def declared_code_deps(deps: list[str]) -> set[Path]:
    """The mugv .py files a stage's deps list names (folders expanded; data paths ignored)."""
    files: set[Path] = set()
    for dep in deps:
        if not dep.startswith(PACKAGE + "/"):
            continue
        path = ROOT / dep
        if path.is_dir():
            files.update(p for p in path.rglob("*.py") if not (p.name == "__init__.py" and _is_trivial(p)))
        else:
            files.add(path)
    return files


def dvc_stages() -> dict[str, list[str]]:
    """Stage (or foreach group) name -> its declared deps, from the project's dvc.yaml."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (spec.get("do", spec)).get("deps", []) for name, spec in stages.items()}


def rel(paths) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def main() -> None:
    for name in dvc_stages():
        print(f"{name}:")
        for path in rel(closure(stage_module(name))):
            print(f"  - {path}")


if __name__ == "__main__":
    sys.exit(main())
