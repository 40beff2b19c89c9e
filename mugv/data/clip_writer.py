"""One source video into clip files and table rows: probe + scene split in one decode, H.264 clips (a whole source copied, others encoded), captions (runs in a worker)."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from mugv import storage
from mugv.data.config import ClipConfig
from mugv.data.quality import Scoring, frames_to_score, score_frames, scorer_for
from mugv.data.captions import CaptionRequest, Captioner, make_captioner
from mugv.data.scenes import ClipSpan, ShotDetector, plan_clips
from mugv.data.sources import SourceItem, describe_read_error
from mugv.data.video_io import VideoError, VideoInfo, copy_video_stream, iter_frames, probed_frames, write_video

SUPPORTED_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "prores")


@dataclass(frozen=True)
class VideoTask:
    """One unique source video for a worker."""

    item: SourceItem
    sha256: str
    out_dir: Path
    cfg: ClipConfig
    scoring: Scoring | None = None  # score each clip from the frames it is written from (qc then decodes nothing)
    threads: int = 0  # > 0: OpenCV threads of the worker process, so that workers share the cores (0: its default)


@dataclass
class VideoResult:
    """A worker's answer: clip rows, or a quarantine kind and reason."""

    rows: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)  # clip_id, clip_sha256, the ClipScores fields, scored_with
    shots: int = 0
    too_short: int = 0
    kind: str | None = None
    reason: str | None = None
    staged: str | None = None  # the task folder holding the clip files of `rows`, for the driver to publish


def clip_id(source_sha256: str, span: ClipSpan) -> str:
    """`<first 16 hex of the source sha256>_<shot:04d>` (+ `_<piece:02d>` for pieces of a long shot)."""
    base = f"{source_sha256[:16]}_{span.shot:04d}"
    return base if span.piece is None else f"{base}_{span.piece:02d}"


def reason_kind(reason: str) -> str:
    """The short kind of a video_io reason: its text before the first ':' or ' ('."""
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


@lru_cache(maxsize=None)
def worker_captioner(name: str) -> Captioner:
    """One captioner per process and backend name, so a model-backed one loads once per worker."""
    return make_captioner(name)  # type: ignore[arg-type]


def _sample_indices(span: ClipSpan, k: int) -> set[int]:
    if k <= 0:
        return set()
    return {int(round(x)) for x in np.linspace(span.start, span.end - 1, num=min(k, span.num_frames))}


def _span_frames(
    frames: Iterator[tuple[int, np.ndarray]], span: ClipSpan, width: int, height: int, keep: set[int],
    kept: dict[int, np.ndarray],
) -> Iterator[np.ndarray]:
    """Frames of `span` from a shared (index, frame) stream, cropped to width x height; never reads past it.
    Copies of the frames at the source indices in `keep` go to `kept`."""
    for i, frame in frames:
        if i < span.start:
            continue
        cropped = frame[:height, :width]
        if i in keep:
            kept[i] = cropped.copy()
        yield cropped
        if i + 1 >= span.end:
            return


def _check(info: VideoInfo, cfg: ClipConfig) -> None:
    if info.codec not in SUPPORTED_CODECS:
        raise VideoError(f"unsupported codec: {info.codec} (supported: {', '.join(SUPPORTED_CODECS)})")
    if info.num_frames < cfg.min_frames:
        raise VideoError(f"too short: {info.num_frames} frame(s), min_frames is {cfg.min_frames}")
    if info.width < 2 or info.height < 2:
        raise VideoError(f"too small: {info.width}x{info.height}")


@dataclass
class ScanResult:
    """The one decode pass over a source: what probe learns, the shots, and the frames if they fit."""

    info: VideoInfo
    shots: list[tuple[int, int]]
    frames: list[np.ndarray] | None  # None when over cfg.frame_cache_mb: decode again to write


