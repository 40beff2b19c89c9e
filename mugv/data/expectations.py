"""The Great Expectations gate over the scored clip table, with JSON and Markdown reports."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mugv.data.config import ExpectationsConfig
from mugv.storage import write_text

CLIP_COLUMNS = (
    "clip_id", "source_uri", "sha256", "clip_sha256", "path", "start_frame", "end_frame",
    "fps", "width", "height", "num_frames", "duration_s", "caption",
)
SCORE_COLUMNS = ("sharpness", "motion", "aesthetic", "brightness")
QC_COLUMNS = (*CLIP_COLUMNS, *SCORE_COLUMNS, "phash", "keep", "reject_reason")
KEPT = "keep == True"
EXAMPLES = 10


class ExpectationsFailed(Exception):
    """The clip table failed its suite; `failed` names each failed expectation (reports are written)."""

    def __init__(self, failed: list[str], report_md: Path | str):
        self.failed = failed
        self.report_md = str(report_md)
        super().__init__(f"{len(failed)} expectation(s) failed: " + "; ".join(failed))


@dataclass
class ExpectationOutcome:
    """One expectation's verdict in report form."""

    name: str
    type: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    examples: list[Any] = field(default_factory=list)
    error: str | None = None


@dataclass
class ExpectationsReport:
    """The suite's verdict: overall success plus one outcome per expectation, in suite order."""

    success: bool
    outcomes: list[ExpectationOutcome]
    raw: dict

    @property
    def failed(self) -> list[str]:
        return [o.name for o in self.outcomes if not o.success]


OUT_OF_RANGE = "out_of_range"


def clip_out_of_range(row: dict, cfg: ExpectationsConfig) -> str | None:
    """Why one clip's fps, size or frame count is outside the suite's ranges (`out_of_range: ...`), or None.

    Per-clip problems reject that clip (qc quarantines it with this reason); they never fail the whole table."""
    lo, hi = cfg.fps_range
    checks = [("fps", lo, hi), ("width", cfg.min_side, cfg.max_side), ("height", cfg.min_side, cfg.max_side),
              ("num_frames", 1, math.inf)]
    for column, low, high in checks:
        value = row.get(column)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not low <= number <= high:  # NaN fails too
            return f"{OUT_OF_RANGE}: {column} {value} not in [{low:g}, {high:g}]"
    return None


def quarantine_out_of_range(table: pd.DataFrame, cfg: ExpectationsConfig) -> pd.DataFrame:
    """`table` with the `error` of each readable clip that `clip_out_of_range` names set to its reason."""
    reasons = [None if isinstance(error, str) else clip_out_of_range(row, cfg)
               for error, row in zip(table["error"], table.to_dict("records"))]
    if not any(reasons):
        return table
    error = [reason or current for reason, current in zip(reasons, table["error"])]
    return table.assign(error=pd.Series(error, index=table.index, dtype=object))


def _expectations(cfg: ExpectationsConfig) -> list[tuple[str, Any]]:
    """(name, expectation) pairs of the suite; names are what reports and errors show.

    Table-level facts (schema, unique ids, enough kept clips) hold over every row; per-clip ranges (fps, sizes,
    frames, finite scores) over the kept clips: qc rejects an out-of-range clip with its reason first
    (`quarantine_out_of_range`), so one bad clip never fails the table."""
    import great_expectations as gx

    ex = gx.expectations
    kept = {"row_condition": KEPT, "condition_parser": "pandas"}
    finite = {"min_value": -sys.float_info.max, "max_value": sys.float_info.max}
    lo, hi = cfg.fps_range
    items: list[tuple[str, Any]] = [
        ("columns present", ex.ExpectTableColumnsToMatchSet(column_set=list(QC_COLUMNS), exact_match=False)),
        ("clip_id not null", ex.ExpectColumnValuesToNotBeNull(column="clip_id")),
        ("clip_id unique", ex.ExpectColumnValuesToBeUnique(column="clip_id")),
        ("clip_sha256 unique", ex.ExpectColumnValuesToBeUnique(column="clip_sha256")),
        (f"fps in [{lo:g}, {hi:g}]",
         ex.ExpectColumnValuesToBeBetween(column="fps", min_value=lo, max_value=hi, **kept)),
    ]
    for side in ("width", "height"):
        items.append((
            f"{side} in [{cfg.min_side}, {cfg.max_side}]",
            ex.ExpectColumnValuesToBeBetween(column=side, min_value=cfg.min_side, max_value=cfg.max_side, **kept),
        ))
    items.append(("num_frames >= 1",
                  ex.ExpectColumnValuesToBeBetween(column="num_frames", min_value=1, **kept)))
    for score in SCORE_COLUMNS:
        items.append((f"{score} present on kept clips", ex.ExpectColumnValuesToNotBeNull(column=score, **kept)))
        items.append((f"{score} finite", ex.ExpectColumnValuesToBeBetween(column=score, **finite, **kept)))
    items += [
        ("caption present on kept clips", ex.ExpectColumnValuesToNotBeNull(column="caption", **kept)),
        ("caption not empty on kept clips", ex.ExpectColumnValuesToMatchRegex(column="caption", regex=r"\S", **kept)),
        (f"kept clips >= {cfg.min_kept}", ex.ExpectTableRowCountToBeBetween(min_value=cfg.min_kept, **kept)),
    ]
    for name, expectation in items:
        expectation.description = name
    return items


