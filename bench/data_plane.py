"""Data-plane throughput: ingest + qc vs decode-only of the same source videos, measured in one run.

Decode-only is the floor of any stage that reads the videos: every frame of every source
decoded with PyAV to an RGB array (`to_ndarray(format="rgb24")`), spread over the same number
of worker processes the stages use; "decode, fast rgb" is the same through mugv's video_io
(one cached swscale context), printed beside it as the stricter floor. Each
stage runs as a fresh Python process (as `mugv ingest` / `mugv qc` would), so its imports and
worker start-up (an embedded Ray with `--workers` CPUs; 1 = in-process) are counted, at every size of `--scale`; the fastest of `--repeats` runs counts
(CPU seconds of the stage and every process beneath it, Ray's included, are printed beside it). Printed per size: seconds and
frames/s per stage and the whole-stage ratio (ingest + qc) / decode-only; then the fixed cost
(a 1-video run) and the marginal ratio: the per-frame slope of (ingest + qc) between the two
largest sizes over the slope of decode-only. Goal: <= 1.5.

ingest runs as `mugv ingest` does: it scores each clip for qc from the frames it writes, so qc
decodes nothing again (it checks each clip's sha256 and reads ingest's scores).

    python bench/data_plane.py [--scale 120,600] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _process_tree import run_monitored

STAGES = ("decode only", "ingest", "qc", "decode, fast rgb")


def decode_all(path: str) -> int:
    """Every frame to an RGB array, the plain PyAV way (a new swscale context per frame)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for frame in container.decode(stream) if frame.to_ndarray(format="rgb24") is not None)


def decode_all_fast(path: str) -> int:
    """Every frame to an RGB array through mugv's video_io (one cached swscale context)."""
    from mugv.data.video_io import iter_frames

    return sum(1 for _ in iter_frames(path))


def decode_only(paths: list[str], workers: int, fn=decode_all) -> int:
    if workers == 1:
        return sum(map(fn, paths))
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(fn, paths, chunksize=1))


def run_stage(stage: str, src: Path, out: Path, workers: int) -> None:
    """One stage, in this (fresh) process: what the parent times."""
    from mugv.config import Params

    params = Params()
    if stage.startswith("decode"):
        from mugv.storage import list_files

        fn = decode_all if stage == "decode only" else decode_all_fast
        print(decode_only([e.uri for e in list_files(src, params.ingest.extensions)], workers, fn))
    elif stage == "ingest":
        from mugv.stages import ingest

        params.ingest.workers = workers
        ingest.run(str(src), out, params.ingest, progress=False, scoring=params.qc.scoring())  # as `mugv ingest` does
    else:
        from mugv.data.expectations import ExpectationsFailed
        from mugv.stages import qc

        params.qc.workers = workers
        try:
            qc.run(src, out, params.qc, progress=False)
        except ExpectationsFailed:
            pass  # a tiny set may keep too few clips; the work was done and is what is timed


def timed_stage(stage: str, src: Path, out: Path, workers: int, repeats: int) -> tuple[float, float, str]:
    """(wall s, CPU s of the stage process and every process beneath it, stdout): the fastest of `repeats` runs,
    since other load on the machine only ever adds time."""
    cmd = [sys.executable, __file__, "--run-stage", stage, "--src", str(src), "--out", str(out), "--workers", str(workers)]
    best = (float("inf"), float("inf"), "")
    for _ in range(repeats):
        wall, tree, stdout = run_monitored(cmd, f"{stage} on {src}")
        best = min(best, (wall, tree.cpu_s, stdout.strip()))
    return best


def measure(videos: int, workers: int, root: Path, repeats: int) -> dict[str, float]:
    """Wall seconds per stage (and `<stage> cpu`) and the source frame count for `videos` synthetic videos."""
    from mugv.config import Params
    from mugv.stages import synth

    params = Params()
    params.synth.num_videos = videos
    base = root / f"n{videos}"
    synth.run(base / "synth", params.synth, progress=False)
    videos_dir = base / "synth" / "videos"
    timed_stage("decode only", videos_dir, base, workers, 1)  # warm the page cache
    out = {}
    for stage, src, dest in (
        ("decode only", videos_dir, base), ("ingest", videos_dir, base / "ingest"), ("qc", base / "ingest", base / "qc"),
        ("decode, fast rgb", videos_dir, base),
    ):
        out[stage], out[f"{stage} cpu"], stdout = timed_stage(stage, src, dest, workers, repeats)
        if stage == "decode only":
            out["frames"] = int(stdout.splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="120,600", help="comma-separated video counts (default 120,600)")
    ap.add_argument("--videos", type=int, help="a single size (same as --scale N)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per stage and size; the fastest counts")
    ap.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_stage:
        run_stage(args.run_stage, args.src, args.out, args.workers)
        return

    sizes = [args.videos] if args.videos else sorted({int(s) for s in args.scale.split(",")})
    with tempfile.TemporaryDirectory(prefix="mugv-bench-") as tmp:
        fixed = measure(1, args.workers, Path(tmp), args.repeats)
        runs = {n: measure(n, args.workers, Path(tmp), args.repeats) for n in sizes}

    print(f"workers={args.workers}; each stage a fresh process (imports and worker start-up included)")
    print(f"{'videos':>7}{'frames':>8}{'path':>18}{'seconds':>10}{'frames/s':>10}{'cpu s':>8}")
    for n, r in {1: fixed, **runs}.items():
        for name in (*STAGES[:3], "ingest + qc", STAGES[3]):
            t = r["ingest"] + r["qc"] if name == "ingest + qc" else r[name]
            cpu = r["ingest cpu"] + r["qc cpu"] if name == "ingest + qc" else r[f"{name} cpu"]
            print(f"{n:>7}{r['frames']:>8}{name:>18}{t:>10.2f}{r['frames'] / t:>10.1f}{cpu:>8.2f}")
    print(
        f"fixed cost (1 video): ingest {fixed['ingest']:.2f} s + qc {fixed['qc']:.2f} s = "
        f"{fixed['ingest'] + fixed['qc']:.2f} s; decode-only {fixed['decode only']:.2f} s"
    )
    for n, r in runs.items():
        for unit, suffix in (("wall", ""), ("cpu", " cpu")):
            ratio = (r[f"ingest{suffix}"] + r[f"qc{suffix}"]) / r[f"decode only{suffix}"]
            print(f"ratio (ingest + qc) / decode-only, whole stages, {n} videos, {unit} = {ratio:.2f}  (goal <= 1.5)")
    if len(runs) >= 2:
        (n0, a), (n1, b) = list(runs.items())[-2:]
        d_frames = b["frames"] - a["frames"]
        for unit, suffix in (("wall", ""), ("cpu", " cpu")):
            slope = {k: (b[k + suffix] - a[k + suffix]) / d_frames * 1000 for k in STAGES}
            print(
                f"marginal {unit} ms/frame ({n0}->{n1} videos): decode-only {slope['decode only']:.3f}, "
                f"ingest {slope['ingest']:.3f}, qc {slope['qc']:.3f}, decode with fast rgb {slope['decode, fast rgb']:.3f}"
            )
            stages = slope["ingest"] + slope["qc"]
            print(
                f"ratio (ingest + qc) / decode-only, marginal per frame, {unit} = {stages / slope['decode only']:.2f}"
                f"  (goal <= 1.5; vs decode with fast rgb: {stages / slope['decode, fast rgb']:.2f})"
            )


if __name__ == "__main__":
    main()
