"""One clip with an absurd fps or size is rejected with its reason; the qc stage and its table gate go on."""

from __future__ import annotations

import pandas as pd
import pytest
from tests.support.qc_media import THRESHOLDS, make_clip_set

from mugv.data.config import ExpectationsConfig
from mugv.data.expectations import ExpectationsFailed, clip_out_of_range
from mugv.stages.qc import Config as QCConfig
from mugv.stages.qc import run as run_qc

GOOD = ["c00_good", "c01_good", "c07_good"]


def _config() -> QCConfig:
    return QCConfig(profile="test", profiles={"test": THRESHOLDS}, workers=1, expectations=ExpectationsConfig(min_kept=1))


def _clip_set(root, edits: dict[str, dict]) -> None:
    make_clip_set(root, only=GOOD)
    table = pd.read_parquet(root / "clips.parquet").set_index("clip_id")
    for clip_id, values in edits.items():
        for column, value in values.items():
            table.loc[clip_id, column] = value
    table.reset_index().to_parquet(root / "clips.parquet", index=False)


def test_out_of_range_clips_are_rejected_with_a_reason_and_the_stage_goes_on(tmp_path):
    _clip_set(tmp_path / "ingest", {"c01_good": {"fps": 575.0}, "c07_good": {"width": 10, "height": 10}})
    report = run_qc(tmp_path / "ingest", tmp_path / "qc", _config(), progress=False, metrics_path=None)
    qc = pd.read_parquet(tmp_path / "qc" / "qc.parquet").set_index("clip_id")
    assert bool(qc.loc["c00_good", "keep"])
    assert not qc.loc["c01_good", "keep"] and qc.loc["c01_good", "reject_reason"] == "out_of_range: fps 575.0 not in [1, 240]"
    assert not qc.loc["c07_good", "keep"] and qc.loc["c07_good", "reject_reason"].startswith("out_of_range: width 10")
    assert report.expectations_passed and report.rejected_by_reason["out_of_range"] == 2


def test_a_table_level_failure_still_fails_the_gate(tmp_path):
    _clip_set(tmp_path / "ingest", {clip: {"fps": 0.0} for clip in GOOD})
    with pytest.raises(ExpectationsFailed, match="kept clips >= 1"):
        run_qc(tmp_path / "ingest", tmp_path / "qc", _config(), progress=False, metrics_path=None)


@pytest.mark.parametrize("row, reason", [
    ({"fps": 24.0, "width": 64, "height": 48, "num_frames": 9}, None),
    ({"fps": float("nan"), "width": 64, "height": 48, "num_frames": 9}, "fps nan"),
    ({"fps": 24.0, "width": 64, "height": 9000, "num_frames": 9}, "height 9000"),
    ({"fps": 24.0, "width": 64, "height": 48, "num_frames": 0}, "num_frames 0"),
    ({"fps": None, "width": 64, "height": 48, "num_frames": 9}, "fps None"),
])
def test_clip_out_of_range_names_the_column(row, reason):
    got = clip_out_of_range(row, ExpectationsConfig())
    assert got is None if reason is None else reason in got
