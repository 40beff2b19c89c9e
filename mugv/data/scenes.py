"""Shot boundaries with PySceneDetect (hard cuts + fades) and the clip spans cut from them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode, ThresholdDetector
from scenedetect.scene_manager import compute_downscale_factor

from mugv.data.config import SceneConfig
from mugv.data.video_io import iter_frames, probe


@dataclass(frozen=True)
class ClipSpan:
    """Frames [start, end) of a source that become one clip: piece `piece` of shot `shot`."""

    shot: int
    piece: int | None  # None when the whole shot is one clip
    start: int
    end: int

    @property
    def num_frames(self) -> int:
        return self.end - self.start


@lru_cache(maxsize=1)
def _scenedetect_version() -> str:
    return version("scenedetect")  # a metadata lookup costs ~0.5 ms: once per process, not once per video


class OneCallContentDetector(ContentDetector):
    """PySceneDetect's `ContentDetector`, its per-frame score taken from two OpenCV calls.

    Workaround for scenedetect 0.7: its `_calculate_frame_score` splits HSV into three planes and
    takes each mean distance with four numpy passes (int32 copies, subtract, abs, sum), which made
    shot detection cost as much as decoding on small frames. `cv2.absdiff` + `cv2.sumElems` over
    the HSV pair give the three channels' sums of absolute differences at once; they are exact
    integers in float64, divided by the same float pixel count, so the score is the library's bit
    for bit (tests/data/test_scenes.py compares both on real frames). Another scenedetect version,
    edge weights or a stats manager fall back to the library's own method.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._one_call = _scenedetect_version().startswith("0.7.") and self._weights.delta_edges == 0.0
        self._last_hsv: np.ndarray | None = None

    def _calculate_frame_score(self, timecode: FrameTimecode, frame_img: np.ndarray) -> float:
        if not self._one_call or self.stats_manager is not None:
            return super()._calculate_frame_score(timecode, frame_img)
        hsv = cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV)
        last, self._last_hsv = self._last_hsv, hsv
        if last is None:
            return 0.0
        pixels = float(hsv.shape[0] * hsv.shape[1])
        hue, sat, lum, _ = cv2.sumElems(cv2.absdiff(hsv, last))
        components = (hue / pixels, sat / pixels, lum / pixels, 0.0)  # the library's Components order; no edges
        return sum(c * w for c, w in zip(components, self._weights, strict=True)) / sum(abs(w) for w in self._weights)


class ShotDetector:
    """Shot cuts of a video from frames the caller decodes, fed one at a time in order.

    A `ContentDetector` finds hard cuts and a `ThresholdDetector` finds fades to/from black (the
    cut lands inside the dark stretch, so it may be reported frames after it). They see what
    PySceneDetect's `SceneManager` gives them: BGR frames, downscaled to a width of at least 256
    by its auto-downscale rule; positions are decoded frame indices. Feeding frames here lets the
    ingest probe, detect shots and cache the frames for the clips in one decode pass.
    """

    def __init__(self, cfg: SceneConfig, fps: float, width: int, height: int):
        self.fps = fps
        self.downscale = compute_downscale_factor(max(width, height))
        self.size = (max(1, round(width / self.downscale)), max(1, round(height / self.downscale)))
        self.detectors = [
            OneCallContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_frames),
            ThresholdDetector(threshold=cfg.fade_threshold, min_scene_len=cfg.min_scene_frames),
        ]
        self.frames_seen = 0
        self.cuts: set[int] = set()

    def add(self, rgb: np.ndarray) -> None:
        """Process the next decoded RGB uint8 frame [H, W, 3]."""
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.downscale > 1.0:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_LINEAR)
        position = FrameTimecode(self.frames_seen, fps=self.fps)
        for detector in self.detectors:
            self.cuts.update(cut.frame_num for cut in detector.process_frame(position, bgr))
        self.frames_seen += 1

    def add_all(self, frames: Iterable[np.ndarray]) -> None:
        """`add` each of `frames`, in order."""
        for rgb in frames:
            self.add(rgb)

    def shots(self, num_frames: int) -> list[tuple[int, int]]:
        """Contiguous shots [(start, end), ...] covering [0, num_frames), after the last frame was added."""
        last = FrameTimecode(max(self.frames_seen - 1, 0), fps=self.fps)
        for detector in self.detectors:
            self.cuts.update(cut.frame_num for cut in detector.post_process(last))
        bounds = [0, *sorted(c for c in self.cuts if 0 < c < num_frames), num_frames]
        return list(zip(bounds[:-1], bounds[1:]))


def detect_shots(path: str | os.PathLike, cfg: SceneConfig, num_frames: int) -> list[tuple[int, int]]:
    """Contiguous shots [(start, end), ...] covering frames [0, num_frames) of a video file
    (a `ShotDetector` over its decoded frames; cuts clamped to `num_frames`)."""
    info = probe(path, count_frames=False)
    detector = ShotDetector(cfg, info.fps, info.width, info.height)
    for frame in iter_frames(path):
        detector.add(frame)
    return detector.shots(num_frames)


def plan_clips(
    shots: list[tuple[int, int]], min_frames: int, max_frames: int | None
) -> tuple[list[ClipSpan], int]:
    """Clip spans from shots, and how many spans were dropped as shorter than `min_frames`.

    A shot longer than `max_frames` is cut into pieces of exactly `max_frames` from its start;
    a last piece shorter than `min_frames` is dropped (and counted) like a short shot.
    """
    spans: list[ClipSpan] = []
    too_short = 0
    for index, (start, end) in enumerate(shots):
        if max_frames is None or end - start <= max_frames:
            pieces = [(None, start, end)]
        else:
            cuts = list(range(start, end, max_frames)) + [end]
            pieces = [(k, a, b) for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
        for piece, a, b in pieces:
            if b - a < min_frames:
                too_short += 1
            else:
                spans.append(ClipSpan(index, piece, a, b))
    return spans, too_short
