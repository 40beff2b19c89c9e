"""Data-plane load: ingest, qc and encode on 1x and Nx the default data set, peak memory and time side by side.

Each stage runs as a fresh process (as `mugv ingest|qc|encode` would) with the repository's params,
Ray start-up included; its peak memory is the largest sum of resident memory over the stage
process and every process beneath it (Ray's GCS, raylet and workers), sampled every 50 ms. The
synthetic sets are drawn with the default seed: `--base` videos and `--scale` times as many.
Printed per stage: seconds and peak MiB at 1x and Nx and their ratios (goals: time <= 11x for
10x, memory <= 1.1x), whether anything was lost (every source video is in the clip table or
quarantined, every clip has a qc verdict, every planned sample is encoded or failed with a
reason), and, at 1x, the speed-up of an embedded Ray of `--workers` CPUs over one CPU (goal >= 1.6
on 2 cores; an embedded Ray of 1 CPU, its start-up counted as for N) and over running without Ray.
Encode uses a randomly initialised VAE of the default preset saved as a checkpoint
(throughput and memory do not depend on its weights).

    python bench/load.py [--base 240] [--scale 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _process_tree import run_monitored

STAGES = ("ingest", "qc", "encode")


def run_stage(stage: str, root: Path, ray_cpus: int) -> None:
    """One stage on `root`'s folders, in this (fresh) process: on an embedded Ray of `ray_cpus` CPUs started
    here (its start-up is part of the stage's time), or without Ray when `ray_cpus` is 0; qc with `workers`
    `ray_cpus` (1 and 0: in this process), so it starts a Ray only if it has clips to decode, as `mugv qc`
    does. Its counts are printed as JSON on the last line."""
    from contextlib import nullcontext

    from mugv.arrow_memory import use_system_allocator
    from mugv.data.ray_runner import RayConfig, ray_session

    use_system_allocator()  # as `mugv`'s command callback does
    if stage == "qc":  # qc starts Ray itself, and only for clips whose ingest scores do not apply (here: none);
        _run_stage(stage, root, ray_cpus or 1)  # started here, Ray would be a cost the stage never pays
        return
    with ray_session(RayConfig(), workers=ray_cpus) if ray_cpus else nullcontext():
        _run_stage(stage, root, None if ray_cpus else 1)  # None: every CPU of the running Ray


def _run_stage(stage: str, root: Path, workers: int | None) -> None:
    import pandas as pd

    from mugv.config import load_params

    params = load_params()
    if stage == "ingest":
        from mugv.stages import ingest

        params.ingest.workers = workers
        report = ingest.run(str(root / "synth" / "videos"), root / "ingest", params.ingest, progress=False,
                            scoring=params.qc.scoring())
        table = pd.read_parquet(root / "ingest" / "clips.parquet")
        sources = len(list((root / "synth" / "videos").glob("*.mp4")))
        counts = {"sources": sources, "ingested": report.videos_ingested, "duplicates": report.duplicates,
                  "quarantined": report.quarantined, "clips": len(table)}
    elif stage == "qc":
        from mugv.stages import qc

        params.qc.workers = workers
        qc.run(root / "ingest", root / "qc", params.qc, progress=False)
        table = pd.read_parquet(root / "qc" / "qc.parquet")
        clips = len(pd.read_parquet(root / "ingest" / "clips.parquet"))
        counts = {"clips": clips, "verdicts": len(table), "kept": int(table["keep"].sum())}
    else:
        from mugv.stages import encode

        params.encode.workers = workers
        report = encode.run(root / "ingest", root / "qc", root.parent / "vae", root / "latents", params.encode,
                            progress=False)
        counts = {"samples": report.samples, "failed": report.failed_count, "unassigned": report.unassigned_count}
    print(json.dumps(counts))


def timed(stage: str, root: Path, ray_cpus: int) -> tuple[float, int, dict]:
    """(wall seconds, peak resident bytes of the stage's process tree, its counts)."""
    cmd = [sys.executable, __file__, "--run-stage", stage, "--root", str(root), "--ray-cpus", str(ray_cpus)]
    seconds, tree, out = run_monitored(cmd, f"{stage} on {root}")
    return seconds, tree.peak_rss, json.loads(out.strip().splitlines()[-1])


def lost(stage: str, counts: dict) -> int:
    """How many inputs of the stage are neither in its output nor accounted for with a reason."""
    if stage == "ingest":
        return counts["sources"] - counts["ingested"] - counts["duplicates"] - counts["quarantined"]
    if stage == "qc":
        return counts["clips"] - counts["verdicts"]
    return 0  # encode: every planned sample is in the index or `failed`; unassigned clips carry a reason


def _fixed_work(_: int) -> float:
    """Seconds one process takes for a fixed mix of the data plane's kinds of work, on one thread: interpreted
    Python and a small 3D convolution (the VAE's)."""
    import torch

    torch.set_num_threads(1)
    conv, x = torch.nn.Conv3d(8, 8, 3, padding=1), torch.rand(1, 8, 9, 48, 48)
    t0 = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    with torch.inference_mode():
        for _ in range(20):
            conv(x)
    return time.perf_counter() - t0


def machine_ceiling(workers: int, repeats: int = 5) -> float:
    """The throughput of `workers` processes doing fixed work side by side over one doing it alone (the median of
    `repeats`): what this machine allows any N-worker speed-up to reach at that moment, shared hosts included."""
    import statistics
    from multiprocessing import get_context

    ratios = []
    with get_context("spawn").Pool(workers) as pool:
        pool.map(_fixed_work, range(workers))  # imports and warm-up
        for _ in range(repeats):
            alone = pool.apply(_fixed_work, (0,))
            together = max(pool.map(_fixed_work, range(workers), chunksize=1))
            ratios.append(workers * alone / together)
    return statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=240, help="videos at 1x (the default data set: 240)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="CPUs of the embedded Ray (the speed-up is vs 1)")
    ap.add_argument("--no-speedup", action="store_true", help="skip the 1x runs on Ray with 1 CPU and without Ray")
    ap.add_argument("--speedup-at-scale", action="store_true",
                    help="also run Nx on Ray with 1 CPU: the speed-up under load, start-up amortised")
    ap.add_argument("--no-ceiling", action="store_true", help="skip measuring the machine's own N-process ceiling")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--run-stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ray-cpus", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_stage:
        run_stage(args.run_stage, args.root, args.ray_cpus)
        return

    import torch

    from mugv.config import load_params
    from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
    from mugv.stages import synth

    params = load_params()
    with tempfile.TemporaryDirectory(prefix="mugv-load-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        save_vae(VideoVAE(get_vae_preset(params.train_vae.preset)), tmp / "vae")
        results: dict[str, dict] = {}
        runs = [("1x", args.base, args.workers), (f"{args.scale}x", args.base * args.scale, args.workers)]
        if not args.no_speedup:
            runs = [("1x, no Ray", args.base, 0), ("1x, Ray 1 CPU", args.base, 1)] + runs
        if args.speedup_at_scale:
            runs.append((f"{args.scale}x, Ray 1 CPU", args.base * args.scale, 1))
        ceilings = [] if args.no_ceiling else [machine_ceiling(args.workers)]
        if ceilings:
            print(f"machine ceiling before the runs: {args.workers} processes of fixed work side by side = "
                  f"{ceilings[0]:.2f}x one", flush=True)
        for name, videos, ray_cpus in runs:
            root = tmp / f"n{videos}-ray{ray_cpus}"
            params.synth.num_videos = videos
            t0 = time.perf_counter()
            synth.run(root / "synth", params.synth, progress=False)
            print(f"{name}: {videos} videos drawn in {time.perf_counter() - t0:.0f} s", flush=True)
            results[name] = {}
            for stage in STAGES:
                seconds, peak, counts = timed(stage, root, ray_cpus)
                results[name][stage] = (seconds, peak, counts)
                print(f"  {stage:7} {seconds:7.1f} s  peak {peak / 2**20:7.0f} MiB  {counts}", flush=True)

        if ceilings:
            ceilings.append(machine_ceiling(args.workers))
    ceiling = sum(ceilings) / len(ceilings) if ceilings else float("nan")
    if ceilings:
        print(f"machine ceiling after the runs: {ceilings[1]:.2f}x; mean {ceiling:.2f}x (a speed-up over Ray 1 CPU "
              f"cannot exceed it)")
    one, big = results["1x"], results[f"{args.scale}x"]
    single, plain = results.get("1x, Ray 1 CPU"), results.get("1x, no Ray")
    print(f"\nRay {args.workers} CPUs (embedded), 1x = {args.base} videos, {args.scale}x = {args.base * args.scale}; "
          "speed-ups at 1x")
    print(f"{'stage':8}{'1x s':>8}{f'{args.scale}x s':>9}{'time x':>8}{'1x MiB':>9}{f'{args.scale}x MiB':>10}"
          f"{'memory x':>10}{'lost':>6}{f'vs Ray 1':>10}{'vs no Ray':>11}")
    table = {}
    for stage in [*STAGES, "all"]:
        pick = (lambda r: r[stage]) if stage != "all" else (lambda r: [sum(r[s][i] for s in STAGES) for i in (0, 1)] + [{}])
        (t1, m1, _), (tn, mn, counts) = pick(one), pick(big)
        vs_one = pick(single)[0] / t1 if single else None
        vs_plain = pick(plain)[0] / t1 if plain else None
        lost_n = sum(lost(s, big[s][2]) for s in STAGES) if stage == "all" else lost(stage, counts)
        table[stage] = {"seconds_1x": t1, "seconds_nx": tn, "time_ratio": tn / t1, "peak_mib_1x": m1 / 2**20,
                        "peak_mib_nx": mn / 2**20, "memory_ratio": mn / m1, "lost": lost_n,
                        "speedup_vs_ray1": vs_one, "speedup_vs_no_ray": vs_plain, "counts_nx": counts}
        memory = "" if stage == "all" else f"{m1 / 2**20:9.0f}{mn / 2**20:10.0f}{mn / m1:10.2f}"
        print(f"{stage:8}{t1:8.1f}{tn:9.1f}{tn / t1:8.2f}{memory:>29}{lost_n:6d}"
              + (f"{vs_one:9.2f}x{vs_plain:10.2f}x" if single else ""))
    big_single = results.get(f"{args.scale}x, Ray 1 CPU")
    if big_single:
        print(f"\nat {args.scale}x, Ray {args.workers} CPUs vs Ray 1 CPU:")
        for stage in STAGES:
            table[stage]["speedup_vs_ray1_nx"] = big_single[stage][0] / big[stage][0]
            print(f"  {stage:8}{big_single[stage][0]:8.1f} s vs {big[stage][0]:7.1f} s: "
                  f"{table[stage]['speedup_vs_ray1_nx']:.2f}x")
        total_single = sum(big_single[s][0] for s in STAGES)
        table["all"]["speedup_vs_ray1_nx"] = total_single / table["all"]["seconds_nx"]
        print(f"  {'all':8}{total_single:8.1f} s vs {table['all']['seconds_nx']:7.1f} s: "
              f"{table['all']['speedup_vs_ray1_nx']:.2f}x ({table['all']['speedup_vs_ray1_nx'] / ceiling:.0%} "
              f"of the machine's {ceiling:.2f}x)")
    if ceilings:
        table["machine_ceiling"] = {"before": ceilings[0], "after": ceilings[1], "mean": ceiling}
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
