"""The ingest stage: list, hash and dedup a SOURCE, fan videos out to clip-writing Ray tasks, write the tables."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from mugv.data.config import ClipConfig
from mugv.data.names import CLIP_SCORES_TABLE, CLIPS, CLIPS_TABLE, QUARANTINE_TABLE
from mugv.data.ray_runner import RayConfig
from mugv.section import Section
from mugv.stages import METRICS_DIR, as_dict, numeric_leaves, stage_run, write_key_metrics

if TYPE_CHECKING:
    from mugv.data.quality import Scoring
    from mugv.tracking import TrackingConfig

NAME = "ingest"
METRICS = METRICS_DIR / "ingest.json"  # the key counts, committed (dvc.yaml metrics)
KEY_COUNTS = ("sources_seen", "videos_ingested", "duplicates", "quarantined", "shots_detected", "spans_too_short",
              "clips_written", "clips_scored")


class IngestLimits(Section):
    """What ingest accepts, checked from the container and stream headers before any frame is decoded."""

    max_width: int = Field(4096, ge=2)
    max_height: int = Field(4096, ge=2)
    max_pixels_per_frame: int = Field(4096 * 2304, ge=4, description="width x height (4096 x 2304: DCI and UHD 4K)")
    max_frames: int = Field(216_000, ge=1, description="one hour at 60 fps")
    max_duration_s: float = Field(3600.0, gt=0)
    max_streams: int = Field(16, ge=1, description="all streams of the container: video, audio, subtitles, data")
    min_fps: float = Field(1.0, gt=0, description="a lower frame rate means broken timestamps")
    allowed_codecs: list[str] = Field(
        default=["h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "prores"], min_length=1,
        description="decoders ingest may run (FFmpeg names); others are refused before decoding",
    )
    max_decoded_mb: float = Field(
        2_097_152.0, gt=0, description="RGB bytes one decode pass of a video may produce (2 TiB: an hour of 1080p60); "
        "checked frame by frame, as are the size and frame limits, since headers can lie",
    )
    max_decode_s: float = Field(3600.0, gt=0, description="seconds one video may take; a stalled decode is quarantined")


class Config(ClipConfig):
    """The `ingest` section of params.yaml: probing, dedup, scene split and captions for raw videos."""

    workers: int | None = Field(
        None, ge=1, description="null (the default): an embedded Ray with every core (videos in flight, crashed "
                                "workers retried, servers on 127.0.0.1); N: N CPUs; 1: in this process, no Ray"
    )
    ray: RayConfig = RayConfig(per_task=4)  # four videos a Ray task: a worker idles ~15 ms between tasks
    extensions: list[str] = Field(default=[".mp4", ".mov", ".mkv", ".webm", ".avi"])
    limits: IngestLimits = IngestLimits()
    allowed_buckets: list[str] = Field(default=[], description="S3 buckets a source may come from; [] = any")


def clips_schema():
    """The columns of clips.parquet (a pyarrow schema)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("source_uri", pa.string()),
            ("sha256", pa.string()),
            ("clip_sha256", pa.string()),
            ("path", pa.string()),
            ("shot_index", pa.int32()),
            ("piece", pa.int32()),
            ("start_frame", pa.int64()),
            ("end_frame", pa.int64()),
            ("fps", pa.float64()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("num_frames", pa.int64()),
            ("duration_s", pa.float64()),
            ("source_codec", pa.string()),
            ("caption", pa.string()),
        ]
    )


def clip_scores_schema():
    """The columns of clip_scores.parquet (a pyarrow schema): qc's scores of each clip, and what they are valid for."""
    import pyarrow as pa

    return pa.schema(
        [
            ("clip_id", pa.string()),
            ("clip_sha256", pa.string()),  # the bytes the scores belong to
            ("sharpness", pa.float64()),
            ("motion", pa.float64()),
            ("aesthetic", pa.float64()),
            ("brightness", pa.float64()),
            ("phash", pa.string()),
            ("scored_with", pa.string()),  # quality.Scoring.label
        ]
    )


def quarantine_schema():
    """The columns of quarantine.parquet (a pyarrow schema)."""
    import pyarrow as pa

    return pa.schema([("uri", pa.string()), ("kind", pa.string()), ("reason", pa.string())])


@dataclass
class IngestReport:
    """Counts and output paths of one ingest run.

    Every source entry ends in exactly one bucket: `sources_seen == videos_ingested +
    duplicates + quarantined`. Duplicates also appear in quarantine.parquet (kind
    "duplicate", reason "duplicate of <first uri>") but are not counted as quarantined.
    """

    source: str
    sources_seen: int = 0
    videos_ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    shots_detected: int = 0
    spans_too_short: int = 0
    clips_written: int = 0
    seconds: float = 0.0
    clips_scored: int = 0
    clips_table: str = ""
    quarantine_table: str = ""
    clips_dir: str = ""


