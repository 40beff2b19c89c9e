"""The Great Expectations gate over the clip table: success, each kind of failure, and the reports."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mugv.data.config import ExpectationsConfig
from mugv.data.expectations import (
    QC_COLUMNS,
    ExpectationsFailed,
    render_markdown,
    validate_clip_table,
    write_reports,
)


def table(n: int = 4) -> pd.DataFrame:
    """A valid scored clip table: n clips, the last one rejected (and without a caption)."""
    rows = []
    for i in range(n):
        kept = i < n - 1
        rows.append({
            "clip_id": f"c{i}", "source_uri": "v.mp4", "sha256": "s" * 64, "clip_sha256": f"{i:064x}",
            "path": f"clips/c{i}.mp4", "start_frame": 10 * i, "end_frame": 10 * i + 10, "fps": 24.0,
            "width": 128, "height": 96, "num_frames": 10, "duration_s": 10 / 24,
            "caption": f"shot {i}" if kept else None,
            "sharpness": 500.0, "motion": 2.0, "aesthetic": 6.0, "brightness": 100.0,
            "phash": "0" * 16, "keep": kept, "reject_reason": None if kept else "motion",
        })
    return pd.DataFrame(rows)


CFG = ExpectationsConfig(min_kept=2)


def test_valid_table_passes_every_expectation():
    report = validate_clip_table(table(), CFG)
    assert report.success and report.failed == []
    names = [o.name for o in report.outcomes]
    assert names[0] == "columns present" and "kept clips >= 2" in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "corrupt, failed_name, example",
    [
        (lambda df: df.assign(clip_id=["c0", "c0", "c2", "c3"]), "clip_id unique", "c0"),
        (lambda df: df.assign(clip_sha256=["a", "a", "b", "c"]), "clip_sha256 unique", "a"),
        (lambda df: df.assign(caption=[None, "x", "y", None]), "caption present on kept clips", "c0"),
        (lambda df: df.assign(caption=["x", "  ", "y", None]), "caption not empty on kept clips", "c1"),
        (lambda df: df.assign(fps=[24.0, 24.0, 500.0, 24.0]), "fps in [1, 240]", "c2"),
        (lambda df: df.assign(width=[128, 8, 128, 128]), "width in [16, 8192]", "c1"),
        (lambda df: df.assign(num_frames=[10, 0, 10, 10]), "num_frames >= 1", "c1"),
        (lambda df: df.assign(motion=[2.0, float("inf"), 2.0, 2.0]), "motion finite", "c1"),
        (lambda df: df.assign(aesthetic=[6.0, float("nan"), 6.0, 6.0]), "aesthetic present on kept clips", "c1"),
        (lambda df: df.assign(keep=[True, False, False, False]), "kept clips >= 2", None),
        (lambda df: df.drop(columns=["clip_sha256"]), "columns present", "clip_sha256"),
    ],
)
def test_each_broken_rule_is_named_with_examples(corrupt, failed_name, example):
    report = validate_clip_table(corrupt(table()), CFG)
    assert not report.success
    assert failed_name in report.failed
    outcome = next(o for o in report.outcomes if o.name == failed_name)
    if example is not None:
        assert example in json.dumps([outcome.examples, outcome.observed])


def test_a_missing_caption_on_a_rejected_clip_is_fine():
    df = table()
    assert pd.isna(df.loc[3, "caption"]) and not df.loc[3, "keep"]
    assert validate_clip_table(df, CFG).success


def test_reports_are_strict_json_and_readable_markdown(tmp_path):
    df = table().assign(clip_id=["c0", "c0", "c2", "c3"], sharpness=[float("nan"), 1.0, 1.0, 1.0])
    report = validate_clip_table(df, CFG)
    json_path, md_path = write_reports(report, tmp_path, rows=len(df))

    def no_constants(name):
        raise AssertionError(f"non-JSON constant {name}")

    saved = json.loads(json_path.read_text(), parse_constant=no_constants)
    assert saved["success"] is False
    assert set(saved["failed"]) == {"clip_id unique", "sharpness present on kept clips"}
    assert saved["gx_result"]["statistics"]["evaluated_expectations"] == len(report.outcomes)
    md = md_path.read_text()
    assert md == render_markdown(report, rows=4)
    assert "**FAILED**" in md and md.count("**FAIL**") == 2
    assert "clip_id unique" in md and '"clip_id": "c0"' in md


def test_expectations_failed_names_every_failure():
    err = ExpectationsFailed(["clip_id unique", "kept clips >= 2"], "out/ge_report.md")
    assert "clip_id unique" in str(err) and "kept clips >= 2" in str(err)
    assert err.failed == ["clip_id unique", "kept clips >= 2"]


def test_qc_columns_are_the_input_contract_plus_scores():
    assert QC_COLUMNS[:13] == (
        "clip_id", "source_uri", "sha256", "clip_sha256", "path", "start_frame", "end_frame",
        "fps", "width", "height", "num_frames", "duration_s", "caption",
    )
    assert set(table().columns) == set(QC_COLUMNS)
