"""Hostile or broken params files fail validation in one line naming the problem: non-finite floats, alias
bombs, YAML syntax errors, unknown DiT presets; a file lacking a section is named in a warning."""

import logging
import subprocess
import sys

import pytest

from mugv.config import Params, ParamsError, load_params, parse_params
from tests.support.paths import ROOT


def _error(raw: dict) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    return str(err.value)


@pytest.mark.parametrize("raw, key", [
    ({"pretrain": {"stages": [{"name": "images", "steps": 3, "lr": {"peak": float("inf")}}]}}, "pretrain.stages.0.lr.peak"),
    ({"qc": {"profiles": {"synthetic": {"sharpness_min": float("nan")}}}}, "qc.profiles.synthetic.sharpness_min"),
    ({"pipeline": {"retry_delay_s": float("-inf")}}, "pipeline.retry_delay_s"),
])
def test_non_finite_floats_are_rejected_naming_the_key(raw, key):
    message = _error(raw)
    assert key in message and "finite" in message


def test_non_finite_yaml_values_are_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("qc:\n  profiles:\n    mugv:\n      sharpness_min: .nan\n")
    with pytest.raises(ParamsError, match="qc.profiles.mugv.sharpness_min"):
        load_params(path)


def test_every_float_field_rejects_nan():
    """Every float leaf of the defaults (nested sections and lists included) refuses NaN."""
    defaults = Params().model_dump()
    leaves = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + [i])
        elif isinstance(node, float):
            leaves.append(path)

    walk(defaults, [])
    assert len(leaves) > 20
    for path in leaves:
        raw = Params().model_dump()
        target = raw
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = float("nan")
        with pytest.raises(ParamsError, match=".".join(map(str, path))):
            parse_params(raw)


BOMB = """pretrain:
  model_overrides:
    a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_an_alias_bomb_is_refused_before_expansion(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(BOMB)
    with pytest.raises(ParamsError, match=r"line 3, column 8: anchors and aliases are not allowed"):
        load_params(path)


def test_the_shipped_params_use_no_anchors():
    load_params(ROOT / "params.yaml")  # the alias-refusing loader reads it


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("qc:\n  sharpness_min: [1, 2\nsynth:\n  n: 3\n")
    proc = subprocess.run([sys.executable, "-m", "mugv.cli", "synth", str(tmp_path / "out"), "--params", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "line 3, column 6" in proc.stderr


def test_unknown_dit_preset_fails_at_validation_listing_the_presets():
    message = _error({"pretrain": {"model": "huge"}})
    assert "pretrain" in message and "'huge'" in message and "tiny" in message and "10B" in message


def test_model_overrides_must_make_a_valid_dit():
    message = _error({"pretrain": {"model_overrides": {"depth": 0}}})
    assert "model_overrides" in message and "depth" in message
    assert "model_overrides" in _error({"pretrain": {"model_overrides": {"no_such_field": 1}}})


def test_a_missing_section_is_named_in_one_warning(tmp_path, caplog):
    path = tmp_path / "params.yaml"
    path.write_text("project:\n  seed: 1\n")
    with caplog.at_level(logging.WARNING, logger="mugv.config"):
        assert load_params(path).project.seed == 1
    [record] = [r for r in caplog.records if r.name == "mugv.config"]
    assert "qc" in record.getMessage() and "pretrain" in record.getMessage() and "\n" not in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mugv.config"):
        load_params(ROOT / "params.yaml")
    assert not [r for r in caplog.records if r.name == "mugv.config"]