def _json_safe(value: Any) -> Any:
    """NaN/inf -> strings, numpy scalars -> Python: strict JSON for MLflow and `json.loads`."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _exception_message(info: dict) -> str | None:
    if info.get("raised_exception"):
        return info.get("exception_message")
    for nested in info.values():  # metric errors come keyed by metric id
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return nested.get("exception_message")
    return None


def _outcome(name: str, result: dict) -> ExpectationOutcome:
    config, res = result["expectation_config"], result.get("result") or {}
    observed = res.get("observed_value")
    if "details" in res:  # e.g. the missing columns: shown before the (long) observed value
        observed = {**res["details"], "observed": observed}
    elif observed is None and "element_count" in res:
        observed = f"{res['element_count']} rows checked"
    return ExpectationOutcome(
        name=name,
        type=config["type"],
        column=config["kwargs"].get("column"),
        success=bool(result["success"]),
        observed=observed,
        unexpected_count=res.get("unexpected_count"),
        examples=list(res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or [])[:EXAMPLES],
        error=_exception_message(result.get("exception_info") or {}),
    )


def import_gx():
    """The `great_expectations` module, analytics off. Its first import costs seconds (pydantic class
    building), so qc calls this early in a thread, overlapping that fixed cost with the scoring."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def validate_clip_table(df: pd.DataFrame, cfg: ExpectationsConfig) -> ExpectationsReport:
    """Run the suite on the scored clip table (qc.parquet's rows) in an ephemeral GX context."""
    gx = import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("qc")
        .add_dataframe_asset("clips")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df.reset_index(drop=True)})
    )
    items = _expectations(cfg)
    suite = gx.ExpectationSuite(name="mugv_clip_table", expectations=[e for _, e in items])
    index_columns = ["clip_id"] if "clip_id" in df.columns else []
    result = batch.validate(
        suite, result_format={"result_format": "SUMMARY", "unexpected_index_column_names": index_columns}
    )
    raw = _without_load_time(_json_safe(result.to_json_dict()))
    by_name = {r["expectation_config"].get("description"): r for r in raw["results"]}
    outcomes = [_outcome(name, by_name[name]) for name, _ in items]
    return ExpectationsReport(success=all(o.success for o in outcomes), outcomes=outcomes, raw=raw)


def _without_load_time(raw: dict) -> dict:
    """GX's result less the wall-clock time it loaded the batch at, so the same table gives the same report."""
    markers = raw.get("meta", {}).get("batch_markers", {})
    markers.pop("ge_load_time", None)
    return raw


def _cell(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render_markdown(report: ExpectationsReport, rows: int) -> str:
    """A readable report: verdict, then one table row per expectation with failing examples."""
    failed = report.failed
    lines = [
        "# Clip table expectations",
        "",
        f"**{'PASSED' if report.success else 'FAILED'}**: {len(report.outcomes) - len(failed)}"
        f"/{len(report.outcomes)} expectations met over {rows} clips.",
        "",
        "| # | expectation | result | observed | unexpected | failing examples |",
        "|---|---|---|---|---|---|",
    ]
    for i, o in enumerate(report.outcomes, 1):
        examples = f"error: {o.error}" if o.error else (o.examples or "")
        lines.append(
            f"| {i} | {_cell(o.name)} (`{o.type}`) | {'pass' if o.success else '**FAIL**'} "
            f"| {'' if o.observed is None else _cell(o.observed)} "
            f"| {'' if o.unexpected_count is None else o.unexpected_count} | {_cell(examples) if examples else ''} |"
        )
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
    return "\n".join(lines) + "\n"


def write_reports(report: ExpectationsReport, out_dir: str | Path, rows: int) -> tuple[Path, Path]:
    """Write `ge_report.json` (summary + GX's full result) and `ge_report.md` atomically."""
    out = Path(out_dir)
    summary = {
        "success": report.success,
        "failed": report.failed,
        "outcomes": [asdict(o) for o in report.outcomes],
        "gx_result": report.raw,
    }
    json_path, md_path = out / "ge_report.json", out / "ge_report.md"
    write_text(json_path, json.dumps(_json_safe(summary), indent=2, default=str) + "\n")
    write_text(md_path, render_markdown(report, rows))
    return json_path, md_path
