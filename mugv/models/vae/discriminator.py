"""A 3D PatchGAN discriminator for VAE training, with hinge losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """Strided 3D convs (time kept, space halved per layer) -> one real/fake logit per space-time patch."""

    def __init__(self, channels: int = 32, layers: int = 3, groups: int = 8):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), stride=(1, 2, 2), padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(layers - 1):
            blocks += [
                nn.Conv3d(width, width * 2, (3, 4, 4), stride=(1, 2, 2), padding=1, bias=False),
                nn.GroupNorm(groups, width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        blocks.append(nn.Conv3d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> logits [B, 1, T, H', W']."""
        return self.net(video)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
