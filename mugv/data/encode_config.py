"""The typed `encode` section (kept free of torch: mugv.config imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mugv.data.buckets import BucketConfig
from mugv.models.text.config import TextEncoderConfig
from mugv.section import Section


class BucketCheckConfig(Section):
    """Thresholds of the bucket gate; failing any of them stops the encode stage before it starts."""

    min_assigned: int = Field(1, ge=0, description="at least this many clips must land in a video bucket")
    max_unassigned_share: float = Field(0.5, ge=0, le=1, description="largest share of kept clips fitting no bucket")
    min_per_bucket: int = Field(1, ge=1, description="every bucket that is used holds at least this many samples")


class EncodeConfig(Section):
    """Everything the encode stage reads from params.yaml (`encode:` section)."""

    buckets: BucketConfig = BucketConfig()
    checks: BucketCheckConfig = BucketCheckConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    batch_size: int = Field(4, ge=1, description="samples per VAE forward (one bucket per batch)")
    max_shard_mb: float = Field(256.0, gt=0, description="a shard is closed once it holds this many MiB")
    images_per_clip: int = Field(1, ge=0, description="key frames per clip also emitted as image samples")
    aesthetic_suffix: Literal["none", "score", "fixed"] = Field(
        "none",
        description="append ' aesthetic score: X.X.' to captions: X from the clip's qc `aesthetic` column "
        "(score) or aesthetic_value (fixed); MUG-V inference appends 6.0",
    )
    aesthetic_value: float = 6.0
    workers: int = Field(2, ge=1, description="threads decoding and resizing upcoming clips")
    prefetch: int = Field(8, ge=1, description="samples decoded ahead of the VAE")
    seed: int = 0
    device: str = Field("cpu", description="torch device of the VAE and text encoder ('cuda' on GPU)")
    latent_stats: Literal["dataset", "checkpoint"] = Field(
        "dataset",
        description="standardise with per-channel stats measured over this data set, or with the stats the "
        "VAE checkpoint ships (`vae.latent_stats()`, e.g. MUG-V's, to match a released DiT)",
    )
    latent_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    text_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
