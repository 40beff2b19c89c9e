"""The train_vae stage: train (or adopt) the video VAE on kept clips, evaluate it and log it to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mugv.stages import METRICS_DIR, numeric_leaves, stage_run, write_key_metrics
from mugv.training.config import VAETrainConfig

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig

NAME = "train_vae"
WEIGHTS = "vae.safetensors"
VAE_CONFIG = "vae_config.json"
RECON_REPORT = "recon_report.json"  # the held-out evaluation in full: per clip, baselines described
METRICS = METRICS_DIR / "train_vae.json"  # the key numbers, committed (dvc.yaml metrics)
SAMPLES = "samples"
PLOTS = "plots"
LOSS_HISTORY = "plots/loss.csv"
CHECKPOINTS = "ckpt"


class Config(VAETrainConfig):
    """The `train_vae` section of params.yaml."""


def key_metrics(report: dict) -> dict:
    """The numbers the committed metrics file holds: the training's size and end loss per phase, and the
    held-out reconstruction (PSNR/SSIM and their gains over the baselines of `recon_report.json`)."""
    held_out = report["metrics"]
    recon = ("vae_psnr", "vae_ssim", "delta_psnr_db", "delta_psnr_db_se", "delta_ssim", "delta_psnr_db_same_count")
    final_loss = {phase: loss for phase, loss in report["final_loss"].items() if loss is not None}
    return {
        "train_clips": report["train_clips"], "held_out_clips": len(report["held_out_clips"]),
        "steps": report["steps"], "skipped_steps": report["skipped_steps"],
        **({"final_loss": final_loss} if final_loss else {}),  # none for an adopted checkpoint
        **{k: held_out[k] for k in recon},
    }


def run(clips_dir: Path, qc_dir: Path, out_dir: Path, cfg: VAETrainConfig, tracker: TrackingConfig | None = None,
        progress: bool = True, metrics_path: Path | None = None) -> dict:
    """Train the VAE into `out_dir`, write the key numbers to `metrics_path` (None: not written); log the loss
    history, metrics, config, samples and plots; return the report."""
    from mugv.storage import write_text
    from mugv.training.vae_trainer import train_vae

    out_dir = Path(out_dir)
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")}) as tracked:
        # the losses reach MLflow while training runs (window means every few steps, as `train.<loss>`)
        report = train_vae(clips_dir, qc_dir, out_dir, cfg, progress=progress,
                           log=lambda metrics, step: tracked.log_metrics(
                               {f"train.{k}": v for k, v in metrics.items()}, step=step))
        recon = report.pop("recon")
        write_text(out_dir / RECON_REPORT, json.dumps(recon, indent=2))
        report["paths"]["recon_report"] = str(out_dir / RECON_REPORT)
        tracked.log_metrics(numeric_leaves(report))
        write_key_metrics(metrics_path, key_metrics(report))
        for name in (RECON_REPORT, VAE_CONFIG, SAMPLES, PLOTS):
            tracked.log_artifact(out_dir / name, "vae" if name.endswith(".json") else f"vae/{name}")
    return report
