"""The dpo and kto stages: preference optimisation of the SFT model on the preference set, then release and register."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mugv.stages import METRICS_DIR, stage_run, write_key_metrics
from mugv.training.config import BatchingConfig, CurriculumStage, PreferenceOptConfig

if TYPE_CHECKING:
    from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
    from mugv.models.text.config import TextEncoderConfig
    from mugv.stages.pretrain import Config as PretrainSection
    from mugv.tracking import TrackingConfig

SUMMARY = "summary.json"
PLOTS = "plots"
ADAPTER_MODEL = "{model}-adapters"  # the registered model holding the LoRA adapters on their own
KEY_NUMBERS = ("steps", "loss_first", "loss_last", "heldout_loss_start", "heldout_loss_end", "implicit_accuracy")


class DPOConfig(PreferenceOptConfig):
    """The `dpo` section of params.yaml: Flow-DPO on the preference pairs."""

    method: Literal["dpo"] = "dpo"


class KTOConfig(PreferenceOptConfig):
    """The `kto` section of params.yaml: Diffusion-KTO on the desirable / undesirable labels."""

    method: Literal["kto"] = "kto"


METRICS = str(METRICS_DIR / "{method}.json")  # dpo.json, kto.json: the key numbers, committed (dvc.yaml)


def curriculum_stage(cfg: PreferenceOptConfig) -> CurriculumStage:
    """The trainer's stage entry: steps and lr (batches come from the preference set, not from buckets)."""
    return CurriculumStage(name=cfg.method, steps=cfg.steps, batching=BatchingConfig(tokens_per_batch=1), lr=cfg.lr)


def run(preference_dir: Path, latents_dir: Path, init_from: Path, out_dir: Path, cfg: PreferenceOptConfig,
        pretrain: PretrainSection, tracker: TrackingConfig | None = None, *, vae: Path, flow: FlowTrainingConfig,
        sampler: SamplerConfig, text: TextEncoderConfig, register: bool = True, progress: bool = True,
        metrics_path: Path | None = None) -> dict | None:
    """Train `cfg.method` from `init_from` (the SFT stage), export the merged release, render, register (alias =
    the method); a LoRA adapter is also saved and registered on its own."""
    from mugv import tracking
    from mugv.progress import heartbeat
    from mugv.stages.publish import publish
    from mugv.storage import write_text
    from mugv.training.checkpoint import dataset_fingerprint
    from mugv.training.distributed import leave_job
    from mugv.training.preference_trainer import ADAPTER, PreferenceTrainer

    method, out_dir = cfg.method, Path(out_dir)
    trainer_cfg = pretrain.trainer_config().model_copy(update={"stages": [curriculum_stage(cfg)], "ema": cfg.ema})
    if trainer_cfg.parallel.tp > 1:
        raise ValueError(f"{method}: exporting a release from a tensor-parallel run is not supported yet; "
                         "set pretrain.parallel.tp 1 (data parallel works)")
    if int(os.environ.get("RANK", "0")) != 0:  # other ranks of a torchrun job: train only
        PreferenceTrainer(trainer_cfg, cfg, Path(preference_dir), Path(latents_dir), out_dir, Path(init_from),
                          progress=False, flow=flow).train()
        leave_job()
        return None
    section = {method: cfg.model_dump(mode="json"), "diffusion": {"training": flow.model_dump(mode="json")}}
    with stage_run(method, tracker, params=section, tags={"mugv.init_from": str(init_from)}) as tracked:
        with heartbeat(f"{method}: building the model and its reference, reading the preference set",
                       enabled=not progress):
            trainer = PreferenceTrainer(trainer_cfg, cfg, Path(preference_dir), Path(latents_dir), out_dir,
                                        Path(init_from), tracked.log_metrics, progress, flow=flow)
        result = trainer.train()
        weights = trainer.export_weights()
        leave_job()  # the rest (release, samples, registration) is rank 0's alone
        write_text(out_dir / SUMMARY, json.dumps(result, indent=1))
        tracked.log_artifact(out_dir / SUMMARY, method)
        tracked.log_artifact(out_dir / PLOTS, f"{method}/{PLOTS}")
        write_key_metrics(metrics_path, {k: result[k] for k in KEY_NUMBERS if k in result})
        with heartbeat(f"{method}: exporting the release, rendering the sample videos", enabled=not progress):
            published = publish(
                tracked, tracker, weights=weights, out_dir=out_dir, vae=vae, latents_dir=Path(latents_dir),
                text=text, flow=flow, sampler=sampler, prompts=pretrain.sample_prompts, size=pretrain.sample_size,
                register=register, alias=method,
                tags={"mugv.stage": method, "mugv.dataset": dataset_fingerprint(latents_dir),
                      "mugv.init_from": str(init_from), "mugv.preference_set": tracking.folder_fingerprint(preference_dir),
                      "mugv.lora": cfg.lora.enabled},
                description=(f"{method}: {result['steps']} steps from {init_from}, beta {cfg.beta} (mean reduction)"
                             + (f", LoRA rank {cfg.lora.rank} merged" if cfg.lora.enabled else "")),
            )
        if cfg.lora.enabled and register and tracker is not None:
            adapter = tracking.register_checkpoint(
                tracked, out_dir / ADAPTER, ADAPTER_MODEL.format(model=tracker.registered_model), alias=method,
                cfg=tracker, tags={"mugv.stage": method, "mugv.base_version": published.version},
                description=f"{method} LoRA adapter (rank {cfg.lora.rank}, alpha {cfg.lora.alpha}) of {init_from}",
            )
            result["adapter_version"] = int(adapter)
    if published.version is not None:
        result["registered_version"] = published.version
    result["samples"] = len(published.samples)
    return result


