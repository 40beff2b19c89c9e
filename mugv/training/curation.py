"""SFT's curated subset: the latent samples whose source clips pass the quality thresholds of params `sft.curation`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from mugv.section import Section

if TYPE_CHECKING:
    import pandas as pd


class CurationConfig(Section):
    """Which clips SFT trains on: qc scores above thresholds, then the top share by aesthetic score."""

    aesthetic_min: float | None = Field(6.5, description="qc aesthetic score at least this (None: no threshold)")
    sharpness_min: float | None = Field(300.0, description="qc sharpness (Laplacian variance) at least this")
    motion_min: float | None = Field(0.1, description="qc motion (mean flow magnitude) at least this")
    top_fraction: float = Field(1.0, gt=0, le=1, description="then keep this share of the passing clips, best aesthetic first")
    min_clips: int = Field(8, ge=1, description="fewer curated clips than this is an error, not a silent tiny run")


def curated_clip_ids(qc: pd.DataFrame, cfg: CurationConfig) -> list[str]:
    """Clip ids of the kept qc rows that pass `cfg`, best aesthetic first; raise if fewer than `cfg.min_clips`."""
    kept = qc[qc["keep"]] if "keep" in qc else qc
    passing = kept
    for column, threshold in (("aesthetic", cfg.aesthetic_min), ("sharpness", cfg.sharpness_min),
                              ("motion", cfg.motion_min)):
        if threshold is not None:
            passing = passing[passing[column] >= threshold]
    ranked = passing.sort_values(["aesthetic", "clip_id"], ascending=[False, True])
    chosen = ranked["clip_id"].head(max(1, round(len(ranked) * cfg.top_fraction))).tolist() if len(ranked) else []
    if len(chosen) < cfg.min_clips:
        raise ValueError(f"sft.curation keeps {len(chosen)} of {len(kept)} clips, fewer than min_clips {cfg.min_clips}; "
                         "lower the thresholds")
    return chosen


def curated_sample_ids(latents_index: pd.DataFrame, clip_ids: list[str]) -> set[str]:
    """The latent samples (every bucket, video and image) cut from the curated clips."""
    return set(latents_index.loc[latents_index["clip_id"].isin(set(clip_ids)), "sample_id"])
