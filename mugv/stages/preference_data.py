"""The preference_data stage: a release's reward-scored samples of training prompts and/or imported human labels,
written as one preference set (`mugv.preference.table`) for DPO (pairs) and KTO (labels)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from mugv.section import Section
from mugv.stages import METRICS_DIR, stage_run, write_key_metrics

if TYPE_CHECKING:
    from mugv.diffusion.config import SamplerConfig
    from mugv.tracking import TrackingConfig

NAME = "preference_data"
METRICS = METRICS_DIR / "preference_data.json"  # the key numbers, committed (dvc.yaml metrics)


class Config(Section):
    """The `preference_data` section of params.yaml."""

    reward: str = Field("synthetic_grammar", description="a reward registered in mugv.eval.reward")
    prompts: int = Field(32, ge=1, description="training prompts to sample (distinct captions, chosen by the seed)")
    samples_per_prompt: int = Field(4, ge=1, description="K samples per prompt, each with its own noise seed")
    seed: int = Field(0, description="chooses the prompts and the samples' noise seeds")
    frames: int = Field(17, ge=1, description="1 or 8k+1")
    height: int = Field(64, ge=16, multiple_of=16)
    width: int = Field(64, ge=16, multiple_of=16)
    fps: float = Field(8.0, gt=0)
    sampler_steps: int | None = Field(None, ge=1, description="Euler steps; None: diffusion.sampler.steps")
    cfg_scale: float | None = Field(None, ge=0, description="guidance scale; None: diffusion.sampler.cfg_scale")
    min_margin: float = Field(0.1, ge=0, description="a pair's winner beats its loser by at least this reward")
    max_pairs_per_prompt: int | None = Field(None, ge=1, description="largest margins first; None: every pair")
    desirable_min: float = Field(0.7, description="reward >= this: a desirable sample (KTO)")
    undesirable_max: float = Field(0.6, description="reward <= this: an undesirable sample; between: unlabelled")
    source: Literal["reward", "human", "both"] = Field("reward", description="reward samples, human labels or both")
    human_labels: list[str] = Field(default=[], description="label files (.csv, .jsonl, Label Studio .json)")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.undesirable_max >= self.desirable_min:
            raise ValueError(f"undesirable_max ({self.undesirable_max}) must be below desirable_min "
                             f"({self.desirable_min})")
        if self.frames != 1 and (self.frames - 1) % 8:
            raise ValueError(f"frames must be 1 or 8k+1, got {self.frames}")
        return self


def key_metrics(summary: dict) -> dict:
    """The committed numbers: counts, and the reward mean/se of the samples, of the pairs' winners and losers, and
    of their margin."""
    metrics = {name: summary[name] for name in ("samples", "prompts", "pairs", "labels_desirable",
                                                 "labels_undesirable", "rejected")}
    metrics.update({f"samples_from_{source}": count for source, count in summary["samples_by_source"].items()})
    names = {"samples": "reward", "winners": "winner_reward", "losers": "loser_reward", "margin": "margin"}
    for group, name in names.items():
        for stat in ("mean", "se"):
            value = summary["reward"][group][stat]
            metrics[f"{name}_{stat}"] = math.nan if value is None else value
    return metrics


def run(
    release: str | Path,
    latents_dir: Path | None,
    heldout: Path | None,
    out_dir: Path,
    cfg: Config,
    sampler: SamplerConfig,
    tracker: TrackingConfig | None = None,
    *,
    progress: bool = True,
    metrics_path: Path | None = None,
) -> dict:
    """Write the preference set of `release` (a release folder or `models:/NAME@ALIAS|/VERSION`) to out_dir.

    source reward/both: `cfg.prompts` captions of the latent set at `latents_dir` (never one of `heldout`),
    `cfg.samples_per_prompt` samples each, scored by `cfg.reward`, paired and labelled; human/both: the label
    files `cfg.human_labels`, encoded with the release's VAE and text encoder. The folder is replaced in one
    rename when everything is written; the key numbers go to `metrics_path` and to MLflow. Returns the summary."""
    from mugv import tracking
    from mugv.eval.reward import get_reward
    from mugv.inference.generate import VideoGenerator
    from mugv.preference.human_labels import import_human_labels, read_label_file
    from mugv.preference.reward_labels import heldout_captions, label_with_reward, training_prompts
    from mugv.preference.table import PreferenceParts, staged_folder, write_preference_set
    from mugv.progress import progress_line

    with_reward, with_human = cfg.source in ("reward", "both"), cfg.source in ("human", "both")
    if with_reward and (latents_dir is None or heldout is None):
        raise ValueError(f"source {cfg.source!r} needs the latent set (training prompts) and the held-out prompts")
    if with_human and not cfg.human_labels:
        raise ValueError(f"source {cfg.source!r} needs label files (params preference_data.human_labels or --labels)")
    for file in cfg.human_labels if with_human else []:
        if not Path(file).is_file():
            raise FileNotFoundError(f"label file {file} does not exist")
    labelled = [read_label_file(Path(f)) for f in cfg.human_labels] if with_human else []
    reward = get_reward(cfg.reward) if with_reward else None  # an unknown reward fails before any work
    held = heldout_captions(heldout)[0] if heldout is not None and (with_reward or Path(heldout).is_file()) else set()
    prompts = training_prompts(latents_dir, heldout, reward, cfg.prompts, cfg.seed) if with_reward else []
    local = tracking.resolve_model_ref(release, tracker)
    lineage = {"model": str(release), "release_sha": tracking.folder_fingerprint(local)}
    steps = cfg.sampler_steps or sampler.steps
    cfg_scale = sampler.cfg_scale if cfg.cfg_scale is None else cfg.cfg_scale
    size = {"frames": cfg.frames, "height": cfg.height, "width": cfg.width, "fps": cfg.fps}
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json"), "sampler": {"steps": steps,
                                                                                         "cfg": cfg_scale}},
                   tags={"mugv.model": str(release), "mugv.release_sha": lineage["release_sha"]}) as tracked:
        generator = VideoGenerator(local)
        with staged_folder(out_dir) as staging:
            parts = PreferenceParts()
            if with_reward:
                parts.extend(label_with_reward(
                    generator, reward, prompts, staging, min_margin=cfg.min_margin,
                    max_pairs_per_prompt=cfg.max_pairs_per_prompt, desirable_min=cfg.desirable_min,
                    undesirable_max=cfg.undesirable_max, samples_per_prompt=cfg.samples_per_prompt, seed=cfg.seed,
                    steps=steps, cfg=cfg_scale, lineage=lineage, progress=progress, **size))
            if with_human:
                parts.extend(import_human_labels(generator, labelled, lineage=lineage,
                                                 heldout=held, progress=progress, **size))
            summary = write_preference_set(staging, parts)
        if not summary["samples"]:
            progress_line(f"{NAME}: warning: the preference set {out_dir} holds no sample "
                          f"({summary['rejected']} label rows rejected)")
        metrics = key_metrics(summary)
        write_key_metrics(metrics_path, metrics)
        tracked.log_metrics({k: float(v) for k, v in metrics.items() if not math.isnan(v)})
        for name in ("summary.json", "rejected.jsonl"):
            tracked.log_artifact(Path(out_dir) / name, NAME)
    return summary
