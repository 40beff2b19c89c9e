"""The package's source holds no unsafe loading or exposure: no pickle, torch's loader only with weights_only=True,
no unsafe yaml loaders, no shell=True, nothing bound to every interface. A failure lists file:line."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

SCANNED = ("mugv", "flows")
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
UNSAFE_YAML = {"load", "unsafe_load", "load_all", "unsafe_load_all", "full_load", "full_load_all",
               "Loader", "UnsafeLoader", "FullLoader"}
EVERY_INTERFACE = ".".join("0" * 4)  # spelt out so this file does not hold the address itself


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def findings(source: str) -> list[tuple[int, str]]:
    """(line, what) for each unsafe construct in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name.split(".")[0] in PICKLING_MODULES:
                found.append((node.lineno, name))
            elif name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML:
                found.append((node.lineno, name))
        elif isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords}
            if _dotted(node.func) == "torch.load" and not _is_true(keywords.get("weights_only")):
                found.append((node.lineno, "torch.load without weights_only=True"))
            if _is_true(keywords.get("shell")):
                found.append((node.lineno, "shell=True"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and EVERY_INTERFACE in node.value:
            found.append((node.lineno, f"{EVERY_INTERFACE} (bind 127.0.0.1)"))
    return sorted(set(found))


def scan(root: Path, folders=SCANNED) -> list[str]:
    report = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for line, what in findings(path.read_text()):
                report.append(f"{path.relative_to(root)}:{line}: {what}")
    return report


def test_the_package_has_no_unsafe_loading_or_exposure():
    report = scan(ROOT)
    assert not report, "unsafe constructs:\n" + "\n".join(report)


def test_the_scan_finds_each_unsafe_construct(tmp_path):
    bad = tmp_path / "mugv" / "bad.py"
    bad.parent.mkdir()
    torch_load, yaml_load = "torch." + "load(", "yaml." + "load("  # planted below, never written here as code
    bad.write_text(
        "import pickle\n"
        "from dill import loads\n"
        "import torch, yaml, subprocess\n"
        f"{torch_load}'a.pt')\n"
        f"{torch_load}'a.pt', weights_only=False)\n"
        f"{yaml_load}open('p'), Loader=yaml.Loader)\n"
        "yaml.unsafe_load('x')\n"
        "subprocess.run('ls', shell=True)\n"
        f"HOST = '{EVERY_INTERFACE}'\n"
        "pickle.loads(b'')\n"
        f"# a comment about pickle and {torch_load} is fine\n"
        f"{torch_load}'b.pt', map_location='cpu', weights_only=True)\n"
        "yaml.safe_load('x')\n"
    )
    lines = sorted({int(entry.split(":")[1]) for entry in scan(tmp_path, ("mugv",))})
    assert lines == [1, 2, 4, 5, 6, 7, 8, 9, 10]
