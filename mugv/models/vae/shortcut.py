"""Parameter-free residual shortcuts of DC-AE (Chen et al. 2024): channel averaging down, channel repeating up.

A stage that folds a block of its input into channels (here: 8 frames) and then averages
channel groups to its output width starts training as a plain box-average autoencoder; its layers
learn only the residual. DC-AE shows this makes deep high-compression autoencoders train much
faster. The shortcuts own no weights, so the state-dict layout does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_average(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, C, ...] -> [N, channels, ...]: contiguous channel groups averaged (uneven groups overlap)."""
    if x.shape[1] == channels:
        return x
    flat = x.movedim(1, -1)
    pooled = F.adaptive_avg_pool1d(flat.reshape(-1, 1, x.shape[1]), channels)
    return pooled.reshape(*flat.shape[:-1], channels).movedim(-1, 1)


def channel_repeat(x: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, C, ...] -> [N, channels, ...]: each channel repeated over its group (nearest), inverse of channel_average."""
    if x.shape[1] == channels:
        return x
    index = torch.div(torch.arange(channels, device=x.device) * x.shape[1], channels, rounding_mode="floor")
    return x.index_select(1, index)
