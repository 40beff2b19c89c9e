"""Ingest with 1 vs N worker processes on the synthetic set, side by side; plus shot-split accuracy vs its truth.

Each worker count runs `--repeats` times, alternating, and the best time counts. The run also
checks that both worker counts wrote identical tables, and scores the scene split against
synth.jsonl: a true cut is found when a clip starts within 2 frames of it, a true fade when
a clip starts within the fade length (+2) of it; captions are scored against the shot that
holds most of each clip.

    python bench/ingest_workers.py [--videos 24] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from mugv.data.synth import FADE_SECONDS, MIN_FADE_FRAMES
from mugv.stages import ingest, synth


def timed_ingest(source: Path, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ingest.run(str(source), out, ingest.Config(workers=workers), progress=False)
    return time.perf_counter() - t0


def split_scores(truth: list[dict], clips: pd.DataFrame, root: Path) -> dict[str, float]:
    found = {"cut": [0, 0], "fade": [0, 0]}
    false_starts = captions_right = 0
    for video in truth:
        rows = clips[clips.source_uri == str(root / video["file"])]
        starts = {int(s) for s, p in zip(rows.start_frame, rows.piece) if pd.isna(p) or p == 0} - {0}
        tolerance = {"cut": 2, "fade": max(MIN_FADE_FRAMES, round(FADE_SECONDS * video["fps"])) + 2}
        matched = set()
        for shot in video["shots"][1:]:
            kind, tol = shot["transition_in"], tolerance.get(shot["transition_in"], 0)
            hits = {s for s in starts if abs(s - shot["start_frame"]) <= tol}
            found[kind][1] += 1
            found[kind][0] += bool(hits)
            matched |= hits
        false_starts += len(starts - matched)
        for row in rows.itertuples():
            overlaps = [min(row.end_frame, s["end_frame"]) - max(row.start_frame, s["start_frame"]) for s in video["shots"]]
            captions_right += row.caption == video["shots"][overlaps.index(max(overlaps))]["caption"]
    return {
        "cuts found": found["cut"][0] / max(1, found["cut"][1]),
        "fades found": found["fade"][0] / max(1, found["fade"][1]),
        "true cuts+fades": found["cut"][1] + found["fade"][1],
        "false clip starts": false_starts,
        "captions right": captions_right / max(1, len(clips)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mugv-bench-ingest-") as tmp:
        root = Path(tmp) / "synth"
        synth.run(root, synth.Config(num_videos=args.videos), progress=False)
        best = {1: float("inf"), args.workers: float("inf")}
        for _ in range(args.repeats):
            for workers in best:
                best[workers] = min(best[workers], timed_ingest(root / "videos", Path(tmp) / f"w{workers}", workers))
        one, many = (pd.read_parquet(Path(tmp) / f"w{w}" / ingest.CLIPS_TABLE) for w in best)
        truth = [json.loads(line) for line in (root / synth.TRUTH).read_text().splitlines()]
        scores = split_scores(truth, one, root)

    print(f"videos={args.videos} clips={len(one)} repeats={args.repeats} (best time of each)")
    for workers, seconds in best.items():
        print(f"workers={workers:<3}{seconds:8.2f} s{args.videos / seconds:8.1f} videos/s")
    print(f"speed-up workers={args.workers} vs 1: {best[1] / best[args.workers]:.2f}x")
    print(f"tables identical: {one.equals(many)}")
    for name, value in scores.items():
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
