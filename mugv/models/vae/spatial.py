"""The spatial stage: an SDXL-shaped 2D autoencoder (diffusers' block layout, plain PyTorch) applied frame by frame, 8x8 down."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from mugv.models.vae.blocks2d import Decoder, Encoder  # diffusers' Encoder/Decoder, same keys and numerics
from mugv.models.vae.config import VAEConfig


class SpatialAutoencoder(nn.Module):
    """diffusers' VAE Encoder/Decoder (as `blocks2d`, without importing diffusers), cut at the mid block on both sides.

    The encoder stops after its mid block and the decoder starts at its mid block, so the
    interface is a `interface_channels`-wide map at 1/8 resolution (512 in MUG-V), not SDXL's
    4-channel bottleneck. The encoder's conv_norm_out/conv_out and the decoder's conv_in stay in
    the module (the released state dict has them) but take no part and are frozen.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        common = dict(
            block_out_channels=cfg.spatial_block_out_channels,
            layers_per_block=cfg.spatial_layers_per_block,
            norm_num_groups=cfg.spatial_norm_groups,
            mid_block_add_attention=cfg.spatial_mid_attention,
        )
        self.encoder = Encoder(
            in_channels=3,
            out_channels=cfg.spatial_bottleneck_channels,
            double_z=True,
            **common,
        )
        self.decoder = Decoder(
            in_channels=cfg.spatial_bottleneck_channels,
            out_channels=3,
            **common,
        )
        for unused in (self.encoder.conv_norm_out, self.encoder.conv_out, self.decoder.conv_in):
            unused.requires_grad_(False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, interface_channels, H/8, W/8] (unscaled)."""
        h = self.encoder.conv_in(images)
        for block in self.encoder.down_blocks:
            h = block(h)
        return self.encoder.mid_block(h)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """[N, interface_channels, h, w] (unscaled) -> [N, 3, 8h, 8w]."""
        h = self.decoder.mid_block(h)
        for block in self.decoder.up_blocks:
            h = block(h)
        h = self.decoder.conv_act(self.decoder.conv_norm_out(h))
        return self.decoder.conv_out(h)


class SpatialVAE(nn.Module):
    """Video in, map out: folds time into the batch, runs the 2D autoencoder, applies the 0.18215 scale."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.module = SpatialAutoencoder(cfg)
        self.scaling_factor = cfg.spatial_scaling_factor
        self.micro_batch = cfg.spatial_micro_batch

    def _framewise(self, fn, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        step = self.micro_batch or frames.shape[0]
        out = torch.cat([fn(frames[i : i + step]) for i in range(0, frames.shape[0], step)])
        return rearrange(out, "(b t) c h w -> b c t h w", b=batch)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> scaled map [B, C_i, T, H/8, W/8]."""
        return self._framewise(lambda f: self.module.encode(f) * self.scaling_factor, x)

    def decode(self, x_z: torch.Tensor) -> torch.Tensor:
        """Scaled map [B, C_i, T, h, w] -> frames [B, 3, T, 8h, 8w]."""
        return self._framewise(lambda f: self.module.decode(f / self.scaling_factor), x_z)
