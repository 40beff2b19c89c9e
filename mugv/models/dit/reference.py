"""MUGDiT in plain PyTorch (nn.Linear, SDPA), batch-first: the reference the Megatron model must match, and `mugv generate`'s DiT.

Written apart from `model.py` on purpose (its embedders and MLPs mirror the model's): a reference that
shared the model's code could not catch a bug in that code. `tests/models/test_dit_reference.py` holds
the two to the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mugv.models.dit.config import DiTConfig


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


class ScalarEmbedder(nn.Module):
    def __init__(self, hidden: int, frequency_dim: int) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class CaptionProjection(nn.Module):
    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(y), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.y_proj = CaptionProjection(in_features, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.y_proj(F.layer_norm(y, y.shape[-1:], eps=self.eps))
        return F.layer_norm(y, y.shape[-1:], eps=self.eps)


class PatchEmbed(nn.Module):
    """Conv3d weights applied as one matmul over non-overlapping patches (kernel == stride)."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, hidden: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (pt, ph, pw), (b, c, t, h, w) = self.patch, x.shape
        x = F.pad(x, (0, -w % pw, 0, -h % ph, 0, -t % pt))
        nt, nh, nw = x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw
        patches = x.reshape(b, c, nt, pt, nh, ph, nw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4)
        return F.linear(patches.flatten(1, 3), self.proj.weight.flatten(1), self.proj.bias)


class QKNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs as a complex product; x [b, s, heads, d], rotation [b, s, 1, d/2] complex."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.linear_qkv = nn.Linear(hidden, 3 * hidden)
        self.q_layernorm = QKNorm(hidden // heads, eps)
        self.k_layernorm = QKNorm(hidden // heads, eps)
        self.linear_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.linear_qkv(x).view(b, s, self.heads, 3, -1).unbind(3)  # heads-major, as ours
        q = rotate(self.q_layernorm(q), rotation)
        k = rotate(self.k_layernorm(k), rotation)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.linear_proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_kv = nn.Linear(hidden, 2 * hidden)
        self.q_layernorm = QKNorm(hidden // heads, eps)
        self.k_layernorm = QKNorm(hidden // heads, eps)
        self.linear_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_layernorm(self.linear_q(x).view(b, s, self.heads, -1))
        k, v = self.linear_kv(text).view(b, text.shape[1], self.heads, 2, -1).unbind(3)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), self.k_layernorm(k).transpose(1, 2), v.transpose(1, 2),
            attn_mask=text_mask[:, None, None, :],
        )
        return self.linear_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(hidden, ffn)
        self.linear_fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


def per_token(
    x: torch.Tensor, frame_params: torch.Tensor, edge_params: torch.Tensor, frames: int,
    op: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Apply op(tokens, *params) with per-frame params to the video tokens, t=0 params to start/end.

    x [b, 1 + T*S + 1, h]; frame_params [k, b, T, 1, h]; edge_params [k, b, 1, h]. The params
    broadcast over the S tokens of a frame, so no per-token parameter tensor is materialised.
    """
    video = op(x[:, 1:-1].unflatten(1, (frames, -1)), *frame_params).flatten(1, 2)
    start = op(x[:, :1], *edge_params)
    end = op(x[:, -1:], *edge_params)
    return torch.cat([start, video, end], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)


def gate(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * g


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.norm_eps
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.zeros(6, h))
        self.self_attention = SelfAttention(h, cfg.num_heads, eps)
        self.cross_attn_norm = nn.LayerNorm(h, eps=eps)
        self.cross_attention = CrossAttention(h, cfg.num_heads, eps)
        self.mlp = FeedForward(h, cfg.mlp_hidden_size)

    def forward(self, x, text, text_mask, t_mod, t0_mod, noised_frames, rotation):
        b, frames = noised_frames.shape
        p = self.scale_shift_table[None] + t_mod.view(b, 6, -1)  # [b, 6, h]
        p0 = self.scale_shift_table[None] + t0_mod.view(b, 6, -1)
        frame_p = torch.where(noised_frames[:, None, :, None], p[:, :, None], p0[:, :, None])  # [b, 6, T, h]
        frame_p = frame_p.unsqueeze(3).transpose(0, 1)  # [6, b, T, 1, h]
        edge_p = p0.unsqueeze(2).transpose(0, 1)  # [6, b, 1, h]
        norm = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        attn = self.self_attention(per_token(norm, frame_p[0:2], edge_p[0:2], frames, modulate), rotation)
        x = x + per_token(attn, frame_p[2:3], edge_p[2:3], frames, gate)
        x = x + self.cross_attention(self.cross_attn_norm(x), text, text_mask)
        norm = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        mlp = self.mlp(per_token(norm, frame_p[3:5], edge_p[3:5], frames, modulate))
        return x + per_token(mlp, frame_p[5:6], edge_p[5:6], frames, gate)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.scale_shift_table = nn.Parameter(torch.zeros(2, cfg.hidden_size))
        self.linear = nn.Linear(cfg.hidden_size, math.prod(cfg.patch_size) * cfg.out_channels)

    def forward(self, x, t_emb, t0_emb, noised_frames):
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).unbind(1)
        shift0, scale0 = (self.scale_shift_table[None] + t0_emb[:, None]).unbind(1)
        noised = noised_frames[:, :, None, None]
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps).unflatten(1, (noised_frames.shape[1], -1))
        x = modulate(x, torch.where(noised, shift[:, None, None], shift0[:, None, None]),
                     torch.where(noised, scale[:, None, None], scale0[:, None, None]))
        return self.linear(x.flatten(1, 2))


class ReferenceMUGDiT(nn.Module):
    """MUGDiT in plain PyTorch (nn.Linear, SDPA), batch-first; parameter names match `MUGDiT`'s state dict.

    One process, default frame indices; `x_mask` [B, T] marks the noised latent frames (None: all).
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if not cfg.use_start_end_tokens:
            raise ValueError("the plain reference implements the start/end-token layout only")
        h = cfg.hidden_size
        self.cfg = cfg
        self.start_token = nn.Parameter(torch.zeros(h))
        self.end_token = nn.Parameter(torch.zeros(h))
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, h)
        self.t_embedder = ScalarEmbedder(h, cfg.timestep_frequency_dim)
        self.fps_embedder = ScalarEmbedder(h, cfg.timestep_frequency_dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, h, cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)

    def rotation(self, batch: int, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Unit complex rotations [b, N, 1, d/2] of positions (h, w, t); start (0,0,0), end (H-1,W-1,T+1)."""
        t, h, w = grid
        dim = self.cfg.head_dim  # float32 frequencies, whatever dtype the model is cast to
        freqs = 1.0 / self.cfg.rope_theta ** (torch.arange(0, dim, 6, device=device)[: dim // 6].float() / dim)
        axes = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), torch.arange(1, t + 1, device=device),
            indexing="ij",
        )
        positions = torch.stack(axes, dim=-1).permute(2, 0, 1, 3).reshape(-1, 3)  # t-major, then h, w
        start = torch.tensor([[0, 0, 0]], device=device)
        end = torch.tensor([[h - 1, w - 1, t + 1]], device=device)
        positions = torch.cat([start, positions, end]).float()
        angles = (positions[..., None] * freqs).flatten(-2)
        return torch.polar(torch.ones_like(angles), angles)[None, :, None].expand(batch, -1, -1, -1)

    def forward(self, x, timestep, y, mask=None, fps=None, x_mask=None):
        dtype = self.x_embedder.proj.weight.dtype
        b = x.shape[0]
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        in_size = x.shape[2:]
        grid = tuple(-(-n // p) for n, p in zip(in_size, self.cfg.patch_size))
        fps = torch.full((b,), self.cfg.default_fps, device=x.device) if fps is None else fps
        fps_emb = self.fps_embedder(fps)
        t_emb = self.t_embedder(timestep) + fps_emb
        t0_emb = self.t_embedder(torch.zeros_like(timestep)) + fps_emb
        t_mod, t0_mod = self.t_block(t_emb), self.t_block(t0_emb)
        text = self.y_embedder(y[:, 0])
        text_mask = torch.ones(b, y.shape[2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        tokens = self.x_embedder(x)
        hidden = torch.cat([self.start_token.expand(b, 1, -1), tokens, self.end_token.expand(b, 1, -1)], dim=1)
        noised_frames = (torch.ones(b, grid[0], dtype=torch.bool, device=x.device) if x_mask is None
                         else x_mask.reshape(b, grid[0]).bool().to(x.device))
        rotation = self.rotation(b, grid, x.device)
        for block in self.blocks:
            hidden = block(hidden, text, text_mask, t_mod, t0_mod, noised_frames, rotation)
        out = self.final_layer(hidden[:, 1:-1], t_emb, t0_emb, noised_frames)
        (nt, nh, nw), (pt, ph, pw) = grid, self.cfg.patch_size
        out = out.reshape(b, nt, nh, nw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, -1, nt * pt, nh * ph, nw * pw)
        return out[:, :, : in_size[0], : in_size[1], : in_size[2]].float()
