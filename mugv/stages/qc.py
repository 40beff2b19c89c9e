"""The qc stage: score clips, decide keep/reject, gate with Great Expectations, write and log the results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from mugv.data.config import QC_PROFILES, ExpectationsConfig, QCThresholds
from mugv.data.names import CLIP_SCORES_TABLE, CLIPS_TABLE, QC_TABLE
from mugv.data.ray_runner import RayConfig
from mugv.section import Section
from mugv.stages import METRICS_DIR, as_dict, numeric_leaves, stage_run, write_key_metrics

if TYPE_CHECKING:
    from mugv.data.quality import ClipScores, Scoring
    from mugv.tracking import TrackingConfig

NAME = "qc"
METRICS = METRICS_DIR / "qc.json"  # the key counts, committed (dvc.yaml metrics)
PLOTS = "plots"
GE_REPORT_JSON = "ge_report.json"
GE_REPORT_MD = "ge_report.md"
REQUIRED_INPUT = ("clip_id", "path")


class Config(Section):
    """The `qc` section of params.yaml: per-clip scores and the keep decision; `profile` picks a threshold set."""

    profile: str = "synthetic"
    profiles: dict[str, QCThresholds] = Field(default_factory=lambda: dict(QC_PROFILES))
    aesthetic_scorer: Literal["heuristic", "laion"] = "heuristic"
    aesthetic_weights: str | None = Field(None, description="path to LAION predictor + CLIP weights (laion scorer)")
    motion_pairs: int = Field(3, ge=1)
    workers: int | None = Field(
        None, ge=1, description="null (the default): an embedded Ray with every core (clips in flight, crashed "
                                "workers retried, servers on 127.0.0.1); N: N CPUs; 1: in this process, no Ray"
    )
    ray: RayConfig = RayConfig()
    expectations: ExpectationsConfig = ExpectationsConfig()

    @model_validator(mode="after")
    def _profile_exists(self) -> "Config":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of {sorted(self.profiles)}")
        return self

    @property
    def thresholds(self) -> QCThresholds:
        return self.profiles[self.profile]

    def scoring(self, threads: int = 0) -> Scoring:
        """How clips are scored (ingest scores them under the same settings as it writes them)."""
        from mugv.data.quality import Scoring

        return Scoring(samples=self.motion_pairs, scorer=self.aesthetic_scorer, weights=self.aesthetic_weights,
                       threads=threads)


@dataclass
class QCReport:
    """What the qc stage did: counts, the expectations verdict and the files it wrote."""

    total: int
    kept: int
    rejected: int
    rejected_by_reason: dict[str, int]
    expectations_passed: bool
    failed_expectations: list[str]
    expectations_evaluated: int = 0
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 0.0

    def key_metrics(self) -> dict:
        """The numbers the committed metrics file holds: counts, the kept fraction, rejections by reason, the gate."""
        return {
            "total": self.total, "kept": self.kept, "rejected": self.rejected, "kept_fraction": self.kept_fraction,
            "rejected_by_reason": self.rejected_by_reason,
            "expectations_evaluated": self.expectations_evaluated,
            "expectations_failed": len(self.failed_expectations),
        }


def _frames_or_none(value) -> int | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else int(value)


def ingest_scores(clips, clips_dir: Path, scoring: Scoring) -> dict[str, ClipScores]:
    """The scores ingest computed as it wrote the clips (clip_scores.parquet), for each clip scored under the same
    settings whose file still holds the bytes they were computed for (sha256 checked); none when the table is absent."""
    import pandas as pd

    from mugv import storage
    from mugv.data.quality import ClipScores

    path = clips_dir / CLIP_SCORES_TABLE
    if not path.is_file():
        return {}
    table = pd.read_parquet(path)
    if "scored_with" not in table.columns:
        return {}
    by_id = {str(r["clip_id"]): r for r in table[table["scored_with"] == scoring.label].to_dict("records")}
    found = {}
    for clip_id, rel in zip(clips["clip_id"], clips["path"]):
        row, file = by_id.get(clip_id), clips_dir / str(rel)
        if row is not None and file.is_file() and storage.sha256(file) == row.get("clip_sha256"):
            found[clip_id] = ClipScores.from_row(row)
    return found


def score_table(clips, clips_dir: Path, cfg: Config, progress: bool = True):
    """Scores of every clip, row for row with `clips` (an `error` column for unreadable ones).

    Scores ingest computed for the same bytes are taken as they are (`ingest_scores`); every
    other clip is decoded and scored, one Ray task per clip (`cfg.workers` CPUs; 1 = this
    process): a decoder that kills its process (after `cfg.ray.max_retries` re-runs) or a
    decode past `cfg.ray.task_timeout_s` makes that clip unreadable. Any other exception
    escaping the scorer is a bug or a bad scorer setup and stops the stage.
    """
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from mugv.data.aesthetic import laion_weight_files
    from mugv.data.quality import ClipScores, ScoreTask, score_task
    from mugv.data.ray_runner import CRASHED, TIMED_OUT, map_tasks, worker_threads
    from mugv.progress import stage_progress

    if cfg.aesthetic_scorer == "laion":
        laion_weight_files(cfg.aesthetic_weights)  # fail before starting workers
    scoring = cfg.scoring(threads=worker_threads(cfg.ray, cfg.workers))
    found = ingest_scores(clips, clips_dir, scoring)
    tasks = [
        ScoreTask(clip_id=str(r.clip_id), path=str(clips_dir / r.path),
                  num_frames=_frames_or_none(getattr(r, "num_frames", None)), scoring=scoring)
        for r in clips.itertuples(index=False) if str(r.clip_id) not in found
    ]
    columns = [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with stage_progress(TextColumn("qc: scoring clips"), *columns, enabled=progress, label="qc") as bar:
        task_id = bar.add_task("scoring clips", total=len(tasks))
        outcomes = map_tasks(score_task, tasks, cfg.ray, cfg.workers, on_done=lambda: bar.advance(task_id))
    for task, outcome in zip(tasks, outcomes):
        if outcome.error == CRASHED or (outcome.error or "").startswith(TIMED_OUT):
            found[task.clip_id] = ClipScores(clip_id=task.clip_id, error=f"unreadable: {outcome.error}")
        elif outcome.error is not None:
            raise RuntimeError(f"qc: scoring clip {task.clip_id} failed: {outcome.error}")
        else:
            found[task.clip_id] = outcome.result
    results = [found[str(cid)] for cid in clips["clip_id"]]
    return pd.DataFrame([r.as_dict() for r in results], columns=list(ClipScores.__dataclass_fields__))


def qc(clips_dir: Path, out_dir: Path, cfg: Config, progress: bool = True) -> QCReport:
    """Score `clips_dir/clips.parquet`, decide keep/reject, write outputs to `out_dir`, gate with GX.

    Writes qc.parquet, plots/ and ge_report.{json,md}; a failing expectation suite raises
    ExpectationsFailed after everything is written.
    """
    import pandas as pd

    from mugv.data.expectations import (
        OUT_OF_RANGE,
        ExpectationsFailed,
        quarantine_out_of_range,
        validate_clip_table,
        write_reports,
    )
    from mugv.data.qc import count_reasons, decide, start_reporting_imports, write_parquet, write_plots

    started = time.perf_counter()
    clips_dir, out_dir = Path(clips_dir), Path(out_dir)
    clips = pd.read_parquet(clips_dir / CLIPS_TABLE)
    missing = [c for c in REQUIRED_INPUT if c not in clips.columns]
    if missing:
        raise ValueError(f"{clips_dir / CLIPS_TABLE} lacks column(s) {missing}")
    clips = clips.astype({"clip_id": str}).sort_values("clip_id", kind="stable").reset_index(drop=True)

    th = cfg.thresholds
    reporting_imports = start_reporting_imports()
    scores = score_table(clips, clips_dir, cfg, progress=progress)
    scored = pd.concat([clips, scores.drop(columns=["clip_id"])], axis=1)
    scored = quarantine_out_of_range(scored, cfg.expectations)  # one bad clip is rejected, not the table
    decided = decide(scored, th, keyframes=cfg.motion_pairs).drop(columns=["error"])

    reporting_imports.join()
    gate = validate_clip_table(decided, cfg.expectations)
    rejected_by_reason = count_reasons(decided)
    out_of_range = sum(isinstance(r, str) and r.startswith(OUT_OF_RANGE) for r in decided["reject_reason"])
    if out_of_range:
        rejected_by_reason[OUT_OF_RANGE] = out_of_range
    kept = int(decided["keep"].sum())
    qc_path = out_dir / QC_TABLE
    write_parquet(decided, qc_path)
    plots = write_plots(decided, th, out_dir / PLOTS)
    ge_json, ge_md = write_reports(gate, out_dir, rows=len(decided))
    if not gate.success:
        raise ExpectationsFailed(gate.failed, ge_md)
    files = {"qc": qc_path, "ge_report_json": ge_json, "ge_report_md": ge_md}
    files.update({p.stem if p.suffix == ".csv" else f"{p.stem}_png": p for p in plots})
    return QCReport(
        total=len(decided),
        kept=kept,
        rejected=len(decided) - kept,
        rejected_by_reason=rejected_by_reason,
        expectations_passed=gate.success,
        failed_expectations=gate.failed,
        expectations_evaluated=len(gate.outcomes),
        files={k: str(v) for k, v in files.items()},
        seconds=time.perf_counter() - started,
    )


def _log_files(tracked, out_dir: Path) -> None:
    for name in (GE_REPORT_MD, GE_REPORT_JSON, QC_TABLE):
        tracked.log_artifact(out_dir / name, NAME)
    tracked.log_artifact(out_dir / PLOTS, f"{NAME}/{PLOTS}")


def run(clips_dir: Path, out_dir: Path, cfg: Config, tracker: TrackingConfig | None = None,
        progress: bool = True, metrics_path: Path | None = None) -> QCReport:
    """Run qc on ingest's output, write the key counts to `metrics_path` (None: not written) and log the
    outcome, the expectations verdict and the files to MLflow.

    A failing expectation suite is tagged and logged, then ExpectationsFailed propagates.
    """
    from mugv.atomic import staged_dir
    from mugv.data.expectations import ExpectationsFailed

    out_dir = Path(out_dir)
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")}) as tracked:
        try:  # published whole (a failed gate's too): a killed run leaves the previous folder or none, never a mix
            with staged_dir(out_dir, publish_on=(ExpectationsFailed,)) as staging:
                report = qc(clips_dir, staging, cfg, progress=progress)
            report.files = {k: str(out_dir / Path(v).relative_to(staging)) for k, v in report.files.items()}
        except ExpectationsFailed:
            _log_files(tracked, out_dir)
            tracked.set_tags({"mugv.expectations": "failed"})
            raise
        tracked.set_tags({"mugv.expectations": "passed"})
        tracked.log_metrics({**numeric_leaves(as_dict(report)), "kept_fraction": report.kept_fraction})
        _log_files(tracked, out_dir)
        write_key_metrics(metrics_path, report.key_metrics())
    return report
