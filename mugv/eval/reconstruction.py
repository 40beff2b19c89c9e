"""Reconstruction metrics for video autoencoders: PSNR, gaussian-window SSIM, and a trilinear resampling baseline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (compared on the [0, 1] scale, after clamping)."""
    a, b = a.clamp(-1, 1).add(1).div(2), b.clamp(-1, 1).add(1).div(2)
    mse = F.mse_loss(a.double(), b.double()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_blur(t: torch.Tensor, size: int) -> torch.Tensor:
    """Valid-region 2D gaussian blur of [N, C, H, W] per channel, as two 1D passes (the window is separable)."""
    channels = t.shape[1]
    g = _gaussian_kernel(size, SSIM_SIGMA, t.dtype)
    rows = F.conv2d(t, g.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
    return F.conv2d(rows, g.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004; 11x11 gaussian window, sigma 1.5, valid region) over the frames of two videos.

    Inputs are [3, T, H, W] or [B, 3, T, H, W] in [-1, 1]; computed per channel on [0, 1].
    """
    if a.ndim == 4:
        a, b = a[None], b[None]
    to_frames = lambda v: v.clamp(-1, 1).add(1).div(2).double().transpose(1, 2).flatten(0, 1)  # noqa: E731
    x, y = to_frames(a), to_frames(b)
    size = min(SSIM_WINDOW, x.shape[-1], x.shape[-2])
    blur = lambda t: _gaussian_blur(t, size)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def trilinear_baseline(video: torch.Tensor, factors: tuple[int, int, int]) -> torch.Tensor:
    """Down-sample [3, T, H, W] by (t, h, w) factors to ceil sizes, then trilinearly back up to T x H x W.

    The down-sampling averages boxes (`area`), the anti-aliased form of trilinear down-sampling;
    plain trilinear sampling at 8x would alias and make the baseline weaker than it need be.
    """
    t, h, w = video.shape[1:]
    small = tuple(max(1, math.ceil(n / f)) for n, f in zip((t, h, w), factors))
    down = F.interpolate(video[None], size=small, mode="area")
    return F.interpolate(down, size=(t, h, w), mode="trilinear", align_corners=False)[0]
