"""params.yaml validation: the shipped file is valid; bad keys and values are named before any work."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mugv.config import Params, ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_validate_and_cover_every_section():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = load_params(ROOT / "params.yaml")
    # every top-level section of the file maps to a typed model
    assert set(raw) <= set(Params.model_fields)
    assert params.qc.thresholds == params.qc.profiles[params.qc.profile]


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(ParamsError) as e:
        parse_params({"ingest": {"scene": {"content_treshold": 3}}})
    assert "ingest.scene.content_treshold" in str(e.value)


def test_bad_values_are_named():
    with pytest.raises(ParamsError) as e:
        parse_params({"synth": {"num_videos": 0}, "ingest": {"workers": "many"}})
    msg = str(e.value)
    assert "synth.num_videos" in msg and "ingest.workers" in msg


def test_cross_field_rules():
    with pytest.raises(ParamsError, match="sharpness_min must be <= sharpness_max"):
        parse_params({"qc": {"profiles": {"synthetic": {"sharpness_min": 10, "sharpness_max": 1}}}})
    with pytest.raises(ParamsError, match="profile 'nope'"):
        parse_params({"qc": {"profile": "nope"}})
    with pytest.raises(ParamsError, match="even"):
        parse_params({"synth": {"sizes": [[127, 96]]}})


def test_top_level_must_be_mapping(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(f)


def test_cli_rejects_bad_params_before_work(tmp_path):
    from typer.testing import CliRunner

    from mugv.cli import app

    bad = tmp_path / "params.yaml"
    bad.write_text("synth:\n  num_videos: -3\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", str(out), "--params", str(bad)])
    assert result.exit_code == 2
    assert "synth.num_videos" in result.output
    assert not out.exists()


def test_code_defaults_are_params_yaml():
    """params.yaml is the one source of pipeline values: every section's code defaults equal the file."""
    shipped = load_params(ROOT / "params.yaml")
    defaults = Params()
    for section in Params.model_fields:
        assert getattr(defaults, section).model_dump() == getattr(shipped, section).model_dump(), section
    assert parse_params({}) == shipped


def test_every_params_yaml_key_has_a_code_default():
    """A knob in params.yaml without a code default would make `{}` invalid or differ from the file."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    dumped = Params().model_dump(mode="json")

    def keys(tree, prefix=""):
        if isinstance(tree, dict):
            for k, v in tree.items():
                yield from keys(v, f"{prefix}{k}.")
        else:
            yield prefix.rstrip(".")

    assert set(keys(raw)) <= set(keys(dumped))


def test_importing_the_config_imports_no_torch():
    code = "import sys, mugv.config; assert 'torch' not in sys.modules, 'mugv.config imported torch'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_section_is_written_into_another():
    """Validation never copies one section into another: changing diffusion.training changes only it."""
    base = parse_params({}).model_dump()
    changed = parse_params({"diffusion": {"training": {"caption_dropout": 0.5}}}).model_dump()
    assert changed["diffusion"]["training"]["caption_dropout"] == 0.5
    for section in base:
        if section != "diffusion":
            assert changed[section] == base[section], section
    with pytest.raises(ParamsError, match="pretrain.flow"):
        parse_params({"pretrain": {"flow": {"caption_dropout": 0.5}}})


def test_dead_project_fields_are_gone():
    with pytest.raises(ParamsError, match="project.data_dir"):
        parse_params({"project": {"data_dir": "data"}})
