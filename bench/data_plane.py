"""Data-plane throughput: ingest + qc vs decode-only of the same source videos, measured in one run.

Decode-only is the floor of any stage that reads the videos: every frame of every source
decoded with PyAV, spread over the same number of worker processes the stages use. The
ratio (ingest + qc) / decode says how much the stages cost beyond reading the bytes.
Goal: <= 1.5.

    python bench/data_plane.py [--videos 24] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mugv.config import Params
from mugv.data.ingest import run_ingest
from mugv.data.qc import run_qc
from mugv.data.synth import synthesize
from mugv.data.video_io import iter_frames
from mugv.storage import list_files


def decode_all(path: str) -> int:
    return sum(1 for _ in iter_frames(path))


def decode_only(paths: list[str], workers: int) -> int:
    if workers == 1:
        return sum(map(decode_all, paths))
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(decode_all, paths, chunksize=1))


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    params = Params()
    params.synth.num_videos = args.videos
    params.ingest.workers = args.workers
    params.qc.workers = args.workers
    with tempfile.TemporaryDirectory(prefix="mugv-bench-") as tmp:
        root = Path(tmp)
        synthesize(params.synth, root / "synth", progress=False)
        sources = [e.uri for e in list_files(root / "synth" / "videos", params.ingest.extensions)]
        decode_only(sources[:2], args.workers)  # warm the page cache and the pool start-up path
        t_dec, frames = timed(decode_only, sources, args.workers)
        t_ing, ing = timed(run_ingest, str(root / "synth" / "videos"), root / "ingest", params.ingest, False)
        t_qc, _ = timed(run_qc, root / "ingest", root / "qc", params.qc, False)

    total = t_ing + t_qc
    print(f"videos={len(sources)} frames={frames} workers={args.workers}")
    print(f"{'path':<22}{'seconds':>10}{'frames/s':>12}")
    for name, t in (("decode only", t_dec), ("ingest", t_ing), ("qc", t_qc), ("ingest + qc", total)):
        print(f"{name:<22}{t:>10.2f}{frames / t:>12.1f}")
    print(f"ratio (ingest + qc) / decode-only = {total / t_dec:.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
