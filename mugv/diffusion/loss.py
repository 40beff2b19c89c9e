"""Rectified-flow training loss: per-sample MSE over noised frames, sample weights, caption dropout."""

from __future__ import annotations

import torch

from mugv.diffusion.config import IMAGE_LOSS_WEIGHT


def velocity_channels(output: torch.Tensor, channels: int) -> torch.Tensor:
    """The velocity part of a model output: its first `channels` channels.

    MUGDiT returns 2C channels (velocity first); a model returning exactly C passes through.
    """
    if output.shape[1] < channels:
        raise ValueError(f"model output has {output.shape[1]} channels, need at least {channels}")
    return output[:, :channels]


def per_sample_mse(
    pred: torch.Tensor, target: torch.Tensor, noised_frames: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error per sample [B] of [B, C, F, H, W] tensors.

    With `noised_frames` ([B, F] bool) only those frames count: the squared error
    is summed over them and divided by their element count (C * #frames * H * W).
    """
    err = (pred.float() - target.float()).pow(2)
    if noised_frames is None:
        return err.flatten(1).mean(dim=1)
    frames = noised_frames.to(err.dtype)
    per_frame = err.sum(dim=(1, 3, 4))
    elements_per_frame = err.shape[1] * err.shape[3] * err.shape[4]
    count = frames.sum(dim=1) * elements_per_frame
    if bool((count == 0).any()):
        raise ValueError("a sample has no noised frame: its loss is undefined")
    return (per_frame * frames).sum(dim=1) / count


def sample_weights(is_image: torch.Tensor, image_weight: float = IMAGE_LOSS_WEIGHT) -> torch.Tensor:
    """Per-sample loss weights [B]: `image_weight` for image samples, 1 for videos."""
    ones = torch.ones(is_image.shape, dtype=torch.float32, device=is_image.device)
    return torch.where(is_image.bool(), ones * image_weight, ones)


def flow_matching_loss(
    output: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    noised_frames: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar loss: mean over the batch of weight_i * MSE_i(velocity, x0 - noise).

    `output` is the model output (its first C channels are the velocity);
    `weights` [B] defaults to ones (see `sample_weights`); the mean divides by B,
    so a down-weighted sample lowers the loss, as in the official trainer.
    """
    pred = velocity_channels(output, x0.shape[1])
    losses = per_sample_mse(pred, x0 - noise, noised_frames)
    if weights is not None:
        losses = losses * weights.to(losses)
    return losses.mean()


def drop_captions(
    y: torch.Tensor,
    mask: torch.Tensor,
    null_y: torch.Tensor,
    prob: float,
    generator: torch.Generator | None = None,
    null_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace each sample's caption by the stored null embedding with probability `prob`.

    y [B, 1, L, D], mask [B, L]; null_y broadcastable to [1, L, D] (e.g. [L, D] or
    [1, 1, L, D]); null_mask [L] defaults to all tokens valid. Returns
    (y, mask, dropped [B] bool); the inputs are not modified.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    batch, length = mask.shape
    null = null_y.reshape(1, 1, length, y.shape[-1]).to(y)
    if null_mask is None:
        null_mask = torch.ones(length, dtype=mask.dtype, device=mask.device)
    draws = torch.rand(batch, generator=generator, device=generator.device if generator else "cpu")
    dropped = (draws < prob).to(y.device)
    y_out = torch.where(dropped[:, None, None, None], null, y)
    mask_out = torch.where(dropped[:, None], null_mask.to(mask).reshape(1, length), mask)
    return y_out, mask_out, dropped
