"""params.yaml fuzzed: one leaf of the shipped tree mutated (wrong type, negative, huge, NaN/inf, empty, null, list <->
dict, deleted, an unknown key added) is either valid or a ParamsError naming the key, never another exception; the CLI
refuses a bad file in one line before any work; a file lacking a section is named in a warning, not silently defaulted."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mugv.config import Params, ParamsError, parse_params
from tests.support.paths import ROOT

SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
UNKNOWN = "no_such_knob"
MUTATIONS = ("wrong type", "negative", "huge", "tiny", "nan", "inf", "-inf", "empty string", "null", "list <-> dict",
             "delete", "unknown key")


def _paths(node, prefix=()) -> list[tuple]:
    """Every key path of the tree (mappings and lists inside it too), the root excluded."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append(prefix + (key,))
        found += _paths(child, prefix + (key,))
    return found


PATHS = _paths(SHIPPED)


def _flipped(value):
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return [value]


def mutate(tree: dict, path: tuple, how: str) -> tuple[dict, tuple]:
    """A deep copy of `tree` with the value at `path` mutated; returns it and the path an error must name."""
    tree = copy.deepcopy(tree)
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    replacements = {
        "wrong type": 7 if isinstance(value, str) else "seven",
        "negative": -1 if not isinstance(value, float) else -1.5,
        "huge": 10**30,
        "tiny": 1e-300,
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "empty string": "",
        "null": None,
    }
    if how in replacements:
        parent[key] = replacements[how]
    elif how == "list <-> dict":
        parent[key] = _flipped(value)
    elif how == "delete":
        del parent[key]
        if isinstance(parent, list):  # the items after it move up: the error names the list
            return tree, path[:-1]
    elif how == "unknown key":
        if isinstance(value, dict):
            value[UNKNOWN] = 1
            return tree, path + (UNKNOWN,)
        if isinstance(parent, dict):
            parent[UNKNOWN] = 1
            return tree, path[:-1] + (UNKNOWN,)
        parent[key] = {UNKNOWN: 1}
    return tree, path


def assert_names_the_key(message: str, path: tuple) -> None:
    """Some error line names the mutated key path, or a section above it and the key itself (a rule across keys)."""
    dotted = [".".join(map(str, path[:n])) for n in range(len(path), 0, -1)]
    lines = [line.strip() for line in message.splitlines()[1:]]
    assert lines, message
    for line in lines:
        named = line.split(":", 1)[0]
        if named.startswith(dotted[0]) or (named in dotted and str(path[-1]) in line):
            return
        if named in dotted and any(str(k) in line for k in path if isinstance(k, str)):
            return
    raise AssertionError(f"no line of the error names {dotted[0]}:\n{message}")


@settings(max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(PATHS), how=st.sampled_from(MUTATIONS))
def test_a_mutated_params_tree_is_valid_or_names_the_key(path, how):
    raw, named = mutate(SHIPPED, path, how)
    try:
        params = parse_params(raw)
    except ParamsError as err:
        assert_names_the_key(str(err), named)
        return
    assert isinstance(params, Params)
    assert how not in ("nan", "inf", "-inf", "unknown key"), f"{'.'.join(map(str, path))} took {how}"


def test_every_section_of_the_shipped_file_is_mutated():
    assert {path[0] for path in PATHS} == set(Params.model_fields)


def _cli(args: list[str]):
    from mugv.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("path, how", [
    (("ingest", "limits", "max_width"), "nan"),
    (("ingest", "allowed_buckets"), "list <-> dict"),
    (("qc", "profiles", "synthetic"), "unknown key"),
    (("synth", "num_videos"), "wrong type"),
    (("pretrain", "stages", 0, "steps"), "negative"),
])
def test_the_cli_refuses_a_mutated_file_in_one_line_before_any_work(tmp_path, path, how):
    raw, named = mutate(SHIPPED, path, how)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = _cli(["synth", str(tmp_path / "out"), "--params", str(bad)])
    assert result.exit_code == 2, result.output
    assert ".".join(map(str, named)) in result.output
    assert not (tmp_path / "out").exists()


def test_the_real_cli_refuses_in_one_line_and_names_a_missing_section(tmp_path):
    """Subprocesses of `mugv`: a bad value is one line on stderr; a file lacking sections runs with a warning naming
    them (checked through `mugv pipeline --stage`, which validates params and stops at the unknown stage)."""
    raw, _ = mutate(SHIPPED, ("ingest", "limits", "max_decode_s"), "-inf")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "mugv.cli", "synth", str(tmp_path / "out"), "--params", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path, env=os.environ)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "ingest.limits.max_decode_s" in proc.stderr and not (tmp_path / "out").exists()

    partial = copy.deepcopy(SHIPPED)
    del partial["qc"], partial["ingest"]["limits"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(partial))
    proc = subprocess.run([sys.executable, "-m", "mugv.cli", "pipeline", "--stage", "no_such_stage", "--params",
                           str(tmp_path / "partial.yaml")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if "using the code defaults" in line]
    assert "qc" in warning and "ingest.limits" in warning