# Frames are handed to the shot detector in runs of up to this many bytes rather than one by one as they decode:
# on clip-sized frames its per-frame Python work then runs with warm caches, which halves its CPU time (measured at
# 80x48: 75 -> 40 us a frame). Cuts do not change, since the detector sees the same frames in the same order.
DETECT_RUN_BYTES = 4 * 2**20


def scan(path: Path, cfg: ClipConfig) -> ScanResult:
    """Decode a source once: count its frames (probe's rules: truncated tails end it, nothing
    decodable is an error), feed the shot detector, and keep the frames within the cache budget."""
    detector: ShotDetector | None = None
    cache: list[np.ndarray] | None = []
    run: list[np.ndarray] = []
    cached_bytes = run_bytes = 0
    width = height = n = 0
    with probed_frames(path) as (header, frames):
        for frame in frames:
            if detector is None:
                height, width = frame.shape[:2]
                detector = ShotDetector(cfg.scene, header.fps, width, height)
            run.append(frame)
            run_bytes += frame.nbytes
            if run_bytes >= DETECT_RUN_BYTES:
                detector.add_all(run)
                run, run_bytes = [], 0
            n += 1
            if cache is not None:
                cached_bytes += frame.nbytes
                cache.append(frame)
                if cached_bytes > cfg.frame_cache_mb * 2**20:
                    cache = None
    assert detector is not None  # probed_frames raises when no frame decodes
    detector.add_all(run)
    info = VideoInfo(codec=header.codec, width=width, height=height, fps=header.fps, num_frames=n, duration_s=n / header.fps)
    _check(info, cfg)
    return ScanResult(info, detector.shots(n), cache)


TASKS = ".tasks"  # under the stage's output folder: one private folder per run of a video's task


def task_folder(out_dir: Path, sha256: str) -> Path:
    """A new folder under `out_dir/.tasks` for the clips of one run of one video's task. Clips are written there and
    published into `clips/` by the driver, only for results it accepts; it removes `.tasks` when it is done. The
    folder is made without its parents, so a task still running after the stage gave up on it (a time limit whose
    cancellation came too late) fails to write instead of leaving files where the stage has finished."""
    folder = out_dir / TASKS / f"{sha256[:16]}-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    return folder


def ingest_video(task: VideoTask) -> VideoResult:
    """Probe and split one video in one decode pass, then write its clips; any failure becomes a
    quarantine reason.

    Runs in a worker process. The clips are written into a new task folder (`task_folder`), named in the result as
    `staged`; a video that fails has its folder removed.
    """
    cfg, item = task.cfg, task.item
    if task.threads > 0:
        cv2.setNumThreads(task.threads)
    work: Path | None = None
    try:
        work = task_folder(task.out_dir, task.sha256)
        with storage.local_copy(item.uri) as path:
            scanned = scan(path, cfg)
            spans, too_short = plan_clips(scanned.shots, cfg.min_frames, cfg.max_frames)
            if not spans:
                raise VideoError(
                    f"too short: no shot reaches min_frames={cfg.min_frames} ({len(scanned.shots)} shot(s))"
                )
            if scanned.frames is not None:
                written = _write_clips(scanned.frames, task, scanned.info, spans, path, work)
            else:
                with contextlib.closing(iter_frames(path)) as decoded:
                    written = _write_clips(decoded, task, scanned.info, spans, path, work)
        rows = [row for row, _ in written]
        scores = [score for _, score in written if score is not None]
        return VideoResult(rows=rows, scores=scores, shots=len(scanned.shots), too_short=too_short, staged=str(work))
    except VideoError as e:
        _discard(work)
        return VideoResult(kind=reason_kind(str(e)), reason=str(e))
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the stage
        _discard(work)
        read_error = describe_read_error(e)
        if read_error:
            return VideoResult(kind=read_error[0], reason=read_error[1])
        return VideoResult(kind="ingest failed", reason=f"ingest failed: {type(e).__name__}: {e}")


def _discard(work: Path | None) -> None:
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


