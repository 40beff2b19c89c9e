"""The sft stage: fine-tune the last curriculum stage on the curated clips, lr annealed to 0, then release and register."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from mugv.section import Section
from mugv.stages import METRICS_DIR, stage_run, write_key_metrics
from mugv.training.config import BatchingConfig, CurriculumStage, LRScheduleConfig
from mugv.training.curation import CurationConfig

if TYPE_CHECKING:
    from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
    from mugv.models.text.config import TextEncoderConfig
    from mugv.stages.pretrain import Config as PretrainSection
    from mugv.tracking import TrackingConfig

NAME = "sft"
SUMMARY = "summary.json"
PLOTS = "plots"
CURATED = "curated_clips.json"   # which clips SFT trained on (an output: lineage of the subset)
METRICS = METRICS_DIR / f"{NAME}.json"
KEY_NUMBERS = ("steps", "curated_clips", "curated_samples", "loss_first", "loss_last", "heldout_loss_start",
               "heldout_loss_end", "heldout_loss_change")


class Config(Section):
    """The `sft` section of params.yaml: the curated subset, steps, batching and the annealed lr."""

    steps: int = Field(60, gt=0)
    batching: BatchingConfig = BatchingConfig(buckets=["*_f1", "*_f9", "*_f17", "*_f33"], tokens_per_batch=2400,
                                              image_fraction=0.1)
    lr: LRScheduleConfig = LRScheduleConfig(kind="cosine", peak=2e-4, warmup_steps=5, min_ratio=0.0)
    curation: CurationConfig = CurationConfig()

    def curriculum_stage(self) -> CurriculumStage:
        return CurriculumStage(name=NAME, steps=self.steps, batching=self.batching, lr=self.lr)


def run(latents_dir: Path, qc_table: Path, init_from: Path, out_dir: Path, cfg: Config, pretrain: PretrainSection,
        tracker: TrackingConfig | None = None, *, vae: Path, flow: FlowTrainingConfig, sampler: SamplerConfig,
        text: TextEncoderConfig, register: bool = True, progress: bool = True,
        metrics_path: Path | None = METRICS) -> dict | None:
    """Curate, train `cfg.steps` from `init_from` (the last curriculum stage), release, render, register (alias `sft`).
    Returns the metrics on rank 0, None on the other ranks of a torchrun job."""
    import pandas as pd

    from mugv.latents.shards import LatentDataset
    from mugv.progress import heartbeat
    from mugv.stages.publish import publish
    from mugv.storage import write_text
    from mugv.training.checkpoint import dataset_fingerprint
    from mugv.training.curation import curated_clip_ids, curated_sample_ids
    from mugv.training.dit_trainer import run_pretrain
    from mugv.training.distributed import leave_job

    latents_dir, out_dir = Path(latents_dir), Path(out_dir)
    clips = curated_clip_ids(pd.read_parquet(qc_table), cfg.curation)
    samples = curated_sample_ids(LatentDataset(latents_dir, verify=False).index, clips)
    trainer_cfg = pretrain.trainer_config().model_copy(update={"stages": [cfg.curriculum_stage()]})
    if int(os.environ.get("RANK", "0")) != 0:  # other ranks of a torchrun job: train only
        run_pretrain(latents_dir, NAME, Path(init_from), out_dir, trainer_cfg, progress=False, flow=flow, include=samples)
        leave_job()
        return None
    section = {NAME: cfg.model_dump(mode="json"), "diffusion": {"training": flow.model_dump(mode="json")}}
    with stage_run(NAME, tracker, params=section, tags={"mugv.init_from": str(init_from)}) as tracked:
        result = run_pretrain(latents_dir, NAME, Path(init_from), out_dir, trainer_cfg, progress=progress,
                              log=tracked.log_metrics, flow=flow, include=samples)
        leave_job()  # the rest (export, samples, registration) is rank 0's alone
        result.update(curated_clips=len(clips), curated_samples=len(samples),
                      heldout_loss_change=result["heldout_loss_end"] / result["heldout_loss_start"] - 1)
        write_text(out_dir / CURATED, json.dumps(sorted(clips), indent=0) + "\n")
        write_text(out_dir / SUMMARY, json.dumps(result, indent=1))
        tracked.log_metrics({k: result[k] for k in ("curated_clips", "curated_samples", "heldout_loss_change")})
        tracked.log_artifact(out_dir / SUMMARY, NAME)
        tracked.log_artifact(out_dir / PLOTS, f"{NAME}/{PLOTS}")
        write_key_metrics(metrics_path, {k: result[k] for k in KEY_NUMBERS})
        with heartbeat("sft: exporting the release, rendering the sample videos", enabled=not progress):
            dataset = dataset_fingerprint(latents_dir)
            published = publish(
                tracked, tracker, weights=Path(result["checkpoint"]), out_dir=out_dir, vae=vae,
                latents_dir=latents_dir, text=text, flow=flow, sampler=sampler, prompts=pretrain.sample_prompts,
                size=pretrain.sample_size, register=register, alias=NAME,
                tags={"mugv.stage": NAME, "mugv.dataset": dataset, "mugv.init_from": str(init_from)},
                description=(f"sft: {result['steps']} steps on {len(clips)} curated clips from {init_from}; held-out "
                             f"loss {result['heldout_loss_start']:.4f} -> {result['heldout_loss_end']:.4f}"),
            )
    if published.version is not None:
        result["registered_version"] = published.version
    result["samples"] = len(published.samples)
    return result
