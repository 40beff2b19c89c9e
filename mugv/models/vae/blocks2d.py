"""Plain-PyTorch equivalents of diffusers' VAE Encoder/Decoder (group norm, SiLU, DownEncoderBlock2D/UpDecoderBlock2D).

Same module tree, parameter names, construction order (so the same seed gives the same initial
weights) and ops as `diffusers.models.autoencoders.vae.Encoder/Decoder` (0.3x-0.4x), without
importing diffusers, whose package import costs seconds (torch._dynamo and every autoencoder).
Only what the spatial VAE uses is here: no time embedding, no spatial norm, no gradient
checkpointing. `tests/models/test_vae_blocks2d.py` checks parity with diffusers' classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # diffusers' Encoder/Decoder build every block with resnet_eps=1e-6


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1-projected when widths differ) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H, W]."""
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        if self.conv_shortcut is not None:
            if self.training:  # as diffusers: contiguous for DDP's gradient strides
                x = x.contiguous()
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv after padding one pixel right and bottom (diffusers' padding=0 variant)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H/2, W/2]."""
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample2D(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, 2H, 2W]."""
        if x.shape[0] >= 64 or x.numel() * 2 > 2**31:  # as diffusers: nearest upsampling fails on some NHWC inputs
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """Single-head self-attention over the pixels of a map, GroupNorm first, residual added."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.heads = 1  # diffusers: heads = channels // attention_head_dim with attention_head_dim = channels
        self.group_norm = nn.GroupNorm(num_channels=channels, num_groups=groups, eps=EPS, affine=True)
        self.to_q = nn.Linear(channels, channels, bias=True)
        self.to_k = nn.Linear(channels, channels, bias=True)
        self.to_v = nn.Linear(channels, channels, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels, bias=True), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        batch, channels, height, width = x.shape
        h = x.view(batch, channels, height * width).transpose(1, 2)
        h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)
        q, k, v = (proj(h).view(batch, -1, self.heads, channels // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        h = h.transpose(1, 2).reshape(batch, -1, channels).to(q.dtype)
        h = self.to_out[1](self.to_out[0](h))
        return h.transpose(-1, -2).reshape(batch, channels, height, width) + x


class UNetMidBlock2D(nn.Module):
    """resnet, attention (optional), resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        first = ResnetBlock2D(channels, channels, groups)
        attention = Attention(channels, groups) if add_attention else None  # built between the resnets, as diffusers
        self.attentions = nn.ModuleList([attention])
        self.resnets = nn.ModuleList([first, ResnetBlock2D(channels, channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        x = self.resnets[0](x)
        if self.attentions[0] is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    """`layers` resnets, then (except at the last level) a stride-2 downsample."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, H/2, W/2] (H, W at the last level)."""
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    """`layers` resnets, then (except at the last level) a 2x upsample."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(layers))
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, C_out, 2H, 2W] (H, W at the last level)."""
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """diffusers' `Encoder` with DownEncoderBlock2D levels, group norm and SiLU."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, double_z: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            last = i == len(block_out_channels) - 1
            self.down_blocks.append(DownEncoderBlock2D(previous, channels, layers_per_block, norm_num_groups, not last))
            previous = channels
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C_in, H, W] -> [N, (2x) C_out, H/f, W/f], as diffusers' Encoder.forward."""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """diffusers' `Decoder` with UpDecoderBlock2D levels (layers_per_block + 1 resnets each), group norm and SiLU."""

    def __init__(self, in_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
                 layers_per_block: int, norm_num_groups: int, mid_block_add_attention: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList()
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], norm_num_groups, mid_block_add_attention)
        reversed_channels = list(reversed(block_out_channels))
        previous = reversed_channels[0]
        for i, channels in enumerate(reversed_channels):
            last = i == len(block_out_channels) - 1
            self.up_blocks.append(UpDecoderBlock2D(previous, channels, layers_per_block + 1, norm_num_groups, not last))
            previous = channels
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[N, C_in, h, w] -> [N, C_out, h*f, w*f], as diffusers' Decoder.forward (float32 weights)."""
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
