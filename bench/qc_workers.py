"""qc stage wall time with 1 vs N worker processes on the same ingested clips, measured in one run.

The synthetic set is generated and ingested once; then the qc stage runs with `workers=1` and with
`workers=N` (spawned processes, crash-isolating pool), each on a fresh output folder. The ratio
t(1) / t(N) is the speed-up of the scoring fan-out (decision, plots and the GX gate are serial).
The gate is relaxed (`min_kept=0`) so that the timing never depends on the thresholds.

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
        best: dict[int, float] = {}
        for run in range(args.repeat):
            for workers in (1, args.workers):
                params.qc.workers = workers
                t0 = time.perf_counter()
                qc.run(root / "ingest", root / f"qc_{workers}_{run}", params.qc, progress=False)
                best[workers] = min(best.get(workers, float("inf")), time.perf_counter() - t0)

    sizes = sorted({f"{w}x{h}" for w, h in zip(clips.width, clips.height)})
    print(f"videos={args.videos} clips={len(clips)} frames={int(clips.num_frames.sum())} sizes={','.join(sizes)} repeat={args.repeat}")
    print(f"{'workers':<10}{'seconds':>10}{'clips/s':>10}")
    for workers, t in best.items():
        print(f"{workers:<10}{t:>10.2f}{len(clips) / t:>10.1f}")
    print(f"speed-up t(1) / t({args.workers}) = {best[1] / best[args.workers]:.2f}")


if __name__ == "__main__":
    main()
