"""The encode stage: kept clips -> bucketed, standardised VAE latent shards and caption features, logged to MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mugv.data.names import CLIPS_TABLE, QC_TABLE
from mugv.diffusion.config import DEFAULT_NEGATIVE_PROMPT
from mugv.latents.config import EncodeConfig
from mugv.latents.names import BUCKET_FILL, ENCODE_REPORT, INDEX, SHARDS, STATS, TEXT_NULL
from mugv.stages import METRICS_DIR, as_dict, numeric_leaves, stage_run, write_key_metrics

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig

NAME = "encode"
REPORT = ENCODE_REPORT
FILL = BUCKET_FILL
OUTPUTS = (SHARDS, INDEX, STATS, TEXT_NULL, FILL, REPORT)
METRICS = METRICS_DIR / "encode.json"  # the key counts, committed (dvc.yaml metrics)
KEY_COUNTS = ("samples", "videos", "images", "frames", "shards", "unassigned_count", "failed_count")


class Config(EncodeConfig):
    """The `encode` section of params.yaml."""


def read_kept(clips_dir: str | os.PathLike, qc_dir: str | os.PathLike):
    """Kept rows of qc.parquet, checked against clips.parquet (a clip qc kept must exist in the clip table)."""
    import pandas as pd

    qc = pd.read_parquet(Path(qc_dir) / QC_TABLE)
    missing = {"clip_id", "path", "fps", "width", "height", "num_frames", "keep"} - set(qc.columns)
    if missing:
        raise ValueError(f"{QC_TABLE} lacks columns {sorted(missing)}")
    kept = qc[qc["keep"].astype(bool)].reset_index(drop=True)
    clips_index = Path(clips_dir) / CLIPS_TABLE
    if clips_index.exists():
        known = set(pd.read_parquet(clips_index, columns=["clip_id"])["clip_id"])
        unknown = sorted(set(kept["clip_id"]) - known)
        if unknown:
            raise ValueError(f"{len(unknown)} kept clips are not in {clips_index} (e.g. {unknown[:3]}): mixed-up folders?")
    return kept




def encode(
    clips_dir: str | os.PathLike,
    qc_dir: str | os.PathLike,
    vae_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: EncodeConfig,
    progress: bool = True,
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
):
    """Read kept clips, load the VAE checkpoint, encode everything into `out_dir` (the text encoder is loaded
    where the batches run: here, or in each Ray worker).

    `negative_prompt` is the sampler's (params `diffusion.sampler.negative_prompt`): its features are
    stored beside the null caption's for classifier-free guidance.
    """
    from mugv.data.encode import encode_clips
    from mugv.models.vae import load_vae

    kept = read_kept(clips_dir, qc_dir)
    vae = load_vae(vae_path, map_location=cfg.device).eval()
    return encode_clips(kept, clips_dir, vae, None, out_dir, cfg, progress, negative_prompt, vae_path=vae_path)


def key_metrics(report) -> dict:
    """The counts the committed metrics file holds: samples by kind, frames, shards, buckets in use, clips lost."""
    return {**{k: getattr(report, k) for k in KEY_COUNTS}, "buckets_used": len(report.per_bucket)}


def run(clips_dir: Path, qc_dir: Path, vae_path: Path, out_dir: Path, cfg: Config,
        tracker: TrackingConfig | None = None, progress: bool = True,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, metrics_path: Path | None = None):
    """Encode, write the key counts to `metrics_path` (None: not written), tag the bucket gate's verdict and
    log metrics (with timings), fill and stats to MLflow; return the report.

    A failing bucket gate is tagged, then BucketCheckError propagates.
    """
    from mugv.atomic import staged_dir
    from mugv.data.encode import write_report
    from mugv.data.expectations_buckets import BucketCheckError
    from mugv.models.text.model import require_text_encoder_files

    require_text_encoder_files(cfg.text, key="encode.text")  # before any work, whichever process loads it
    out_dir = Path(out_dir)
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")}) as tracked:
        try:  # published whole: a killed run leaves the previous output set or none, never half of one
            with staged_dir(out_dir) as staging:
                report = encode(clips_dir, qc_dir, vae_path, staging, cfg, progress=progress,
                                negative_prompt=negative_prompt)
                report.out_dir, report.fill_csv = str(out_dir), str(out_dir / FILL)  # the paths once published
                write_report(report, staging / REPORT)
        except BucketCheckError:
            tracked.set_tags({"mugv.bucket_gate": "failed"})
            raise
        tracked.set_tags({"mugv.bucket_gate": "passed"})
        tracked.log_metrics(numeric_leaves(as_dict(report)))
        write_key_metrics(metrics_path, key_metrics(report))
        for name in (REPORT, FILL, STATS):
            tracked.log_artifact(out_dir / name, NAME)
    return report
