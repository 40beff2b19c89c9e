"""`mugv plan`: what one training sample of a DiT preset costs (parameters, latent, tokens, FLOPs)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from mugv.models.dit.config import get_preset
from mugv.models.vae.config import VAEConfig
from mugv.planning.flops import dit_flops


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SampleShape(_Report):
    """The sample as the DiT sees it."""

    frames: int
    height: int
    width: int
    latent_shape: tuple[int, int, int, int] = Field(description="(C, T, H, W) after the VAE")
    video_tokens: int
    tokens: int = Field(description="video tokens + start/end tokens")
    start_end_tokens: int
    text_len: int

    def lines(self) -> list[str]:
        c, t, h, w = self.latent_shape
        return [
            f"sample: {self.frames} frames of {self.height}x{self.width}",
            f"latent shape: {c}x{t}x{h}x{w}",
            f"tokens per sample: {self.tokens} ({self.video_tokens} + {self.start_end_tokens} start/end)",
            f"text tokens: {self.text_len}",
        ]


class ComputePlan(_Report):
    """Analytic FLOPs per sample (see `mugv.planning.flops`)."""

    forward_flops: int
    training_flops: int = Field(description="forward + backward")
    training_flops_recompute: int = Field(description="forward + backward + recomputed blocks")

    def lines(self) -> list[str]:
        return [
            f"FLOPs per sample, forward: {self.forward_flops:.4e}",
            f"FLOPs per sample, training: {self.training_flops:.4e}",
            f"FLOPs per sample, training with recompute: {self.training_flops_recompute:.4e}",
        ]


class PlanReport(_Report):
    """Sections in print order; a new section (memory per GPU, ...) is one more field with `lines()`."""

    preset: str
    parameters: int
    sample: SampleShape
    compute: ComputePlan

    def lines(self) -> list[str]:
        return [f"preset: {self.preset}", f"parameters: {self.parameters}"]


def vae_latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(C, T, H, W) of a clip's latent under the MUG-V VAE (`VAEConfig`): 8x in time (its first-frame
    rule), 8x8 in space, 24 channels.

    Spatial sizes that are not multiples of the spatial factor are floored, as the official VAE's size rule does.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    vae = VAEConfig()
    latent_frames = math.ceil(frames / vae.temporal_factor)
    return (vae.latent_channels, latent_frames, height // vae.spatial_factor, width // vae.spatial_factor)


def plan(preset: str, frames: int, height: int, width: int, text_len: int = 300) -> PlanReport:
    """Size one training sample of `frames` x `height` x `width` pixels for the DiT `preset`."""
    cfg = get_preset(preset)
    if text_len > cfg.model_max_length:
        raise ValueError(f"text_len {text_len} exceeds the preset's model_max_length {cfg.model_max_length}")
    latent = vae_latent_shape(frames, height, width)
    n_video = cfg.video_tokens(*latent[1:])
    tokens = cfg.tokens(*latent[1:])
    flops = dit_flops(cfg, tokens, text_len)
    return PlanReport(
        preset=preset,
        parameters=cfg.parameter_count,
        sample=SampleShape(
            frames=frames, height=height, width=width, latent_shape=latent,
            video_tokens=n_video, tokens=tokens, start_end_tokens=cfg.start_end_tokens, text_len=text_len,
        ),
        compute=ComputePlan(
            forward_flops=flops.forward,
            training_flops=flops.training(),
            training_flops_recompute=flops.training(recompute=True),
        ),
    )


def format_plan(report: PlanReport) -> str:
    """The report as `key: value` lines, section after section."""
    fields = (getattr(report, name) for name in type(report).model_fields)
    sections = [report, *(value for value in fields if isinstance(value, _Report))]
    return "\n".join(line for section in sections for line in section.lines())
