"""The temporal stage: a MAGVIT-style 3D-conv autoencoder turning 8 frames of the spatial map into 1 latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mugv.models.vae.config import TEMPORAL_LEVELS, VAEConfig
from mugv.models.vae.shortcut import channel_average, channel_repeat

CHUNK_FRAMES = 2 ** (TEMPORAL_LEVELS - 1)  # frames per latent: three stride-2 steps
INITIAL_LOGVAR = -6.0  # fresh posteriors start narrow (std 0.05), so early samples are not all noise


class CausalConv3d(nn.Module):
    """A Conv3d with explicit zero padding in the MUG-V layout (weights live in `.conv`).

    Space is padded k//2 on each side. Time is padded (k_t - 1) + (1 - stride_t) frames, split
    floor-half before and the rest after, exactly as the released checkpoint was trained: a
    3-tap conv sees one frame on each side, a stride-2 conv pads one frame at the end. Chunks of
    8 frames are encoded independently, so no information crosses a chunk boundary anyway.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
        stride_t: int = 1, bias: bool = True,
    ):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError("spatial kernel sizes must be odd")
        time_pad = (kt - 1) + (1 - stride_t)
        self.padding = (kw // 2, kw // 2, kh // 2, kh // 2, time_pad // 2, time_pad - time_pad // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), stride=(stride_t, 1, 1), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> 3x3x3 conv, twice, plus a (1x1x1-projected when widths differ) skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3, bias=False)
        self.conv3 = CausalConv3d(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.conv3(x) if self.conv3 is not None else x)


class TemporalUpsampleResBlock(ResBlock):
    """Nearest-neighbour 2x repeat in time, then a ResBlock."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.repeat_interleave(x, 2, dim=2))


def _level_widths(cfg: VAEConfig) -> list[int]:
    return [cfg.temporal_filters * m for m in cfg.temporal_channel_multipliers]


class TemporalEncoder(nn.Module):
    """[N, C_i, 8, h, w] -> [N, 2 * latent_channels, 1, h, w]; stride-2 time convs after levels 0, 1, 2."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths, groups, n_res = _level_widths(cfg), cfg.temporal_norm_groups, cfg.temporal_res_blocks
        self.conv_in = CausalConv3d(cfg.interface_channels, cfg.temporal_filters, 3, bias=False)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = cfg.temporal_filters
        for level, width in enumerate(widths):
            self.block_res_blocks.append(nn.ModuleList(ResBlock(prev if j == 0 else width, width, groups) for j in range(n_res)))
            prev = width
            if level < len(widths) - 1:
                self.conv_blocks.append(CausalConv3d(width, width, 3, stride_t=2))
        self.res_blocks = nn.ModuleList(ResBlock(prev, prev, groups) for _ in range(n_res))
        self.norm1 = nn.GroupNorm(groups, prev)
        self.conv2 = CausalConv3d(prev, 2 * cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level, blocks in enumerate(self.block_res_blocks):
            for block in blocks:
                x = block(x)
            if level < len(self.conv_blocks):
                x = self.conv_blocks[level](x)
        for block in self.res_blocks:
            x = block(x)
        return self.conv2(F.silu(self.norm1(x)))


class TemporalDecoder(nn.Module):
    """[N, latent_channels, n, h, w] -> [N, C_i, 8n, h, w].

    Time is doubled three times: by the upsample block at the top, then by depth-to-space
    convs (width -> 2 x width, split into two frames) at the ends of levels 3 and 2; level 1
    keeps an Identity in that slot (the released layout indexes conv_blocks 1 and 2).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        widths, groups, n_res = _level_widths(cfg), cfg.temporal_norm_groups, cfg.temporal_res_blocks
        top = widths[-1]
        self.conv1 = CausalConv3d(cfg.latent_channels, top, 3)
        self.res_blocks = nn.ModuleList(ResBlock(top, top, groups) for _ in range(n_res))
        self.upsample_block = TemporalUpsampleResBlock(top, top, groups)
        levels: list[nn.ModuleList] = []
        prev = top
        for width in reversed(widths):
            levels.insert(0, nn.ModuleList(ResBlock(prev if j == 0 else width, width, groups) for j in range(n_res)))
            prev = width
        self.block_res_blocks = nn.ModuleList(levels)
        # conv_blocks[i - 1] runs after level i (i = 1, 2, 3); it holds the level's output width
        self.conv_blocks = nn.ModuleList(
            [nn.Identity()] + [CausalConv3d(widths[i], 2 * widths[i], 3) for i in range(2, len(widths))]
        )
        self.norm1 = nn.GroupNorm(groups, widths[0])
        self.conv_out = CausalConv3d(widths[0], cfg.interface_channels, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv1(z)
        for block in self.res_blocks:
            x = block(x)
        x = self.upsample_block(x)
        for level in reversed(range(len(self.block_res_blocks))):
            for block in self.block_res_blocks[level]:
                x = block(x)
            if level >= 2:
                x = rearrange(self.conv_blocks[level - 1](x), "b (c ts) t h w -> b c (t ts) h w", ts=2)
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    """Encoder + 1x1x1 quant conv (moments: mean and logvar) and post-quant conv + decoder.

    With `cfg.temporal_shortcut` the posterior mean also gets the chunk folded into channels and
    averaged down to the latent width (the temporal mean when widths agree), and the decoder
    output gets the latent repeated back over channels and 8 frames (see `shortcut`).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.shortcut = cfg.temporal_shortcut
        self.latent_channels, self.interface_channels = cfg.latent_channels, cfg.interface_channels
        self.encoder = TemporalEncoder(cfg)
        self.quant_conv = CausalConv3d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        nn.init.constant_(self.quant_conv.conv.bias[cfg.latent_channels :], INITIAL_LOGVAR)
        self.post_quant_conv = CausalConv3d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = TemporalDecoder(cfg)

    def moments(self, chunks: torch.Tensor) -> torch.Tensor:
        """[N, C_i, 8, h, w] independent chunks -> [N, 2 * latent_channels, 1, h, w]."""
        if chunks.shape[2] != CHUNK_FRAMES:
            raise ValueError(f"temporal encoder takes chunks of {CHUNK_FRAMES} frames, got {chunks.shape[2]}")
        moments = self.quant_conv(self.encoder(chunks))
        if not self.shortcut:
            return moments
        mean, logvar = moments.chunk(2, dim=1)
        folded = rearrange(chunks, "n c t h w -> n (c t) 1 h w")
        return torch.cat([mean + channel_average(folded, self.latent_channels), logvar], dim=1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, latent_channels, n, h, w] decoded together -> [B, C_i, 8n, h, w]."""
        x = self.decoder(self.post_quant_conv(z))
        if not self.shortcut:
            return x
        frames = channel_repeat(z, self.interface_channels * CHUNK_FRAMES)
        return x + rearrange(frames, "b (c t) n h w -> b c (n t) h w", t=CHUNK_FRAMES)
