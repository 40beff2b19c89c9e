"""The qc stage end to end on a small generated clip set: keep/reject reasons, outputs, workers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from tests.support.qc_media import STEP, THRESHOLDS, expected_reasons, make_clip_set, tiny_laion_folder

from mugv.data.config import ExpectationsConfig
from mugv.data.expectations import ExpectationsFailed
from mugv.data.qc import decide, failed_filters
from mugv.stages.qc import Config as QCConfig
from mugv.stages.qc import run as run_qc

def qc_config(workers: int = 1, min_kept: int = 1, **kw) -> QCConfig:
    return QCConfig(
        profile="test", profiles={"test": THRESHOLDS}, workers=workers,
        expectations=ExpectationsConfig(min_kept=min_kept), **kw,
    )


def test_failed_filters_lists_every_failure_brightness_first_then_mugv_order():
    scores = {"sharpness": 10.0, "aesthetic": 1.0, "motion": 5.0, "brightness": 5.0}  # fails all but motion
    assert failed_filters(scores, THRESHOLDS) == ["brightness", "sharpness", "aesthetic"]
    nan = dict.fromkeys(scores, float("nan"))
    assert failed_filters(nan, THRESHOLDS) == ["brightness", "sharpness", "aesthetic", "motion"]


def test_dedup_keeps_the_first_kept_clip_in_source_order_and_ignores_rejected_ones():
    good = {"sharpness": 500.0, "aesthetic": 6.0, "motion": 2.0, "brightness": 100.0, "error": None}
    h1, h2 = "ffff0000ffff0000", "0000ffff0000ffff"
    table = pd.DataFrame([
        {"clip_id": "a", **good, "sharpness": 1.0, "phash": h1},  # rejected: does not suppress "b"
        {"clip_id": "b", **good, "phash": h1},
        {"clip_id": "c", **good, "phash": "ffff0000ffff0003"},  # 2 bits from b
        {"clip_id": "d", **good, "phash": h2},
    ])
    out = decide(table, THRESHOLDS, keyframes=1)
    assert [None if pd.isna(r) else r for r in out["reject_reason"]] == ["sharpness", None, "duplicate_of:b", None]
    assert out["keep"].tolist() == [False, True, False, True]
    # source order, not clip_id order, picks the one kept: c's source comes first
    by_source = table.assign(source_uri=["s1", "s2", "s0", "s3"], start_frame=0)
    out = decide(by_source, THRESHOLDS, keyframes=1)
    assert [None if pd.isna(r) else r for r in out["reject_reason"]] == ["sharpness", "duplicate_of:c", None, None]


@pytest.mark.slow
def test_run_qc_end_to_end(tmp_path, local_ray):
    clips = make_clip_set(tmp_path / "ingest")
    out = tmp_path / "qc"
    report = run_qc(tmp_path / "ingest", out, qc_config(workers=2), progress=False,
                    metrics_path=tmp_path / "metrics" / "qc.json")

    qc = pd.read_parquet(out / "qc.parquet").set_index("clip_id")
    got = {cid: None if pd.isna(r) else "unreadable" if r.startswith("unreadable") else r for cid, r in qc["reject_reason"].items()}
    assert got == expected_reasons(), qc[["sharpness", "aesthetic", "motion", "brightness", "reject_reason"]]
    assert set(clips.columns) <= {"clip_id", *qc.columns}
    assert {"sharpness", "motion", "aesthetic", "brightness", "phash", "keep", "failed_filters"} <= set(qc.columns)
    assert qc.loc["c00_good", "keep"] and not qc.loc["c02_static", "keep"]
    assert qc.loc["c00_good", "motion"] == pytest.approx(STEP, rel=0.3)
    assert np.isnan(qc.loc["c08_broken", "sharpness"])
    assert "brightness" in list(qc.loc["c04_dim", "failed_filters"])

    assert report.total == 9 and report.kept == 3 and report.rejected == 6
    assert report.rejected_by_reason == {
        "unreadable": 1, "sharpness": 1, "aesthetic": 1, "motion": 1, "brightness": 1, "duplicate": 1,
    }
    assert report.expectations_passed and report.failed_expectations == []
    metrics = json.loads((tmp_path / "metrics" / "qc.json").read_text())
    assert metrics["kept"] == 3 and metrics["rejected_by_reason"]["duplicate"] == 1
    assert metrics["kept_fraction"] == pytest.approx(3 / 9, rel=1e-5) and metrics["expectations_failed"] == 0
    scores_csv = pd.read_csv(out / "plots" / "scores.csv")
    assert len(scores_csv) == 9 and {"clip_id", "sharpness", "motion", "aesthetic", "brightness"} <= set(scores_csv.columns)
    for score in ("sharpness", "motion", "aesthetic", "brightness"):
        assert (out / "plots" / f"{score}.png").read_bytes()[:4] == b"\x89PNG"
        assert pd.read_csv(out / "plots" / f"hist_{score}.csv")["count"].sum() == 8  # the unreadable clip has no score
    assert json.loads((out / "ge_report.json").read_text())["success"] is True
    assert "PASSED" in (out / "ge_report.md").read_text()
    for path in report.files.values():
        assert (tmp_path / path).exists()

    # one worker decides the same, with the same scores
    single = tmp_path / "qc1"
    run_qc(tmp_path / "ingest", single, qc_config(workers=1), progress=False)
    qc1 = pd.read_parquet(single / "qc.parquet").set_index("clip_id")
    pd.testing.assert_series_equal(qc1["reject_reason"], qc["reject_reason"])
    pd.testing.assert_series_equal(qc1["sharpness"], qc["sharpness"])


@pytest.mark.slow
def test_run_qc_writes_everything_then_raises_when_the_gate_fails(tmp_path):
    make_clip_set(tmp_path / "ingest", captions=False)
    out = tmp_path / "qc"
    with pytest.raises(ExpectationsFailed) as err:
        run_qc(tmp_path / "ingest", out, qc_config(min_kept=5), progress=False)
    assert "caption present on kept clips" in str(err.value)
    assert "kept clips >= 5" in str(err.value)
    for name in ("qc.parquet", "ge_report.json", "ge_report.md", "plots/scores.csv"):
        assert (out / name).exists(), name
    report = json.loads((out / "ge_report.json").read_text())
    assert report["success"] is False
    assert set(report["failed"]) == {"caption present on kept clips", "kept clips >= 5"}
    md = (out / "ge_report.md").read_text()
    assert "FAILED" in md and "c00_good" in md  # a failing example names the clip


def test_run_qc_needs_clip_id_and_path(tmp_path):
    (tmp_path / "in").mkdir()
    pd.DataFrame({"clip_id": ["a"]}).to_parquet(tmp_path / "in" / "clips.parquet")
    with pytest.raises(ValueError, match="path"):
        run_qc(tmp_path / "in", tmp_path / "out", qc_config(), progress=False)


@pytest.mark.slow
def test_run_qc_with_the_laion_scorer(tmp_path):
    make_clip_set(tmp_path / "ingest", only=["c00_good", "c02_static"])
    tiny_laion_folder(tmp_path / "laion")
    th = THRESHOLDS.model_copy(update={"aesthetic_min": -1e9})  # random weights: any score passes
    cfg = QCConfig(
        profile="t", profiles={"t": th}, workers=1, aesthetic_scorer="laion",
        aesthetic_weights=str(tmp_path / "laion"),
    )
    report = run_qc(tmp_path / "ingest", tmp_path / "qc", cfg, progress=False)
    qc = pd.read_parquet(tmp_path / "qc" / "qc.parquet").set_index("clip_id")
    assert report.kept == 1 and qc.loc["c02_static", "reject_reason"] == "motion"
    assert np.isfinite(qc.loc["c00_good", "aesthetic"])
    with pytest.raises(FileNotFoundError, match="clip"):
        run_qc(tmp_path / "ingest", tmp_path / "qc2", cfg.model_copy(update={"aesthetic_weights": str(tmp_path)}), progress=False)


def test_run_qc_on_an_empty_table_writes_outputs_and_fails_min_kept(tmp_path):
    make_clip_set(tmp_path / "in", only=[]).iloc[:0].to_parquet(tmp_path / "in" / "clips.parquet")
    with pytest.raises(ExpectationsFailed, match="kept clips >= 1"):
        run_qc(tmp_path / "in", tmp_path / "out", qc_config(), progress=False, metrics_path=tmp_path / "failed.json")
    assert (tmp_path / "out" / "ge_report.md").exists() and not (tmp_path / "failed.json").exists()
    report = run_qc(tmp_path / "in", tmp_path / "out0", qc_config(min_kept=0), progress=False,
                    metrics_path=tmp_path / "qc.json")
    assert report.total == 0 and report.expectations_passed
    assert json.loads((tmp_path / "qc.json").read_text())["kept_fraction"] == 0
