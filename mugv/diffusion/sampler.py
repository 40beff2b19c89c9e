"""Euler sampler for rectified flow: shifted schedule, classifier-free guidance, I2V re-clamp."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from rich.progress import track

from mugv.diffusion.config import DEFAULT_CFG_SCALE, DEFAULT_STEPS
from mugv.diffusion.loss import velocity_channels
from mugv.diffusion.schedule import NUM_TIMESTEPS, sampling_timesteps, shift_ratio_for_latent

ModelFn = Callable[..., torch.Tensor]


def guided_velocity(
    v_cond: torch.Tensor, v_uncond: torch.Tensor, cfg_scale: float, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """v_uncond + s (v_cond - v_uncond), optionally rescaled towards v_cond's per-sample std.

    guidance_rescale = phi in [0, 1] (Lin et al. 2023): v = phi * v_cfg * std(v_cond)/std(v_cfg)
    + (1 - phi) * v_cfg, stds over all non-batch dimensions.
    """
    v = v_uncond + cfg_scale * (v_cond - v_uncond)
    if guidance_rescale == 0.0:
        return v
    dims = list(range(1, v.dim()))
    rescaled = v * (v_cond.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True))
    return guidance_rescale * rescaled + (1.0 - guidance_rescale) * v


def _stack_conditions(cond: Mapping[str, Any], uncond: Mapping[str, Any] | None) -> dict[str, Any]:
    """Concatenate the conditional and unconditional inputs along the batch dimension."""
    if uncond is None:
        return dict(cond)
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}")
    return {key: torch.cat([cond[key], uncond[key]], dim=0) for key in cond}


def _repeat_batch(kwargs: Mapping[str, Any], batch: int, copies: int) -> dict[str, Any]:
    """Repeat the tensors whose first dimension is the batch; keep the rest (broadcast) as they are."""
    return {
        key: torch.cat([value] * copies, dim=0)
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch
        else value
        for key, value in kwargs.items()
    }


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    shape: tuple[int, int, int, int, int],
    cond: Mapping[str, Any],
    uncond: Mapping[str, Any] | None = None,
    steps: int = DEFAULT_STEPS,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    generator: torch.Generator | None = None,
    shift: float | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    conditioning_latents: torch.Tensor | None = None,
    noised_frames: torch.Tensor | None = None,
    guidance_rescale: float = 0.0,
    num_timesteps: int = NUM_TIMESTEPS,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx = v dt from noise (t = 1000) to data (t = 0) with `steps` Euler steps.

    model_fn(x, timestep, **cond, **model_kwargs[, x_mask=...]) returns a tensor whose
    first C channels are the velocity v = x0 - eps (MUGDiT's output fits). `cond` and
    `uncond` hold the text inputs (e.g. {"y": [B,1,L,D], "mask": [B,L]}); with `uncond`
    (the negative prompt) both go through the model in one 2B batch and are combined
    with `cfg_scale`; without it the conditional velocity is used alone.
    `model_kwargs` (fps, frame_indice, ...) is shared by both halves.
    `shift` is the schedule's ratio r; by default it comes from the latent shape
    (`shift_ratio_for_latent`). I2V: `conditioning_latents` [B,C,F,H,W] and
    `noised_frames` [B,F] bool: frames where it is False start at, and are reset to,
    the conditioning latents after each step; the model gets x_mask = noised_frames.
    Noise is drawn from `generator`, so a seeded generator gives a deterministic result; or
    given as `noise` (`shape`), e.g. each sample of a batch drawn from its own seed.
    """
    batch, channels, frames, height, width = shape
    if (conditioning_latents is None) != (noised_frames is None):
        raise ValueError("conditioning_latents and noised_frames go together")
    ratio = shift if shift is not None else shift_ratio_for_latent(frames, height, width)
    times = sampling_timesteps(steps, ratio, num_timesteps) + [0.0]

    if noise is not None and tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, the samples {tuple(shape)}")
    x = noise if noise is not None else torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    x = x.to(device=device, dtype=dtype)
    copies = 1 if uncond is None else 2
    inputs = _stack_conditions(cond, uncond)
    inputs.update(_repeat_batch(model_kwargs or {}, batch, copies))
    keep = None
    if noised_frames is not None:
        keep = noised_frames.to(device=device, dtype=torch.bool)[:, None, :, None, None]
        clean = conditioning_latents.to(device=device, dtype=dtype)
        x = torch.where(keep, x, clean)
        inputs["x_mask"] = torch.cat([noised_frames.to(device=device, dtype=torch.bool)] * copies, dim=0)

    step_indices = track(range(steps), description="sampling") if progress else range(steps)
    for i in step_indices:
        t = torch.full((batch * copies,), times[i], device=device, dtype=dtype)
        out = model_fn(torch.cat([x] * copies, dim=0), t, **inputs)
        v = velocity_channels(out, channels).to(dtype)
        if uncond is not None:
            v_cond, v_uncond = v.chunk(2, dim=0)
            v = guided_velocity(v_cond, v_uncond, cfg_scale, guidance_rescale)
        x = x + v * ((times[i] - times[i + 1]) / num_timesteps)
        if keep is not None:
            x = torch.where(keep, x, clean)
    return x
