"""Per-clip quality scores of the MUG-V filters: sharpness, motion, aesthetic, brightness, pHash.

A clip is scored on `samples` frame positions p spread evenly over it (decoded in one pass up to
the last one, converting only those frames to RGB): sharpness, aesthetic and brightness are averaged over the frames at p; motion is the mean
Farneback flow magnitude over the pairs (p, p + 1), in pixels per frame at the clip's native
resolution and frame rate; the frames at p are the keyframes of the pHash.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import cv2
import imagehash
import numpy as np
from PIL import Image

from mugv.data.aesthetic import AestheticScorer, build_aesthetic_scorer
from mugv.data.video_io import VideoError, frames_at, probe

PHASH_SEPARATOR = ":"


def grey(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> luma uint8 [H, W] (BT.601, as OpenCV computes it)."""
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def sharpness(frame: np.ndarray) -> float:
    """Variance of the Laplacian of the grey frame: high for crisp edges, low for blur."""
    return float(cv2.Laplacian(grey(frame), cv2.CV_64F).var())


def brightness(frame: np.ndarray) -> float:
    """Mean luma in [0, 255]."""
    return float(grey(frame).mean())


def flow_magnitude(first: np.ndarray, second: np.ndarray) -> float:
    """Mean Farneback optical-flow magnitude between two frames, in pixels per frame step."""
    flow = cv2.calcOpticalFlowFarneback(
        grey(first), grey(second), None,
        pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0,
    )
    return float(np.linalg.norm(flow, axis=-1).mean())


def phash(frame: np.ndarray) -> imagehash.ImageHash:
    """64-bit DCT perceptual hash (imagehash.phash) of one frame."""
    return imagehash.phash(Image.fromarray(frame))


def parse_phash(text: str, count: int) -> np.ndarray:
    """A `phash` column value -> `count` uint64 hashes; a clip with fewer keyframes (a very short
    clip) repeats its last hash, so every clip compares position by position."""
    values = [int(h, 16) for h in text.split(PHASH_SEPARATOR) if h]
    if not values:
        raise ValueError("empty phash")
    values += [values[-1]] * (count - len(values))
    return np.array(values[:count], dtype=np.uint64)


def phash_distances(hashes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Mean Hamming distance (bits, 0-64) from one clip's keyframe hashes [F] to each row of [K, F]."""
    return np.bitwise_count(np.bitwise_xor(others, hashes[None, :])).mean(axis=1)


def phash_string(frames: Sequence[np.ndarray]) -> str:
    """Keyframe hashes as hex joined by ':' (the `phash` column)."""
    return PHASH_SEPARATOR.join(str(phash(f)) for f in frames)


def sample_positions(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over [0, num_frames - 2], so each has a successor."""
    last = max(num_frames - 2, 0)
    return sorted({int(round(x)) for x in np.linspace(0, last, count)})


@dataclass(frozen=True)
class ClipScores:
    """The scores of one clip; `error` is set (and scores are NaN) when it could not be decoded."""

    clip_id: str
    sharpness: float = math.nan
    motion: float = math.nan
    aesthetic: float = math.nan
    brightness: float = math.nan
    phash: str = ""
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "ClipScores":
        """The scores of a clip_scores.parquet row (never an error: ingest stores only clips it scored)."""
        return cls(clip_id=str(row["clip_id"]), sharpness=float(row["sharpness"]), motion=float(row["motion"]),
                   aesthetic=float(row["aesthetic"]), brightness=float(row["brightness"]), phash=str(row["phash"]))


def score_frames(
    clip_id: str, frames: dict[int, np.ndarray], positions: Sequence[int], scorer: AestheticScorer
) -> ClipScores:
    """Scores from decoded frames: per-frame scores averaged over the sampled positions that
    decoded; motion over the (p, p + 1) pairs (0 when the clip has a single frame)."""
    keys = [p for p in positions if p in frames]
    if not keys:
        raise VideoError("no decodable frames at the sampled positions")
    sampled = [frames[p] for p in keys]
    pairs = [(frames[p], frames[p + 1]) for p in keys if p + 1 in frames]
    return ClipScores(
        clip_id=clip_id,
        sharpness=float(np.mean([sharpness(f) for f in sampled])),
        motion=float(np.mean([flow_magnitude(a, b) for a, b in pairs])) if pairs else 0.0,
        aesthetic=float(np.mean(scorer.score(sampled))),
        brightness=float(np.mean([brightness(f) for f in sampled])),
        phash=phash_string(sampled),
    )


def score_clip(
    clip_id: str, path: str | os.PathLike, num_frames: int | None, samples: int, scorer: AestheticScorer
) -> ClipScores:
    """Decode `samples` frame pairs spread over a clip and score them.

    `num_frames` comes from clips.parquet; when missing or < 1 the file is probed. A file that
    is missing or fails to decode is returned as `error="unreadable: <why>"` with NaN scores
    (never raised); errors of the scorers themselves do propagate.
    """
    try:
        if not os.path.exists(path):
            raise VideoError(f"missing file {os.fspath(path)}")
        if num_frames is None or num_frames < 1:
            num_frames = probe(path).num_frames
        positions, needed = frames_to_score(num_frames, samples)
        frames = frames_at(path, needed)
        if not any(p in frames for p in positions):
            raise VideoError("no decodable frames at the sampled positions")
    except Exception as e:  # noqa: BLE001 - any decode failure is a reject reason, never a crash
        return ClipScores(clip_id=clip_id, error=f"unreadable: {type(e).__name__}: {e}")
    return score_frames(clip_id, frames, positions, scorer)


@dataclass(frozen=True)
class Scoring:
    """How clips are scored: qc's scorer settings, picklable so that an ingest or qc worker can score."""

    samples: int
    scorer: str = "heuristic"
    weights: str | None = None
    threads: int = 0  # > 0: OpenCV and torch threads of a worker process (see `scorer_for`)

    @property
    def label(self) -> str:
        """What the scores depend on, stored beside them (`scored_with`): scores are reused only under the same label."""
        return f"{self.scorer}:{self.weights or ''}:{self.samples}"


@lru_cache(maxsize=2)
def _scorer(kind: str, weights: str | None, threads: int) -> AestheticScorer:
    if threads > 0:
        cv2.setNumThreads(threads)
        if kind == "laion":
            import torch

            torch.set_num_threads(threads)
    return build_aesthetic_scorer(kind, weights)


def scorer_for(scoring: Scoring) -> AestheticScorer:
    """One scorer per process (the LAION model loads once). In a worker process (`threads` > 0), OpenCV
    and torch get `threads` threads each so that the workers share the cores instead of fighting."""
    return _scorer(scoring.scorer, scoring.weights, scoring.threads)


def frames_to_score(num_frames: int, samples: int) -> tuple[list[int], set[int]]:
    """The sampled positions of a clip of `num_frames` frames, and every frame index scoring reads (p and p + 1)."""
    positions = sample_positions(num_frames, samples)
    return positions, set(positions) | {p + 1 for p in positions}


@dataclass(frozen=True)
class ScoreTask:
    """One clip to score by decoding it (picklable: it travels to a Ray worker)."""

    clip_id: str
    path: str
    num_frames: int | None
    scoring: Scoring


def score_task(task: ScoreTask) -> ClipScores:
    """`score_clip` for one task with this process's scorer (what each qc Ray task runs)."""
    return score_clip(task.clip_id, task.path, task.num_frames, task.scoring.samples, scorer_for(task.scoring))
