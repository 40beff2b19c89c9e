"""Typed config of the train-vae stage (the `train_vae` section of params.yaml); pydantic only, no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mugv.section import Section


class DiscriminatorConfig(Section):
    """Optional 3D PatchGAN with hinge loss, switched on from `start_step` (global step)."""

    enabled: bool = False
    start_step: int = Field(0, ge=0)
    weight: float = Field(0.05, ge=0, description="weight of the generator's adversarial term")
    lr: float = Field(2e-4, gt=0)
    channels: int = Field(32, ge=8)
    layers: int = Field(3, ge=1)


class VAETrainConfig(Section):
    """Two phases as MUG-V: the 2D spatial autoencoder, then the temporal one with the spatial stage frozen.

    With the spatial stage frozen and no pixel-space loss in the temporal phase (the default), each
    training clip is encoded to its spatial map once and the temporal stage trains on cached maps:
    an order of magnitude more temporal steps per second on a CPU.

    `checkpoint` set means "use this trained VAE (folder or vae.safetensors) instead of training":
    it is validated, copied to the output and evaluated like a trained one.
    """

    preset: str = "tiny"
    checkpoint: str | None = None
    spatial_steps: int = Field(700, ge=0)
    temporal_steps: int = Field(1500, ge=0)
    joint: bool = Field(False, description="train the spatial stage too during the temporal phase")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay to lr * this at the end of each phase")
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1, description="clips per temporal-phase step")
    temporal_crop: tuple[int, int] = Field((64, 64), description="temporal-phase crop (H, W) in pixels, multiples of 8")
    spatial_batch_frames: int = Field(16, ge=1, description="frames per spatial-phase step")
    clip_frames: int = Field(9, ge=1, description="frames per training clip; 9 or 17 exercise the image latent")
    crop: tuple[int, int] = Field((32, 32), description="training crop (H, W), multiples of 8")
    eval_frames: int = Field(17, ge=1, description="frames of each held-out clip evaluated")
    l1_weight: float = Field(1.0, ge=0, description="pixel L1 in the spatial phase")
    temporal_l1_weight: float = Field(
        0.0, ge=0, description="pixel L1 (through the spatial decoder) in the temporal phase; 0: spatial-map L1 only"
    )
    latent_l1_weight: float = Field(1.0, ge=0, description="temporal phase: L1 between spatial map and its reconstruction")
    kl_weight: float = Field(1e-6, ge=0, description="KL summed over latents, per pixel value (SD/Open-Sora scale)")
    perceptual_weight: float = Field(0.0, ge=0)
    perceptual_weights: str | None = Field(None, description="local VGG16 weights (torchvision layout) for the perceptual loss")
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    holdout: int = Field(3, ge=1, description="clips held out for reconstruction metrics")
    samples: int = Field(2, ge=0, description="side-by-side mp4s written (original | recon | baseline)")
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    on_nan: Literal["skip", "stop"] = "skip"
    max_bad_steps: int = Field(5, ge=1, description="consecutive skipped (or collapsed) steps before stopping")
    cache_mb: int = Field(256, ge=1, description="decoded-clip cache")
    threads: int | None = Field(
        1, ge=1, description="torch CPU threads while training (None: torch's default); 1 stays fast on a shared machine"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "VAETrainConfig":
        for crop in (self.crop, self.temporal_crop):
            if crop[0] % 8 or crop[1] % 8 or min(crop) < 8:
                raise ValueError(f"crop {crop} must be multiples of 8")
        if self.joint and self.temporal_l1_weight == 0:
            raise ValueError("joint training needs temporal_l1_weight > 0 (the spatial stage learns from pixels)")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError("perceptual_weight > 0 needs perceptual_weights (a local VGG16 weights file)")
        return self
