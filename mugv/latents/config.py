"""How kept clips become latents: bucket shapes, the bucket gate and the encoder's knobs (kept free of torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mugv.models.dit.config import PATCH_SIZE
from mugv.models.text.config import TextEncoderConfig
from mugv.models.vae.config import VAEConfig
from mugv.data.ray_runner import RayConfig
from mugv.section import Section


# MUG-V's 720p aspect set (H x W) and a small CPU profile with the same five aspects.
MUGV_720P: list[tuple[int, int]] = [(720, 1280), (832, 1110), (960, 960), (1108, 832), (1280, 720)]
SMALL_128P: list[tuple[int, int]] = [(80, 144), (96, 128), (112, 112), (128, 96), (144, 80)]
SMALL_64P: list[tuple[int, int]] = [(48, 80), (48, 64), (64, 64), (64, 48), (80, 48)]


class BucketConfig(Section):
    """Bucket shapes: (height, width) lists per resolution name, plus the frame counts a sample may have.

    A frame count of 1 is the image bucket; video counts follow MUG-V's T % 8 == 1 rule
    (9, 17, 25 ... frames -> 2, 3, 4 ... latent frames).
    """

    resolutions: dict[str, list[tuple[int, int]]] = Field(
        default_factory=lambda: {"128p": list(SMALL_128P), "64p": list(SMALL_64P)},
        description="resolution name -> list of (height, width)",
    )
    frames: list[int] = Field(default=[1, 9, 17, 33], description="frame counts; 1 = image samples")
    max_crop_fraction: float = Field(
        0.4, gt=0, lt=1, description="largest share of a clip's area that center-cropping may cut away"
    )
    spatial_multiple: int = Field(
        VAEConfig().spatial_factor * max(PATCH_SIZE[1:]), ge=1,
        description="bucket sides must be multiples of this (VAE x DiT patch)",
    )
    temporal_stride: int = Field(
        VAEConfig().temporal_factor, ge=1, description="VAE temporal compression; video frames must be k*stride+1"
    )

    @model_validator(mode="after")
    def _check(self) -> "BucketConfig":
        if not self.resolutions or not any(self.resolutions.values()):
            raise ValueError("resolutions: at least one (height, width) bucket is needed")
        for name, shapes in self.resolutions.items():
            for h, w in shapes:
                if h <= 0 or w <= 0:
                    raise ValueError(f"resolutions.{name}: {h}x{w} must be positive")
        if not self.frames or min(self.frames) < 1:
            raise ValueError("frames: at least one positive frame count is needed")
        if len(set(self.frames)) != len(self.frames):
            raise ValueError("frames: duplicate frame counts")
        return self

    @property
    def video_frames(self) -> list[int]:
        return sorted(f for f in self.frames if f > 1)


class BucketCheckConfig(Section):
    """Thresholds of the bucket gate; failing any of them stops the encode stage before it starts."""

    min_assigned: int = Field(1, ge=0, description="at least this many clips must land in a video bucket")
    max_unassigned_share: float = Field(0.5, ge=0, le=1, description="largest share of kept clips fitting no bucket")
    min_per_bucket: int = Field(1, ge=1, description="every bucket that is used holds at least this many samples")


class EncodeConfig(Section):
    """How kept clips become latent shards: buckets, gate, text encoder, batching, devices and dtypes."""

    buckets: BucketConfig = BucketConfig()
    checks: BucketCheckConfig = BucketCheckConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    batch_size: int = Field(4, ge=1, description="samples per VAE forward (one bucket per batch)")
    max_shard_mb: float = Field(
        32.0, gt=0, description="a shard is closed once it holds this many MiB (the stage holds one shard in memory)"
    )
    images_per_clip: int = Field(1, ge=0, description="key frames per clip also emitted as image samples")
    aesthetic_suffix: Literal["none", "score", "fixed"] = Field(
        "none",
        description="append ' aesthetic score: X.X.' to captions: X from the clip's qc `aesthetic` column "
        "(score) or aesthetic_value (fixed); MUG-V inference appends 6.0",
    )
    aesthetic_value: float = 6.0
    workers: int | None = Field(
        None, ge=1, description="1: encode in this process; N: batches fan out as Ray tasks on an embedded Ray of N "
        "CPUs (or the cluster `ray` names), each decoding and encoding one batch; null: every core"
    )
    ray: RayConfig = RayConfig()
    decode_threads: int = Field(2, ge=1, description="in this process: threads decoding and resizing upcoming clips")
    prefetch: int = Field(8, ge=1, description="in this process: samples decoded ahead of the VAE")
    seed: int = 0
    device: str = Field("cpu", description="torch device of the VAE and text encoder ('cuda' on GPU)")
    latent_stats: Literal["dataset", "checkpoint"] = Field(
        "dataset",
        description="standardise with per-channel stats measured over this data set, or with the stats the "
        "VAE checkpoint ships (`vae.latent_stats()`, e.g. MUG-V's, to match a released DiT)",
    )
    latent_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    text_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
