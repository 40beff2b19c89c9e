"""The pretrain stage: train one curriculum stage of MUGDiT, export its release, render samples, register it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
from mugv.models.text.config import TextEncoderConfig
from mugv.stages import METRICS_DIR, numeric_leaves, stage_run, write_key_metrics
from mugv.stages.publish import RELEASE, SAMPLES  # noqa: F401  (the output folder names, re-exported)
from mugv.training.config import PretrainConfig

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig

NAME = "pretrain"
CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"  # the final numbers in full, timings and checkpoint path included (not a DVC output)
METRICS = str(METRICS_DIR / NAME / "{stage}.json")  # per curriculum stage: the key numbers, committed (dvc.yaml)
KEY_NUMBERS = ("steps", "loss_first", "loss_last", "heldout_loss_start", "heldout_loss_end", "padding_waste")
PLOTS = "plots"


class Config(PretrainConfig):
    """The `pretrain` section of params.yaml: the trainer's config plus what the stage renders afterwards."""

    sample_prompts: list[str] = Field(
        default=[
            "a red circle moves quickly from left to right on a blue striped background",
            "a yellow square moves slowly from top to bottom on a green noisy background",
        ],
        description="fixed prompts rendered after every stage (videos logged to MLflow)",
    )
    sample_size: tuple[int, int, int] = Field(
        (17, 64, 64), description="(frames, height, width) of those videos: the resolution profile trained on"
    )

    @field_validator("sample_size")
    @classmethod
    def _check_sample_size(cls, size: tuple[int, int, int]) -> tuple[int, int, int]:
        frames, height, width = size
        if frames < 1 or (frames != 1 and (frames - 1) % 8) or height % 16 or width % 16 or min(height, width) < 16:
            raise ValueError(f"sample_size {list(size)}: frames 1 or 8k+1, height and width multiples of 16")
        return size

    def trainer_config(self) -> PretrainConfig:
        """The part of this section the DiT trainer reads (and stores in its checkpoints)."""
        return PretrainConfig.model_validate(self.model_dump(include=set(PretrainConfig.model_fields)))


def metrics_file(stage: str) -> Path:
    """The committed metrics file of curriculum `stage`."""
    return Path(METRICS.format(stage=stage))


def candidate_alias(cfg: Config, stage: str) -> tuple[str, str]:
    """The alias of curriculum `stage`'s registered version and why: the last stage's version, the one evaluate
    judges, is the promotion `candidate`; an earlier stage's is `stage-<name>`."""
    last = cfg.stages[-1].name
    if stage == last:
        return "candidate", f"the last curriculum stage ({last}): the version evaluate judges and promote compares"
    return f"stage-{stage}", (f"an intermediate curriculum stage; the candidate is the last stage's ({last}) "
                              "version, the one evaluate judges")


def version_description(stage: str, latents_dir: Path, dataset: str, result: dict) -> str:
    """The registered model version's description: curriculum stage, data set, steps, held-out loss."""
    def loss(key: str) -> str:
        value = result.get(key)
        return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"

    return (f"pretrain@{stage}: {result.get('steps')} steps on {latents_dir} (data set {dataset[:12]}); "
            f"held-out loss {loss('heldout_loss_start')} -> {loss('heldout_loss_end')}")


def run(
    latents_dir: Path,
    out_dir: Path,
    cfg: Config,
    tracker: TrackingConfig | None = None,
    *,
    stage: str,
    init_from: str | Path | None = None,
    vae: Path = Path("models/vae"),
    flow: FlowTrainingConfig,
    sampler: SamplerConfig,
    text: TextEncoderConfig,
    register: bool = True,
    progress: bool = True,
    metrics_path: Path | None = None,
) -> dict | None:
    """Train curriculum `stage` into `out_dir` (under torchrun: every rank), then on rank 0 only: log the
    metrics, export `release/` (with `vae` and `text`), render `samples/` and register the release
    (`register`, with a tracker) as a pyfunc model aliased by `candidate_alias`. The key numbers go to
    `metrics_path` (None: not written), the full ones (timings, checkpoint path) to `out_dir/summary.json`
    and MLflow. Returns the stage's metrics on rank 0, None on the other ranks."""
    from mugv.training.dit_trainer import run_pretrain
    from mugv.training.distributed import leave_job

    latents_dir, out_dir = Path(latents_dir), Path(out_dir)
    init = Path(init_from) if init_from else None
    trainer_cfg = cfg.trainer_config()
    if int(os.environ.get("RANK", "0")) != 0:  # other ranks of a torchrun job: train only
        run_pretrain(latents_dir, stage, init, out_dir, trainer_cfg, progress=False, flow=flow)
        leave_job()
        return None

    from mugv.progress import heartbeat
    from mugv.stages.publish import publish
    from mugv.storage import write_text
    from mugv.training.checkpoint import dataset_fingerprint

    # logged under their params.yaml names: this curriculum stage as pretrain.stages.<index>
    stage_index = [s.name for s in cfg.stages].index(stage)
    section = {NAME: {**cfg.model_dump(mode="json", exclude={"stages"}),
                      "stages": {str(stage_index): cfg.stage(stage).model_dump(mode="json")}},
               "diffusion": {"training": flow.model_dump(mode="json"), "sampler": sampler.model_dump(mode="json")},
               "encode": {"text": text.model_dump(mode="json")}}
    init_tag = str(init_from) if init_from else None
    with stage_run(f"{NAME}@{stage}", tracker, params=section,
                   tags={"mugv.curriculum_stage": stage, "mugv.init_from": init_tag}) as tracked:
        result = run_pretrain(latents_dir, stage, init, out_dir, trainer_cfg, progress=progress,
                              log=tracked.log_metrics, flow=flow)
        leave_job()  # the rest (export, samples, registration) is rank 0's alone
        write_text(out_dir / SUMMARY, json.dumps(result, indent=1))
        tracked.log_artifact(out_dir / SUMMARY, NAME)
        write_key_metrics(metrics_path, {k: result[k] for k in KEY_NUMBERS})
        tracked.log_artifact(out_dir / PLOTS, f"{NAME}/{PLOTS}")
        with heartbeat(f"pretrain {stage}: exporting the release, rendering {len(cfg.sample_prompts)} sample videos",
                       enabled=not progress):
            dataset = dataset_fingerprint(latents_dir)
            alias, reason = candidate_alias(cfg, stage)
            published = publish(
                tracked, tracker, weights=Path(result["checkpoint"]), out_dir=out_dir, vae=vae,
                latents_dir=latents_dir, text=text, flow=flow, sampler=sampler, prompts=cfg.sample_prompts,
                size=cfg.sample_size, register=register, alias=alias,
                tags={"mugv.stage": stage, "mugv.dataset": dataset, "mugv.init_from": init_tag,
                      "mugv.candidate_reason": reason},
                description=version_description(stage, latents_dir, dataset, result),
            )
        if published.version is not None:
            result["registered_version"] = published.version
    result["samples"] = len(published.samples)
    return result
