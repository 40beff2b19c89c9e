"""The ingest stage: list, hash, dedup, probe, scene-split and caption raw videos into one-shot clips."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mugv import storage
from mugv.config import IngestConfig
from mugv.data.captions import CaptionRequest, make_captioner
from mugv.data.scenes import ClipSpan, detect_shots, plan_clips
from mugv.data.sources import Quarantined, SourceItem, describe_read_error, list_source
from mugv.data.video_io import VideoError, VideoInfo, iter_frames, probe, write_video
from mugv.data.workers import map_isolated

SUPPORTED_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "prores")

CLIPS_SCHEMA = pa.schema(
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
QUARANTINE_SCHEMA = pa.schema([("uri", pa.string()), ("kind", pa.string()), ("reason", pa.string())])


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
    clips_table: str = ""
    quarantine_table: str = ""
    clips_dir: str = ""


@dataclass(frozen=True)
class VideoTask:
    """One unique source video for a worker."""

    item: SourceItem
    sha256: str
    out_dir: Path
    cfg: IngestConfig


@dataclass
class VideoResult:
    """A worker's answer: clip rows, or a quarantine kind and reason."""

    rows: list[dict] = field(default_factory=list)
    shots: int = 0
    too_short: int = 0
    kind: str | None = None
    reason: str | None = None


def clip_id(source_sha256: str, span: ClipSpan) -> str:
    """`<first 16 hex of the source sha256>_<shot:04d>` (+ `_<piece:02d>` for pieces of a long shot)."""
    base = f"{source_sha256[:16]}_{span.shot:04d}"
    return base if span.piece is None else f"{base}_{span.piece:02d}"


def reason_kind(reason: str) -> str:
    """The short kind of a video_io reason: its text before the first ':' or ' ('."""
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


def _sample_indices(span: ClipSpan, k: int) -> set[int]:
    if k <= 0:
        return set()
    return {int(round(x)) for x in np.linspace(span.start, span.end - 1, num=min(k, span.num_frames))}


def _span_frames(
    frames: Iterator[tuple[int, np.ndarray]], span: ClipSpan, width: int, height: int, keep: set[int], sample: list
) -> Iterator[np.ndarray]:
    """Frames of `span` from a shared (index, frame) stream, cropped to width x height; never reads past it."""
    for i, frame in frames:
        if i < span.start:
            continue
        cropped = frame[:height, :width]
        if i in keep:
            sample.append(cropped.copy())
        yield cropped
        if i + 1 >= span.end:
            return


def _checked_info(path: Path, cfg: IngestConfig) -> VideoInfo:
    info = probe(path)
    if info.codec not in SUPPORTED_CODECS:
        raise VideoError(f"unsupported codec: {info.codec} (supported: {', '.join(SUPPORTED_CODECS)})")
    if info.num_frames < cfg.min_frames:
        raise VideoError(f"too short: {info.num_frames} frame(s), min_frames is {cfg.min_frames}")
    if info.width < 2 or info.height < 2:
        raise VideoError(f"too small: {info.width}x{info.height}")
    return info


def _remove_clips(out_dir: Path, sha256: str) -> None:
    for stale in (out_dir / "clips").glob(f"{sha256[:16]}_*.mp4"):
        stale.unlink(missing_ok=True)


def ingest_video(task: VideoTask) -> VideoResult:
    """Probe, split and write the clips of one video; any failure becomes a quarantine reason.

    Runs in a worker process. Clips already written for a video that then fails are removed.
    """
    cfg, item = task.cfg, task.item
    try:
        with storage.local_copy(item.uri) as path:
            info = _checked_info(path, cfg)
            shots = detect_shots(path, cfg.scene, info.num_frames)
            spans, too_short = plan_clips(shots, cfg.min_frames, cfg.max_frames)
            if not spans:
                raise VideoError(f"too short: no shot reaches min_frames={cfg.min_frames} ({len(shots)} shot(s))")
            rows = _write_clips(path, task, info, spans)
        return VideoResult(rows=rows, shots=len(shots), too_short=too_short)
    except VideoError as e:
        _remove_clips(task.out_dir, task.sha256)
        return VideoResult(kind=reason_kind(str(e)), reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the stage
        _remove_clips(task.out_dir, task.sha256)
        read_error = describe_read_error(e)
        if read_error:
            return VideoResult(kind=read_error[0], reason=read_error[1])
        return VideoResult(kind="ingest failed", reason=f"ingest failed: {type(e).__name__}: {e}")


def _write_clips(path: Path, task: VideoTask, info: VideoInfo, spans: list[ClipSpan]) -> list[dict]:
    cfg, item = task.cfg, task.item
    width, height = info.width - info.width % 2, info.height - info.height % 2
    captioner = make_captioner(cfg.captioner)
    frames = enumerate(iter_frames(path))
    rows = []
    for span in spans:
        cid = clip_id(task.sha256, span)
        rel = f"clips/{cid}.mp4"
        dest = task.out_dir / rel
        sample: list[np.ndarray] = []
        keep = _sample_indices(span, captioner.sample_frames)
        with storage.atomic_path(dest) as tmp:
            n = write_video(tmp, _span_frames(frames, span, width, height, keep, sample), info.fps, crf=cfg.crf)
        request = CaptionRequest(
            source_uri=item.uri,
            clip_path=dest,
            start_s=span.start / info.fps,
            end_s=(span.start + n) / info.fps,
            manifest_caption=item.manifest_caption,
            frames=np.stack(sample) if sample else None,
        )
        rows.append(
            {
                "clip_id": cid,
                "source_uri": item.uri,
                "sha256": task.sha256,
                "clip_sha256": storage.sha256(dest),
                "path": rel,
                "shot_index": span.shot,
                "piece": span.piece,
                "start_frame": span.start,
                "end_frame": span.start + n,
                "fps": info.fps,
                "width": width,
                "height": height,
                "num_frames": n,
                "duration_s": n / info.fps,
                "source_codec": info.codec,
                "caption": captioner.caption(request),
            }
        )
    return rows


def _hash_all(items: list[SourceItem], threads: int, progress: Progress | None) -> list[str | tuple[str, str]]:
    """sha256 of each item, or its (kind, reason) when it cannot be read; threads overlap the I/O."""
    task_id = progress.add_task("hash", total=len(items)) if progress else None

    def one(item: SourceItem) -> str | tuple[str, str]:
        try:
            return storage.sha256(item.uri)
        except Exception as e:  # noqa: BLE001
            return describe_read_error(e) or ("unreadable", f"unreadable: {type(e).__name__}: {e}")
        finally:
            if progress:
                progress.advance(task_id)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, items))