def _write_clips(
    decoded: Iterable[np.ndarray], task: VideoTask, info: VideoInfo, spans: list[ClipSpan], source: Path, work: Path
) -> list[tuple[dict, dict | None]]:
    """Write every span as a clip into `work` from one in-order stream of the source's frames (`source`: the file
    they were decoded from); return each table row and scores."""
    captioner = worker_captioner(task.cfg.captioner)
    width, height = info.width - info.width % 2, info.height - info.height % 2  # H.264 4:2:0 needs even sizes
    frames = enumerate(decoded)
    return [
        _write_clip(frames, span, task, info, width, height, captioner, work,
                    source if _is_whole(span, info, task.cfg) else None)
        for span in spans
    ]


def _is_whole(span: ClipSpan, info: VideoInfo, cfg: ClipConfig) -> bool:
    """Whether the clip is its whole source, uncropped, and may be copied from it (`copy_whole_sources`)."""
    even = info.width % 2 == 0 and info.height % 2 == 0
    return cfg.copy_whole_sources and even and span.start == 0 and span.end == info.num_frames


def _write_clip(
    frames: Iterator[tuple[int, np.ndarray]],
    span: ClipSpan,
    task: VideoTask,
    info: VideoInfo,
    width: int,
    height: int,
    captioner: Captioner,
    work: Path,
    copy_from: Path | None = None,
) -> tuple[dict, dict | None]:
    """Write one span into `work`: copied from `copy_from` when given and copyable (see `copy_video_stream`), else
    encoded from the shared frame stream, which it reads either way to caption and score the clip (`task.scoring`);
    return its table row and its scores (None when not scored)."""
    cid = clip_id(task.sha256, span)
    rel = f"clips/{cid}.mp4"  # where the driver publishes it
    dest = work / f"{cid}.mp4"  # written in place: the task folder is private, and publishing is the driver's rename
    kept: dict[int, np.ndarray] = {}
    caption_keep = _sample_indices(span, captioner.sample_frames)
    score_keep = set() if task.scoring is None else frames_to_score(span.num_frames, task.scoring.samples)[1]
    keep = caption_keep | {span.start + i for i in score_keep}
    frames_of_span = _span_frames(frames, span, width, height, keep, kept)
    if copy_from is not None and copy_video_stream(copy_from, dest, span.num_frames):
        n = sum(1 for _ in frames_of_span)
    else:
        n = write_video(dest, frames_of_span, info.fps, crf=task.cfg.crf, preset=task.cfg.preset)
    sample = [kept[i] for i in sorted(caption_keep) if i in kept]
    request = CaptionRequest(
        source_uri=task.item.uri,
        clip_path=dest,
        start_s=span.start / info.fps,
        end_s=(span.start + n) / info.fps,
        manifest_caption=task.item.manifest_caption,
        frames=np.stack(sample) if sample else None,
    )
    row = {
        "clip_id": cid,
        "source_uri": task.item.uri,
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
    return row, _scores(row, {i - span.start: f for i, f in kept.items()}, task.scoring)


def _scores(row: dict, frames: dict[int, np.ndarray], scoring: Scoring | None) -> dict | None:
    """The clip's scores from the frames it was written from (clip-relative index -> frame), as qc computes them from
    the decoded file; None when not asked for, when a short write lost a sampled frame, or when the scorer failed
    (qc then scores the clip by decoding it, and reports the scorer's error there)."""
    if scoring is None:
        return None
    positions, needed = frames_to_score(row["num_frames"], scoring.samples)
    if not {i for i in needed if i < row["num_frames"]} <= frames.keys():
        return None
    try:
        scores = score_frames(row["clip_id"], frames, positions, scorer_for(scoring)).as_dict()
    except Exception:  # noqa: BLE001 - never lose a clip to scoring: qc scores it again and stops on a scorer bug
        return None
    del scores["error"]
    return {**scores, "clip_sha256": row["clip_sha256"], "scored_with": scoring.label}
