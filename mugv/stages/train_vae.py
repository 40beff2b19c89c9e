"""The train_vae stage: train (or adopt) the video VAE on kept clips, evaluate it and log it to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mugv.stages import numeric_leaves, stage_run
from mugv.training.config import VAETrainConfig

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig

NAME = "train_vae"
WEIGHTS = "vae.safetensors"
VAE_CONFIG = "vae_config.json"
METRICS = "recon_metrics.json"
SAMPLES = "samples"
PLOTS = "plots"
LOSS_HISTORY = "plots/loss.csv"
CHECKPOINTS = "ckpt"


class Config(VAETrainConfig):
    """The `train_vae` section of params.yaml."""


def run(clips_dir: Path, qc_dir: Path, out_dir: Path, cfg: VAETrainConfig, tracker: TrackingConfig | None = None,
        progress: bool = True) -> dict:
    """Train the VAE into `out_dir`; log the loss history, metrics, config, samples and plots; return the report."""
    from mugv.storage import write_text
    from mugv.training.vae_trainer import train_vae

    out_dir = Path(out_dir)
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")}) as tracked:
        report = train_vae(clips_dir, qc_dir, out_dir, cfg, progress=progress)
        recon = report.pop("recon")
        write_text(out_dir / METRICS, json.dumps(recon, indent=2))
        report["paths"]["recon_metrics"] = str(out_dir / METRICS)
        history = out_dir / LOSS_HISTORY
        if history.exists():
            import pandas as pd

            for step, row in pd.read_csv(history).set_index("step").iterrows():
                tracked.log_metrics({f"train.{k}": v for k, v in row.items() if isinstance(v, (int, float))},
                                    step=int(step))
        tracked.log_metrics(numeric_leaves(report))
        for name in (METRICS, VAE_CONFIG, SAMPLES, PLOTS):
            tracked.log_artifact(out_dir / name, "vae" if name.endswith(".json") else f"vae/{name}")
    return report
