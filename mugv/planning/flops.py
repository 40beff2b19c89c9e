"""Analytic FLOPs of a MUGDiT step per sample, and model FLOPs utilisation (MFU)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Protocol


class DiTShape(Protocol):
    """The DiTConfig fields the FLOP count reads."""

    depth: int
    hidden_size: int
    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    caption_channels: int
    mlp_ratio: float
    timestep_frequency_dim: int
    start_end_tokens: int


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs of one sample by part (a multiply-add counts 2), and the step totals.

    `no_input_grad` is the part of the forward whose inputs need no gradient (the
    first matmul of the patch, caption, timestep and fps embedders): its backward
    computes weight gradients only, so it costs 1x instead of 2x.
    """

    patch_embed: int
    conditioning: int
    caption_embed: int
    self_attention: int
    cross_attention: int
    mlp: int
    final_layer: int
    no_input_grad: int

    @property
    def forward(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "no_input_grad")

    @property
    def layers(self) -> int:
        """FLOPs of the transformer blocks alone (what activation recomputation repeats)."""
        return self.self_attention + self.cross_attention + self.mlp

    @property
    def backward(self) -> int:
        """Data and weight gradients: 2x forward, minus the data gradients nobody needs."""
        return 2 * self.forward - self.no_input_grad

    def training(self, recompute: bool = False) -> int:
        """Forward + backward, plus a second forward of the blocks with full recomputation (~4x)."""
        return self.forward + self.backward + (self.layers if recompute else 0)


def dit_flops(cfg: DiTShape, tokens: int, text_len: int) -> FlopsBreakdown:
    """Analytic FLOPs per sample of MUGDiT on `tokens` sequence tokens (`DiTConfig.tokens`: video + start/end).

    Counts every matmul: per block, self-attention (QKV, QK^T, AV, output
    projection) over all `tokens`, cross-attention (Q from the video tokens, KV
    from `text_len` text tokens, scores, AV, projection), the MLP; once per
    sample, the patch embedding over the video tokens, the final layer over all
    tokens (MUGDiT drops the start/end tokens after it, so context-parallel
    ranks keep equal slices), the
    caption embedder over the text, the fps embedder, and the timestep embedder
    and shared adaLN t_block twice (MUGDiT embeds both t and t = 0, the time of
    I2V conditioning frames and start/end tokens). Norms, RoPE, softmax and
    modulation are elementwise and not counted.
    """
    h = cfg.hidden_size
    n = tokens
    n_video = tokens - cfg.start_end_tokens
    length = text_len
    ffn = int(h * cfg.mlp_ratio)
    patch_volume = math.prod(cfg.patch_size)

    patch_embed = 2 * n_video * cfg.in_channels * patch_volume * h
    timestep_first = 2 * cfg.timestep_frequency_dim * h
    timestep_mlp = timestep_first + 2 * h * h
    t_block = 2 * h * 6 * h
    timestep_paths = 2  # t and t = 0
    conditioning = timestep_paths * (timestep_mlp + t_block) + timestep_mlp  # + fps embedder
    caption_first = 2 * length * cfg.caption_channels * h
    caption_embed = caption_first + 2 * length * h * h

    self_attention = cfg.depth * (2 * n * h * 4 * h + 2 * 2 * n * n * h)
    cross_attention = cfg.depth * (2 * n * h * 2 * h + 2 * length * h * 2 * h + 2 * 2 * n * length * h)
    mlp = cfg.depth * 2 * 2 * n * h * ffn
    final_layer = 2 * n * h * patch_volume * cfg.out_channels

    return FlopsBreakdown(
        patch_embed=patch_embed,
        conditioning=conditioning,
        caption_embed=caption_embed,
        self_attention=self_attention,
        cross_attention=cross_attention,
        mlp=mlp,
        final_layer=final_layer,
        no_input_grad=patch_embed + caption_first + (timestep_paths + 1) * timestep_first,
    )


def mfu(flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s as a fraction of the hardware peak."""
    if peak_flops_per_s <= 0:
        raise ValueError(f"peak must be positive, got {peak_flops_per_s}")
    return flops_per_s / peak_flops_per_s
