"""Pretraining throughput on CPU: tokens/s and MFU (vs a matmul measured in the same run) for the tiny and small
presets, DP=2 weak-scaling efficiency vs DP=1 for both (one thread per rank), padding waste of the default curriculum.

    python bench/train_throughput.py [--latents DIR] [--steps 12]

Without --latents a latent set with the default data set's 128p bucket shapes is written to a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

from mugv.latents.shards import INDEX, STATS, TEXT_NULL, LatentStats, ShardWriter, save_text_null
from mugv.training.config import CurriculumStage, LRScheduleConfig, PretrainConfig, default_stages
from mugv.training.metrics import measure_matmul_flops
from mugv.training.bucket_sampler import INDEX_COLUMNS, BatchingConfig, BucketBatchSampler

# the default data set's buckets (128p, frames 1/9/17) as latent (T, H, W), and samples per bucket
DEFAULT_SHAPES = {
    "128p_96x128": (12, 16), "128p_128x96": (16, 12), "128p_112x112": (14, 14), "128p_80x144": (10, 18),
}
FRAMES = {1: 1, 9: 2, 17: 3}


def write_latents(root: Path, per_bucket: int = 12, text_len: int = 77, text_dim: int = 384) -> Path:
    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(root, max_shard_bytes=8 << 20)
    rows = []
    for name, (h, w) in DEFAULT_SHAPES.items():
        for frames, t in FRAMES.items():
            bucket = f"{name}_f{frames}"
            for i in range(per_bucket):
                sid = f"{bucket}-{i}"
                mask = torch.zeros(text_len, dtype=torch.int8)
                mask[:20] = 1
                shard = writer.add(sid, {"latent": torch.randn(24, t, h, w, generator=g),
                                         "text": torch.randn(20, text_dim, generator=g), "text_mask": mask})
                rows.append(dict(sample_id=sid, clip_id=sid, kind="image" if frames == 1 else "video", bucket=bucket,
                                 height=h * 8, width=w * 8, num_frames=frames, latent_t=t, latent_h=h, latent_w=w,
                                 shard=shard, caption="", fps=12.0, frame_start=0, frame_end=frames, text_len=20))
    shards = {info.name: info.sha256 for info in writer.close()}
    index = pd.DataFrame(rows)
    index["shard_sha256"] = index["shard"].map(shards)
    index.to_parquet(root / INDEX, index=False)
    LatentStats(mean=[0.0] * 24, std=[1.0] * 24, count=1).save(root / STATS)
    null_mask = torch.zeros(text_len, dtype=torch.int8)
    null_mask[:2] = 1
    save_text_null(root / TEXT_NULL, {"null.text": torch.zeros(2, text_dim), "null.text_mask": null_mask,
                                      "negative.text": torch.zeros(2, text_dim), "negative.text_mask": null_mask.clone()},
                   {"negative_prompt": ""})
    return root


def bench_config(model: str, steps: int, tokens: int, **overrides) -> PretrainConfig:
    stage = CurriculumStage(name="bench", steps=steps,
                            batching=BatchingConfig(buckets=["*_f17"], tokens_per_batch=tokens),
                            lr=LRScheduleConfig(kind="constant", peak=1e-4))
    return PretrainConfig.model_validate({
        "model": model, "log_every": 1, "heldout": {"samples": 0}, "checkpoint": {"every": 10_000, "keep": 1},
        "ema": {"enabled": False}, "stages": [stage.model_dump()], **overrides,
    })


def single_thread_peak() -> float:
    """fp32 matmul FLOP/s of one thread, best of 10 windows (the cores are shared with other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    peak = measure_matmul_flops(torch.device("cpu"), repeats=10)
    torch.set_num_threads(threads)
    return peak


def run_worker(latents: Path, out: Path, cfg: PretrainConfig, nproc: int) -> dict:
    """Train in fresh processes (one thread each) and return the steady-state metrics (first 2 steps dropped).

    MFU is against the best one-thread matmul peak measured here just before and just after the run.
    """
    before = single_thread_peak()
    cfg = cfg.model_copy(update={"peak_flops": before})
    spec = out.with_suffix(".json")
    spec.write_text(json.dumps({"latents": str(latents), "out": str(out), "config": cfg.model_dump(mode="json")}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    if nproc == 1:
        cmd = [sys.executable, __file__, "--worker", str(spec)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(29_400 + os.getpid() % 1000), __file__, "--worker", str(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak = max(before, single_thread_peak())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if "loss" in r][2:]
    metrics = {key: sum(r[key] for r in steady) / len(steady) for key in ("tokens_per_s", "mfu", "padding_waste")}
    return {**metrics, "mfu": metrics["mfu"] * before / peak, "peak": peak}


def worker(spec_path: str) -> None:
    from mugv.training.dit_trainer import run_pretrain

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    cfg = PretrainConfig.model_validate(spec["config"])
    run_pretrain(Path(spec["latents"]), cfg.stages[0].name, None, Path(spec["out"]), cfg, progress=False)


def curriculum_waste(latents: Path) -> dict[str, float]:
    index = pd.read_parquet(latents / INDEX, columns=INDEX_COLUMNS)
    return {s.name: BucketBatchSampler(index, s.batching, seed=0).expected_padding_waste() for s in default_stages()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latents", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        latents = args.latents or write_latents(tmp / "latents")
        print(f"latents: {latents}  torch {torch.__version__}, {os.cpu_count()} cores")

        print("\n== padding waste of the default curriculum (expected over the bucket mix; goal <= 3%)")
        for name, waste in curriculum_waste(latents).items():
            print(f"  {name:12s} {waste:6.2%}")

        print("\n== one process, one thread: tokens/s and MFU vs a fp32 matmul measured in the same process")
        for model, tokens in (("tiny", 2400), ("small", 2400)):
            m = run_worker(latents, tmp / f"{model}-dp1", bench_config(model, args.steps, tokens), 1)
            print(f"  {model:6s} tokens/batch {tokens}: {m['tokens_per_s']:9.0f} tokens/s   MFU {m['mfu']:6.1%} "
                  f"of {m['peak'] / 1e9:.0f} GFLOP/s   waste {m['padding_waste']:.2%}")

        print("\n== DP weak scaling (same micro-batch per rank, one thread per rank; goal >= 0.9)")
        for model in ("tiny", "small"):
            one = run_worker(latents, tmp / f"{model}-w1", bench_config(model, args.steps, 2400), 1)
            two = run_worker(latents, tmp / f"{model}-w2", bench_config(model, args.steps, 2400), 2)
            efficiency = two["tokens_per_s"] / (2 * one["tokens_per_s"])
            print(f"  {model:6s} DP=1 {one['tokens_per_s']:9.0f} tokens/s   DP=2 {two['tokens_per_s']:9.0f} tokens/s   "
                  f"efficiency {efficiency:.2f}")

if __name__ == "__main__":
    main()
