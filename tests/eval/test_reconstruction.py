"""SSIM's separable gaussian blur equals the full 11x11 window of Wang et al. (2004)."""

import torch
import torch.nn.functional as F

from mugv.eval.reconstruction import SSIM_SIGMA, _gaussian_blur, _gaussian_kernel, ssim


def test_separable_blur_equals_the_full_window():
    x = torch.rand(5, 3, 20, 23, dtype=torch.float64)
    g = _gaussian_kernel(11, SSIM_SIGMA, torch.float64)
    window = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)
    assert torch.allclose(_gaussian_blur(x, 11), F.conv2d(x, window, groups=3), rtol=0, atol=1e-14)


def test_ssim_orders_degradations():
    torch.manual_seed(0)
    video = torch.rand(3, 5, 32, 32) * 2 - 1
    slight, strong = video + 0.05 * torch.randn_like(video), video + 0.5 * torch.randn_like(video)
    assert ssim(video, video) == 1.0
    assert ssim(slight, video) > ssim(strong, video)
