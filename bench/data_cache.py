"""Latent batch reads with the in-memory sample cache vs from the shards every step, on the default curriculum.

    python bench/data_cache.py [--latents data/latents] [--steps 60]

Reads the batches of each default curriculum stage (the same BucketBatchSampler stream the trainer
uses) twice over side by side: once from a dataset without cache, once through a warmed cache, and
prints milliseconds per step, the ratio, and the seconds the cache saves over the stage's steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from mugv.latents.shards import LatentDataset
from mugv.models.dit.config import get_preset
from mugv.training.bucket_sampler import BucketBatchSampler
from mugv.training.config import default_stages


def read_step(dataset: LatentDataset, batches) -> None:
    for micro in batches.local:  # what BatchReader._read does per micro-batch
        samples = [dataset[row] for row in micro.rows]
        torch.stack([s["latent"].float() for s in samples])
        torch.stack([s["text"].float() for s in samples])


def seconds_per_step(dataset: LatentDataset, stage, steps: int, dit) -> float:
    sampler = BucketBatchSampler(dataset.index, stage.batching, seed=0, patch_size=dit.patch_size,
                                 start_end_tokens=dit.start_end_tokens)
    started = time.perf_counter()
    for _ in range(steps):
        read_step(dataset, sampler.next_step())
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=Path, default=Path("data/latents"))
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    if not (args.latents / "latents.parquet").exists():
        sys.exit(f"no latent set at {args.latents}: run `dvc repro encode` (or `make run`) first, or pass --latents")
    torch.set_num_threads(1)
    dit = get_preset("tiny")
    print(f"{'stage':<12} {'steps':>5} {'shards ms/step':>15} {'cached ms/step':>15} {'ratio':>6} {'saved s/stage':>14}")
    for stage in default_stages():
        plain = LatentDataset(args.latents)
        cached = LatentDataset(args.latents, cache_mb=1024)
        seconds_per_step(cached, stage, args.steps, dit)  # warm: one pass fills the cache
        shards = seconds_per_step(plain, stage, args.steps, dit)
        memory = seconds_per_step(cached, stage, args.steps, dit)
        saved = (shards - memory) * stage.steps
        print(f"{stage.name:<12} {stage.steps:>5} {shards * 1e3:>15.1f} {memory * 1e3:>15.1f} "
              f"{shards / memory:>6.1f} {saved:>14.1f}")


if __name__ == "__main__":
    main()