def _hash_all(items: list, threads: int, progress) -> list[str | tuple[str, str]]:
    """sha256 of each item, or its (kind, reason) when it cannot be read; threads overlap the I/O."""
    from mugv import storage
    from mugv.data.sources import describe_read_error

    task_id = progress.add_task("hash", total=len(items)) if progress else None

    def one(item) -> str | tuple[str, str]:
        try:
            return storage.sha256(item.uri)
        except Exception as e:  # noqa: BLE001
            return describe_read_error(e) or ("unreadable", f"unreadable: {type(e).__name__}: {e}")
        finally:
            if progress:
                progress.advance(task_id)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, items))


def _write_table(rows: list[dict], schema, dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mugv import storage

    table = pa.Table.from_pylist(rows, schema=schema)
    with storage.atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def _progress(enabled: bool, console):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from mugv.progress import stage_progress

    return stage_progress(
        TextColumn("[bold]ingest[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        enabled=enabled,
        label="ingest",
    )


def _print_report(console, report: IngestReport) -> None:
    from rich.table import Table

    table = Table(title=f"ingest {report.source}", show_header=False)
    for name in KEY_COUNTS:
        table.add_row(name, str(getattr(report, name)))
    for kind, count in sorted(report.quarantined_by_reason.items()):
        table.add_row(f"  quarantined: {kind}", str(count))
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)


def _remove_tasks_dir(tasks_dir: Path, attempts: int = 5) -> None:
    """Remove the task folders. A task the stage gave up on (timed out) may still be writing; once its folder is
    gone it cannot make it again (`clip_writer.task_folder`), so a retry catches a file added while removing."""
    for _ in range(attempts):
        shutil.rmtree(tasks_dir, ignore_errors=True)
        if not tasks_dir.exists():
            return
        time.sleep(0.1)


def _publish_clips(result, out_dir: Path) -> None:
    """Move a video's clips from its task folder into `clips/` (a rename each, on one file system)."""
    staged = Path(result.staged)
    for row in result.rows:
        os.replace(staged / Path(row["path"]).name, out_dir / row["path"])
    staged.rmdir()


def ingest_within_limits(task):
    """`clip_writer.ingest_video` for a source whose headers pass `task.cfg.limits`, decoded within them (frame size,
    frames, decoded bytes, seconds); a refused source is quarantined with the reason, a header refusal before any
    frame is decoded (a worker function: runs as one Ray task per video)."""
    from mugv import storage
    from mugv.data.clip_writer import VideoResult, ingest_video, reason_kind
    from mugv.data.sources import describe_read_error
    from mugv.data.video_io import VideoError, check_limits, decode_budget

    try:
        with storage.local_copy(task.item.uri) as path:
            check_limits(path, task.cfg.limits)
    except VideoError as e:
        return VideoResult(kind=reason_kind(str(e)), reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the stage
        read_error = describe_read_error(e)
        if read_error:
            return VideoResult(kind=read_error[0], reason=read_error[1])
        return VideoResult(kind="ingest failed", reason=f"ingest failed: {type(e).__name__}: {e}")
    with decode_budget(task.cfg.limits):
        return ingest_video(task)


def ingest(source: str, out_dir: Path, cfg: Config, progress: bool = True, scoring: Scoring | None = None) -> IngestReport:
    """Ingest SOURCE (a folder, an s3:// prefix, or a .csv/.jsonl manifest) into `out_dir`.

    Writes `clips/<clip_id>.mp4`, `clips.parquet` (sorted by clip_id), `clip_scores.parquet` (qc's
    scores of each clip under `scoring`, taken from the frames each clip is written from, so that
    qc decodes nothing again; no rows when `scoring` is None) and `quarantine.parquet` (sorted by
    uri), all always, atomically. Exact duplicates (same sha256) are ingested
    once, from the first URI in sort order. `clips/` is left holding exactly the listed clips.
    A bad input is quarantined with a reason and never stops the stage.
    """
    from rich.console import Console

    from mugv.data.clip_writer import TASKS, VideoTask
    from mugv.data.sources import Quarantined, list_source
    from mugv.data.ray_runner import CRASHED, TIMED_OUT, local_cpus, map_tasks, worker_threads

    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / CLIPS).mkdir(parents=True, exist_ok=True)
    console = Console()
    report = IngestReport(source=source)

    listing = list_source(source, cfg.extensions, cfg.allowed_buckets)
    quarantine = list(listing.quarantined)
    report.sources_seen = listing.seen
    threads = worker_threads(cfg.ray, cfg.workers)
    if scoring is not None:
        scoring = replace(scoring, threads=threads)

    with _progress(progress, console) as bar:
        hashes = _hash_all(listing.items, threads=2 * local_cpus(cfg.workers), progress=bar)
        first_of: dict[str, str] = {}
        tasks = []
        for item, digest in zip(listing.items, hashes):
            if isinstance(digest, tuple):
                quarantine.append(Quarantined(item.uri, *digest))
            elif digest in first_of:
                report.duplicates += 1
                quarantine.append(Quarantined(item.uri, "duplicate", f"duplicate of {first_of[digest]}"))
            else:
                first_of[digest] = item.uri
                tasks.append(VideoTask(item, digest, out_dir, cfg, scoring, threads))

        video_bar = bar.add_task("videos", total=len(tasks))
        tasks_dir = out_dir / TASKS  # the workers write each video's clips in a folder of their own under it
        shutil.rmtree(tasks_dir, ignore_errors=True)
        tasks_dir.mkdir()
        try:
            outcomes = map_tasks(ingest_within_limits, tasks, cfg.ray, cfg.workers,
                                 on_done=lambda: bar.advance(video_bar))
            for outcome in outcomes:
                if outcome.result is not None and outcome.result.staged is not None:
                    _publish_clips(outcome.result, out_dir)
        finally:  # the clips of a video that failed, crashed or timed out, and whatever a late task may still write
            _remove_tasks_dir(tasks_dir)

    rows: list[dict] = []
    scores: list[dict] = []
    for task, outcome in zip(tasks, outcomes):
        result = outcome.result
        if result is None:
            error = outcome.error or CRASHED
            kind = {CRASHED: "worker crashed"}.get(error, "timed out" if error.startswith(TIMED_OUT) else "worker error")
            quarantine.append(Quarantined(task.item.uri, kind, error))
        elif result.reason is not None:
            quarantine.append(Quarantined(task.item.uri, result.kind or "ingest failed", result.reason))
        else:
            report.videos_ingested += 1
            report.shots_detected += result.shots
            report.spans_too_short += result.too_short
            rows.extend(result.rows)
            scores.extend(result.scores)

    rows.sort(key=lambda r: r["clip_id"])
    scores.sort(key=lambda r: r["clip_id"])
    quarantine.sort(key=lambda q: (q.uri, q.reason))
    listed = {r["path"] for r in rows}
    for stale in (out_dir / CLIPS).glob("*.mp4"):
        if f"{CLIPS}/{stale.name}" not in listed:
            stale.unlink()

    clips_table, quarantine_table = out_dir / CLIPS_TABLE, out_dir / QUARANTINE_TABLE
    _write_table(rows, clips_schema(), clips_table)
    _write_table(scores, clip_scores_schema(), out_dir / CLIP_SCORES_TABLE)
    _write_table([vars(q) for q in quarantine], quarantine_schema(), quarantine_table)

    counted = [q.kind for q in quarantine if q.kind != "duplicate"]
    report.quarantined = len(counted)
    report.quarantined_by_reason = dict(sorted(Counter(counted).items()))
    report.clips_written = len(rows)
    report.clips_scored = len(scores)
    report.clips_table, report.quarantine_table = str(clips_table), str(quarantine_table)
    report.clips_dir = str(out_dir / CLIPS)
    report.seconds = round(time.perf_counter() - started, 3)
    if progress:
        _print_report(console, report)
    return report


def run(source: str, out_dir: Path, cfg: Config, tracker: TrackingConfig | None = None,
        progress: bool = True, metrics_path: Path | None = None, scoring: Scoring | None = None) -> IngestReport:
    """Ingest SOURCE into `out_dir` (scoring each clip under `scoring`, qc's scorer settings), write the key
    counts to `metrics_path` (None: not written), log all counts (with the seconds taken) and the quarantine to MLflow."""
    from mugv.atomic import staged_dir

    out_dir = Path(out_dir)
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")}, tags={"mugv.source": source}) as tracked:
        with staged_dir(out_dir) as staging:  # published whole: a killed run leaves the previous folder or none
            report = ingest(source, staging, cfg, progress=progress, scoring=scoring)
        report.clips_table, report.quarantine_table = str(out_dir / CLIPS_TABLE), str(out_dir / QUARANTINE_TABLE)
        report.clips_dir = str(out_dir / CLIPS)
        tracked.log_metrics(numeric_leaves(as_dict(report)))
        tracked.log_artifact(out_dir / QUARANTINE_TABLE)
        write_key_metrics(metrics_path, {k: getattr(report, k) for k in KEY_COUNTS})
    return report
