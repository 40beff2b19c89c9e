"""Perceptual loss: LPIPS-style distance on VGG16 features, from weights already on disk (nothing downloads)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mugv import storage

# torchvision's vgg16().features: channel widths of the 13 convs, "M" for max-pool
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_AFTER_RELU = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in features' indexing
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            width = int(item)
    return nn.Sequential(*layers)


def _read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    with storage.local_copy(path) as local:
        if str(local).endswith(".safetensors"):
            return load_file(str(local))
        return torch.load(local, map_location="cpu", weights_only=True)


class PerceptualLoss(nn.Module):
    """Mean over five VGG16 stages of the squared difference of channel-normalised features (frozen)."""

    def __init__(self, weights_path: str | os.PathLike):
        super().__init__()
        self.features = _vgg16_features()
        state = {k.removeprefix("features."): v for k, v in _read_state(weights_path).items() if not k.startswith("classifier.")}
        self.features.load_state_dict(state, strict=True)
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = (images.add(1).div(2) - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAP_AFTER_RELU:
                taps.append(h / (h.norm(dim=1, keepdim=True) + 1e-10))
            if i >= TAP_AFTER_RELU[-1]:
                break
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] -> scalar distance."""
        return torch.stack([F.mse_loss(x, y, reduction="none").sum(1).mean() for x, y in zip(self._taps(a), self._taps(b))]).sum()