def _write_table(rows: list[dict], schema: pa.Schema, dest: Path) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with storage.atomic_path(dest) as tmp:
        pq.write_table(table, tmp)


def _progress(enabled: bool, console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]ingest[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def _print_report(console: Console, report: IngestReport) -> None:
    table = Table(title=f"ingest {report.source}", show_header=False)
    for name in ("sources_seen", "videos_ingested", "duplicates", "quarantined", "shots_detected", "spans_too_short", "clips_written"):
        table.add_row(name, str(getattr(report, name)))
    for kind, count in sorted(report.quarantined_by_reason.items()):
        table.add_row(f"  quarantined: {kind}", str(count))
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)


def run_ingest(source: str, out_dir: Path, cfg: IngestConfig, progress: bool = True) -> IngestReport:
    """Ingest SOURCE (a folder, an s3:// prefix, or a .csv/.jsonl manifest) into `out_dir`.

    Writes `clips/<clip_id>.mp4`, `clips.parquet` (sorted by clip_id) and `quarantine.parquet`
    (sorted by uri), both always, atomically. Exact duplicates (same sha256) are ingested
    once, from the first URI in sort order. `clips/` is left holding exactly the listed clips.
    A bad input is quarantined with a reason and never stops the stage.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    console = Console()
    report = IngestReport(source=source)

    listing = list_source(source, cfg.extensions)
    quarantine: list[Quarantined] = list(listing.quarantined)
    report.sources_seen = listing.seen

    with _progress(progress, console) as bar:
        hashes = _hash_all(listing.items, threads=2 * cfg.workers, progress=bar)
        first_of: dict[str, str] = {}
        tasks: list[VideoTask] = []
        for item, digest in zip(listing.items, hashes):
            if isinstance(digest, tuple):
                quarantine.append(Quarantined(item.uri, *digest))
            elif digest in first_of:
                report.duplicates += 1
                quarantine.append(Quarantined(item.uri, "duplicate", f"duplicate of {first_of[digest]}"))
            else:
                first_of[digest] = item.uri
                tasks.append(VideoTask(item, digest, out_dir, cfg))

        video_bar = bar.add_task("videos", total=len(tasks))
        outcomes = map_isolated(ingest_video, tasks, cfg.workers, on_done=lambda: bar.advance(video_bar))

    rows: list[dict] = []
    for task, outcome in zip(tasks, outcomes):
        result = outcome.result
        if result is None:
            _remove_clips(out_dir, task.sha256)
            quarantine.append(Quarantined(task.item.uri, "worker crashed", f"{outcome.error}"))
        elif result.reason is not None:
            quarantine.append(Quarantined(task.item.uri, result.kind or "ingest failed", result.reason))
        else:
            report.videos_ingested += 1
            report.shots_detected += result.shots
            report.spans_too_short += result.too_short
            rows.extend(result.rows)

    rows.sort(key=lambda r: r["clip_id"])
    quarantine.sort(key=lambda q: (q.uri, q.reason))
    listed = {r["path"] for r in rows}
    for stale in (out_dir / "clips").glob("*.mp4"):
        if f"clips/{stale.name}" not in listed:
            stale.unlink()

    clips_table, quarantine_table = out_dir / "clips.parquet", out_dir / "quarantine.parquet"
    _write_table(rows, CLIPS_SCHEMA, clips_table)
    _write_table([vars(q) for q in quarantine], QUARANTINE_SCHEMA, quarantine_table)

    counted = [q.kind for q in quarantine if q.kind != "duplicate"]
    report.quarantined = len(counted)
    report.quarantined_by_reason = dict(sorted(Counter(counted).items()))
    report.clips_written = len(rows)
    report.clips_table, report.quarantine_table = str(clips_table), str(quarantine_table)
    report.clips_dir = str(out_dir / "clips")
    report.seconds = round(time.perf_counter() - started, 3)
    if progress:
        _print_report(console, report)
    return report
