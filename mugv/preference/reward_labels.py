"""Reward-labelled preference data: training prompts sampled K times by a release, scored, paired and labelled.

The prompts are captions of the training latents that the reward can score, never a held-out evaluation
prompt (nor, for the synthetic grammar, a caption of a held-out shape x colour x background combination).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mugv.latents.heldout import seed_of
from mugv.preference.table import VIDEOS, PreferenceParts

if TYPE_CHECKING:
    from mugv.eval.reward import Reward
    from mugv.inference.generate import VideoGenerator

PROBE_VIDEO = np.zeros((1, 16, 16, 3), np.uint8)  # a reward that cannot read a caption raises on any video


class NoTrainingPrompts(ValueError):
    """No caption of the latent set can be a training prompt (none the reward reads that is not held out)."""


def heldout_captions(path: Path) -> tuple[set[str], set[tuple[str, str, str]]]:
    """The held-out evaluation prompts (one JSON object with a `caption` per line, synth's heldout.jsonl) and their
    (shape, colour, background colour) combinations where the rows name them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"held-out prompts {path} do not exist (`mugv synth` writes heldout.jsonl)")
    captions, combinations = set(), set()
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            captions.add(row["caption"])
            if {"shape", "colour", "background"} <= set(row):
                combinations.add((row["shape"], row["colour"], row["background"].split(" ")[0]))
    return captions, combinations


def _combination(caption: str) -> tuple[str, str, str] | None:
    """(shape, colour, background colour) of a caption of the synthetic grammar; None for any other caption."""
    from mugv.eval.reward import parse_caption

    try:
        parts = parse_caption(caption)
    except ValueError:
        return None
    return parts.shape, parts.colour, parts.background_colour


def reward_reads(reward: Reward, caption: str) -> bool:
    """Whether `reward` can score a video against `caption` (its grammar parses it)."""
    try:
        reward.score(PROBE_VIDEO, caption)
    except ValueError:
        return False
    return True


def training_prompts(latents_dir: Path, heldout_file: Path, reward: Reward, count: int, seed: int) -> list[str]:
    """`count` distinct captions of the training latents that `reward` reads and that are not held out, chosen by
    a seeded hash of the caption (stable as the data set grows); NoTrainingPrompts when there is none."""
    import pandas as pd

    from mugv.latents.names import INDEX

    index = Path(latents_dir) / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{latents_dir} is not a latent set: no {INDEX} (`mugv encode` writes one)")
    captions = sorted({str(c) for c in pd.read_parquet(index, columns=["caption"])["caption"].dropna()})
    held_captions, held_combinations = heldout_captions(heldout_file)
    usable = [c for c in captions if c.strip() and c not in held_captions and _combination(c) not in held_combinations
              and reward_reads(reward, c)]
    if not usable:
        raise NoTrainingPrompts(f"no caption of {index} is usable as a training prompt: of {len(captions)} distinct "
                         f"captions none is both readable by the reward {reward.name!r} and not held out")
    chosen = sorted(usable, key=lambda c: seed_of(seed, "preference-prompt", c))[:count]
    leaked = [c for c in chosen if c in held_captions or (_combination(c) or ()) in held_combinations]
    assert not leaked, f"held-out evaluation prompts chosen as training prompts: {leaked}"
    return chosen


def sample_seed(seed: int, prompt: str, k: int) -> int:
    """The noise seed of sample k of a prompt: a hash of (seed, prompt, k), so a prompt keeps its samples."""
    return seed_of(seed, "preference-sample", prompt, k) % 2**31


def sample_and_score(generator: VideoGenerator, reward: Reward, prompts: list[str], out_dir: Path, *,
                     samples_per_prompt: int, seed: int, frames: int, height: int, width: int, fps: float,
                     steps: int, cfg: float, lineage: dict, progress: bool) -> PreferenceParts:
    """K samples of each prompt: its latent and text inputs, its video in out_dir/videos/ and the reward of that
    video file (a row each)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from mugv.data.video_io import read_frames, write_video
    from mugv.progress import stage_progress

    parts = PreferenceParts()
    (Path(out_dir) / VIDEOS).mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("preference_data"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with stage_progress(*columns, enabled=progress, label="preference_data") as bar:
        task = bar.add_task("reward samples", total=len(prompts) * samples_per_prompt)
        for p, prompt in enumerate(prompts):
            noise_seeds = [sample_seed(seed, prompt, k) for k in range(samples_per_prompt)]
            batch = generator.sample_seeds(prompt, noise_seeds, frames=frames, height=height, width=width, steps=steps,
                                           cfg=cfg, fps=fps)  # a prompt's K samples in one batch
            for k, (noise_seed, sampled) in enumerate(zip(noise_seeds, batch)):
                name = f"{VIDEOS}/p{p:03d}_k{k}.mp4"
                write_video(Path(out_dir) / name, list(generator.decode(sampled.z, frames)), fps)
                scores = reward.score(read_frames(Path(out_dir) / name), prompt)  # as written, as evaluate scores
                total = scores.pop("reward")
                row = {"prompt": prompt, "seed": noise_seed, "video": name,
                       "reward": None if math.isnan(total) else total, "components": scores, "source": "reward",
                       **lineage, "sampler": {"steps": steps, "cfg": cfg}, "label_file": None}
                parts.add_sample(row, sampled.z, sampled.y, sampled.mask, fps)
                bar.advance(task)
    return parts


def reward_pairs(samples: list[dict], min_margin: float, max_per_prompt: int | None) -> list[dict]:
    """Within each prompt, every (better, worse) pair of scored samples whose reward differs by > 0 and >= min_margin;
    with `max_per_prompt`, that many of a prompt's pairs, largest margins first."""
    by_prompt: dict[str, list[dict]] = {}
    for s in samples:
        if s.get("reward") is not None:
            by_prompt.setdefault(s["prompt"], []).append(s)
    pairs = []
    for prompt, group in by_prompt.items():
        found = [(a["reward"] - b["reward"], a["index"], b["index"]) for a in group for b in group
                 if a["reward"] > b["reward"] and a["reward"] - b["reward"] >= min_margin]
        found.sort(key=lambda f: (-f[0], f[1], f[2]))
        pairs += [{"winner": w, "loser": l, "margin": m, "prompt": prompt, "source": "reward"}
                  for m, w, l in found[:max_per_prompt]]
    return pairs


def threshold_labels(samples: list[dict], desirable_min: float, undesirable_max: float) -> list[dict]:
    """Absolute labels of scored samples: reward >= desirable_min is desirable, <= undesirable_max undesirable."""
    labels = []
    for s in samples:
        reward = s.get("reward")
        if reward is not None and (reward >= desirable_min or reward <= undesirable_max):
            labels.append({"index": s["index"], "desirable": reward >= desirable_min, "source": "reward"})
    return labels


def label_with_reward(generator: VideoGenerator, reward: Reward, prompts: list[str], out_dir: Path, *,
                      min_margin: float, max_pairs_per_prompt: int | None, desirable_min: float,
                      undesirable_max: float, **sampling) -> PreferenceParts:
    """`sample_and_score` (its keyword arguments in `sampling`), then the pairs and labels of those samples."""
    parts = sample_and_score(generator, reward, prompts, out_dir, **sampling)
    parts.pairs = reward_pairs(parts.samples, min_margin, max_pairs_per_prompt)
    parts.labels = threshold_labels(parts.samples, desirable_min, undesirable_max)
    return parts
