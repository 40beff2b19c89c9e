"""Shot detection per frame: mugv's ShotDetector (one-call content score) vs PySceneDetect's own detectors.

Both sides run PySceneDetect's `ContentDetector` + `ThresholdDetector` on the same decoded frames in
one run, as ingest feeds them (BGR, one frame at a time); mugv's side takes the content score from
`OneCallContentDetector`. The bench first checks that every frame score and cut is the same, then
alternates the two for `--rounds` rounds, keeping each side's fastest time (the machine may be
shared), and prints microseconds per frame and the ratio library / ours. Frames: the default
synthetic set's videos (64p) and, with `--size`, the same frames resized (e.g. 256x144).

    python bench/shot_detect.py [--videos 60] [--rounds 5] [--size 256x144]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from scenedetect import ContentDetector, FrameTimecode, ThresholdDetector

from mugv.config import Params
from mugv.data.scenes import OneCallContentDetector
from mugv.data.video_io import iter_frames


def run(videos: list[list[np.ndarray]], content: type, fps: float, threshold: float, fade: float, min_len: int):
    """Every video through a content + threshold detector pair: (seconds, frame scores, cuts)."""
    scores, cuts = [], []
    t0 = time.perf_counter()
    for frames in videos:
        detectors = [content(threshold=threshold, min_scene_len=min_len), ThresholdDetector(fade, min_scene_len=min_len)]
        for i, rgb in enumerate(frames):
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            at = FrameTimecode(i, fps=fps)
            for d in detectors:
                cuts.extend(c.frame_num for c in d.process_frame(at, bgr))
            scores.append(detectors[0]._frame_score)
    return time.perf_counter() - t0, scores, cuts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", help="WxH: resize the frames to this size first (default: as drawn, 64p)")
    args = ap.parse_args()

    from mugv.stages import synth

    params = Params()
    params.synth.num_videos = args.videos
    with tempfile.TemporaryDirectory(prefix="mugv-bench-") as tmp:
        synth.run(Path(tmp), params.synth, progress=False)
        videos = [list(iter_frames(p)) for p in sorted((Path(tmp) / "videos").glob("*.mp4"))]
    if args.size:
        w, h = (int(v) for v in args.size.split("x"))
        videos = [[cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames] for frames in videos]
    scene = params.ingest.scene
    setup = (12.0, scene.content_threshold, scene.fade_threshold, scene.min_scene_frames)
    frames = sum(map(len, videos))

    _, lib_scores, lib_cuts = run(videos, ContentDetector, *setup)
    _, our_scores, our_cuts = run(videos, OneCallContentDetector, *setup)
    same = lib_scores == our_scores and lib_cuts == our_cuts
    best = {"library": float("inf"), "ours": float("inf")}
    for _ in range(args.rounds):
        best["library"] = min(best["library"], run(videos, ContentDetector, *setup)[0])
        best["ours"] = min(best["ours"], run(videos, OneCallContentDetector, *setup)[0])
    h, w = videos[0][0].shape[:2]
    print(f"{len(videos)} videos, {frames} frames (first {w}x{h}); fastest of {args.rounds} rounds each")
    print(f"same frame scores and cuts as the library: {same} ({len(lib_cuts)} cuts)")
    for side, seconds in best.items():
        print(f"  {side:8} {seconds / frames * 1e6:8.1f} us/frame")
    print(f"ratio library / ours = {best['library'] / best['ours']:.2f}x")
    if not same:
        raise SystemExit("the one-call content score differs from the library's")


if __name__ == "__main__":
    main()
