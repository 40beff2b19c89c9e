"""Rectified-flow time: noising, velocity target, logit-normal sampling and the resolution/length shift.

Conventions (the official MUG-V scheduler's):
- time runs over [0, num_timesteps] (1000); t = 0 is data, t = 1000 is pure noise;
- x_t = (1 - t/1000) * x0 + (t/1000) * eps;
- the model predicts the velocity v = x0 - eps, i.e. the direction from noise
  towards data; a sampler therefore moves x_t -> x_t + v * (t_i - t_{i+1}) / 1000
  while t decreases (v = -dx_t/ds with s = t/1000);
- the shift stretches time towards the noisy end for large samples:
  s' = r s / (1 + (r - 1) s), r = sqrt(H*W / 512^2) * sqrt(latent_frames),
  with H, W the *pixel* height and width (latent size x 8) and latent_frames the
  number of *latent* frames (images: 1). This is what the official sampler is
  fed; its released fine-tune data loader hard-codes 10 frames instead, which we
  do not replicate.
"""

from __future__ import annotations

import math

import torch

from mugv.diffusion.config import SHIFT_BASE_PIXELS

NUM_TIMESTEPS = 1000
BASE_RESOLUTION = SHIFT_BASE_PIXELS
VAE_SPATIAL_FACTOR = 8


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [B] tensor so it broadcasts against a [B, ...] tensor."""
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1))).to(like.dtype)


def add_noise(
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    noised_frames: torch.Tensor | None = None,
    num_timesteps: int = NUM_TIMESTEPS,
) -> torch.Tensor:
    """x_t = (1 - t/T) x0 + (t/T) noise for x0 [B, C, F, H, W] and t [B].

    `noised_frames` ([B, F] bool) keeps the frames where it is False clean (I2V
    conditioning frames): they are x0 whatever t is.
    """
    s = _per_sample(t.float() / num_timesteps, x0)
    x_t = (1 - s) * x0 + s * noise
    if noised_frames is None:
        return x_t
    return torch.where(noised_frames[:, None, :, None, None], x_t, x0)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target v = x0 - noise (points from noise to data)."""
    return x0 - noise


def shift_ratio(
    height: float, width: float, latent_frames: int, base_resolution: int = BASE_RESOLUTION
) -> float:
    """r = sqrt(height * width / base_resolution) * sqrt(latent_frames); height/width in pixels."""
    return math.sqrt(height * width / base_resolution) * math.sqrt(latent_frames)


def shift_ratio_for_latent(
    latent_frames: int, latent_height: int, latent_width: int, spatial_factor: int = VAE_SPATIAL_FACTOR,
    base_resolution: int = BASE_RESOLUTION,
) -> float:
    """The shift ratio of a latent [C, F, h, w]: pixel size is the latent size times the VAE factor."""
    return shift_ratio(latent_height * spatial_factor, latent_width * spatial_factor, latent_frames, base_resolution)


def timestep_transform(
    t: torch.Tensor | float, ratio: torch.Tensor | float, num_timesteps: int = NUM_TIMESTEPS
) -> torch.Tensor | float:
    """Shift t in [0, num_timesteps]: s' = r s / (1 + (r - 1) s) with s = t / num_timesteps."""
    s = t / num_timesteps
    return ratio * s / (1 + (ratio - 1) * s) * num_timesteps


def sample_timesteps(
    batch_size: int,
    ratio: torch.Tensor | float,
    generator: torch.Generator | None = None,
    loc: float = 0.0,
    scale: float = 1.0,
    num_timesteps: int = NUM_TIMESTEPS,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Training timesteps [B]: sigmoid(N(loc, scale)) * num_timesteps, then shifted by `ratio`.

    `ratio` is a float or a per-sample [B] tensor (see `shift_ratio`).
    """
    z = torch.randn(batch_size, generator=generator, device=device) * scale + loc
    t = torch.sigmoid(z) * num_timesteps
    ratio = torch.as_tensor(ratio, dtype=t.dtype, device=t.device)
    return timestep_transform(t, ratio, num_timesteps)


def sampling_timesteps(steps: int, ratio: float, num_timesteps: int = NUM_TIMESTEPS) -> list[float]:
    """The `steps` shifted times an Euler sampler visits, from num_timesteps down (0 excluded).

    Uniform (1 - i/steps) * num_timesteps for i < steps, each shifted; the last
    step goes from the last time to 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [
        float(timestep_transform((1.0 - i / steps) * num_timesteps, ratio, num_timesteps))
        for i in range(steps)
    ]
