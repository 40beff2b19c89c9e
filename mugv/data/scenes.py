"""Shot boundaries with PySceneDetect (hard cuts + fades) and the clip spans cut from them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from scenedetect import ContentDetector, SceneManager, ThresholdDetector, open_video

from mugv.config import SceneConfig


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


def detect_shots(path: str | os.PathLike, cfg: SceneConfig, num_frames: int) -> list[tuple[int, int]]:
    """Contiguous shots [(start, end), ...] covering frames [0, num_frames).

    A `ContentDetector` finds hard cuts and a `ThresholdDetector` finds fades to/from black
    (the cut lands inside the dark stretch). Cut positions come from PySceneDetect's PyAV
    backend and are clamped to `num_frames`, the count the caller decoded.
    """
    video = open_video(str(path), backend="pyav", suppress_output=True)  # keep ffmpeg's log callback quiet
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_frames))
    manager.add_detector(ThresholdDetector(threshold=cfg.fade_threshold, min_scene_len=cfg.min_scene_frames))
    manager.detect_scenes(video)
    starts = {start.frame_num for start, _ in manager.get_scene_list(start_in_scene=True)}
    bounds = [0, *sorted(s for s in starts if 0 < s < num_frames), num_frames]
    return list(zip(bounds[:-1], bounds[1:]))


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
