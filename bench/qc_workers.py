"""qc stage wall time on Ray with N vs 1 workers (and in-process) on the same ingested clips, measured in one run.

The synthetic set is generated and ingested once; then the qc stage runs in-process (`workers=1`,
no Ray) and on an embedded Ray with 1 and with N CPUs (started before the clock runs; start-up
printed apart), each on a fresh output folder. The ratio t(Ray 1) / t(Ray N) is the speed-up of
the scoring fan-out (decision, plots and the GX gate are serial). The gate is relaxed
(`min_kept=0`) so that the timing never depends on the thresholds.

    python bench/qc_workers.py [--videos 24] [--workers 2] [--repeat 2] [--size 640x360]

`--size` renders every video at one size instead of the small default sizes: per-clip work
(decode, Laplacian, Farneback) grows with the pixels, and with it the gain from the workers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from mugv.config import Params
from mugv.stages import ingest, qc, synth


def timed_qc(ingested: Path, out: Path, params: Params, ray_cpus: int | None) -> tuple[float, float]:
    """(stage seconds, Ray start-up seconds): in-process when `ray_cpus` is None, else on an embedded
    Ray with that many CPUs, started before the clock runs."""
    from mugv.data.ray_runner import RayConfig, ray_session

    if ray_cpus is None:
        params.qc.workers = 1
        t0 = time.perf_counter()
        qc.run(ingested / "ingest", out, params.qc, progress=False)
        return time.perf_counter() - t0, 0.0
    params.qc.workers = None
    t0 = time.perf_counter()
    with ray_session(RayConfig(), workers=ray_cpus):
        t1 = time.perf_counter()
        qc.run(ingested / "ingest", out, params.qc, progress=False)
        t2 = time.perf_counter()
    return t2 - t1, t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting; the best is reported")
    ap.add_argument("--size", default=None, help="WxH for every video (default: params.synth.sizes)")
    args = ap.parse_args()

    params = Params()
    params.synth.num_videos = args.videos
    if args.size:
        width, height = (int(v) for v in args.size.lower().split("x"))
        params.synth.sizes = [(width, height)]
    params.ingest.workers = args.workers
    params.qc.expectations.min_kept = 0
    with tempfile.TemporaryDirectory(prefix="mugv-bench-qc-") as tmp:
        root = Path(tmp)
        synth.run(root / "synth", params.synth, progress=False)
        ingest.run(str(root / "synth" / "videos"), root / "ingest", params.ingest, progress=False)
        clips = pd.read_parquet(root / "ingest" / ingest.CLIPS_TABLE)
        settings = {"in-process": None, "ray 1": 1, f"ray {args.workers}": args.workers}
        best = {name: float("inf") for name in settings}
        startup = {name: 0.0 for name in settings}
        for run in range(args.repeat):
            for name, cpus in settings.items():
                seconds, started = timed_qc(root, root / f"qc_{name.replace(' ', '_')}_{run}", params, cpus)
                best[name], startup[name] = min(best[name], seconds), max(startup[name], started)

    sizes = sorted({f"{w}x{h}" for w, h in zip(clips.width, clips.height)})
    print(f"videos={args.videos} clips={len(clips)} frames={int(clips.num_frames.sum())} sizes={','.join(sizes)} repeat={args.repeat}")
    print(f"{'setting':<12}{'seconds':>10}{'clips/s':>10}{'Ray start-up s':>16}")
    for name, t in best.items():
        print(f"{name:<12}{t:>10.2f}{len(clips) / t:>10.1f}{startup[name]:>16.2f}")
    ray_n = best[f"ray {args.workers}"]
    print(f"speed-up Ray t(1) / t({args.workers}) = {best['ray 1'] / ray_n:.2f} (in-process / Ray {args.workers}: "
          f"{best['in-process'] / ray_n:.2f})")


if __name__ == "__main__":
    main()
