"""Ingest on Ray with N vs 1 workers (and in-process) on the synthetic set, side by side; plus shot-split accuracy.

Three settings run `--repeats` times each, alternating, and the best time counts: in-process
(`workers=1`, no Ray), an embedded Ray with 1 CPU and with N CPUs. Ray is started once per
setting outside the timed call (its start-up is printed apart), so the ratio t(Ray 1) / t(Ray N)
is the speed-up of the per-video fan-out. The run also checks that every setting wrote identical
tables, and scores the scene split against synth.jsonl: a true cut is found when a clip starts
within 2 frames of it, a true fade when a clip starts within the fade length (+2) of it;
captions are scored against the shot that holds most of each clip.

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


def timed_ingest(source: Path, out: Path, ray_cpus: int | None) -> tuple[float, float]:
    """(stage seconds, Ray start-up seconds): in-process when `ray_cpus` is None, else on an embedded
    Ray with that many CPUs, started before the clock runs."""
    from mugv.data.ray_runner import RayConfig, ray_session

    shutil.rmtree(out, ignore_errors=True)
    if ray_cpus is None:
        t0 = time.perf_counter()
        ingest.run(str(source), out, ingest.Config(workers=1), progress=False)
        return time.perf_counter() - t0, 0.0
    t0 = time.perf_counter()
    with ray_session(RayConfig(), workers=ray_cpus):
        t1 = time.perf_counter()
        ingest.run(str(source), out, ingest.Config(workers=None), progress=False)
        t2 = time.perf_counter()
    return t2 - t1, t1 - t0


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
        settings = {"in-process": None, "ray 1": 1, f"ray {args.workers}": args.workers}
        best = {name: float("inf") for name in settings}
        startup = {name: 0.0 for name in settings}
        for _ in range(args.repeats):
            for name, cpus in settings.items():
                seconds, started = timed_ingest(root / "videos", Path(tmp) / name.replace(" ", "_"), cpus)
                best[name], startup[name] = min(best[name], seconds), max(startup[name], started)
        tables = [pd.read_parquet(Path(tmp) / name.replace(" ", "_") / ingest.CLIPS_TABLE) for name in settings]
        one = tables[0]
        truth = [json.loads(line) for line in (root / synth.TRUTH).read_text().splitlines()]
        scores = split_scores(truth, one, root)

    print(f"videos={args.videos} clips={len(one)} repeats={args.repeats} (best time of each)")
    for name, seconds in best.items():
        print(f"{name:<12}{seconds:8.2f} s{args.videos / seconds:8.1f} videos/s  (Ray start-up {startup[name]:.2f} s)")
    print(f"speed-up Ray {args.workers} workers vs 1: {best['ray 1'] / best[f'ray {args.workers}']:.2f}x "
          f"(vs in-process: {best['in-process'] / best[f'ray {args.workers}']:.2f}x)")
    print(f"tables identical: {all(one.equals(t) for t in tables[1:])}")
    for name, value in scores.items():
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
