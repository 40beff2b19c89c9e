"""params.yaml validation: the shipped file is valid; bad keys and values are named before any work."""

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
