"""Typed knobs of the rectified-flow objective and sampler (the `diffusion` section of params.yaml)."""

from __future__ import annotations

from pydantic import Field

from mugv.section import Section

# Kept free of torch: mugv.config imports this module, and data-stage workers import mugv.config.
IMAGE_LOSS_WEIGHT = 0.3  # MUG-V: image batches weighted 0.3
SHIFT_BASE_PIXELS = 512 * 512  # MUG-V: the resolution shift is 1 for a 512x512 image (the tiny default: 64x64)
DEFAULT_CFG_SCALE = 4.0
DEFAULT_STEPS = 25
DEFAULT_NEGATIVE_PROMPT = (
    "ugly, blurry, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry"
)


class FlowTrainingConfig(Section):
    """How training draws times and weighs samples."""

    timestep_loc: float = Field(0.0, description="logit-normal mean of t/1000 before the shift")
    timestep_scale: float = Field(1.0, gt=0, description="logit-normal std")
    resolution_shift: bool = Field(True, description="shift t by r = sqrt(H*W/base) * sqrt(latent frames)")
    shift_base_pixels: int = Field(
        64 * 64, gt=0,
        description="H*W (pixels) of an image whose shift is 1: MUG-V 512^2; a smaller resolution profile scales it down "
        "(with 512^2, a 64x64 image gets r = 0.125 and trains almost only at low noise, where captions do not matter)",
    )
    image_loss_weight: float = Field(IMAGE_LOSS_WEIGHT, ge=0, description="loss weight of image (1-frame) samples")
    caption_dropout: float = Field(0.1, ge=0, le=1, description="probability a caption becomes the null embedding")


class SamplerConfig(Section):
    """Euler sampling for evaluation and previews."""

    steps: int = Field(DEFAULT_STEPS, ge=1)
    cfg_scale: float = Field(DEFAULT_CFG_SCALE, ge=0, description="MUG-V's 4.0")
    guidance_rescale: float = Field(0.0, ge=0, le=1)
    negative_prompt: str = Field(
        "",
        description="encoded once into the unconditional embedding for CFG; '' is the null caption of caption "
        "dropout (the tiny default), DEFAULT_NEGATIVE_PROMPT the official sampler's, for a model that knows its words",
    )


class DiffusionConfig(Section):
    """The `diffusion` section."""

    training: FlowTrainingConfig = FlowTrainingConfig()
    sampler: SamplerConfig = SamplerConfig()
