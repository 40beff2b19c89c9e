"""MUGDiT architecture config (DiTConfig) and the named size presets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

START_END_TOKEN_COUNT = 2  # one learned start token and one learned end token around the video tokens
PATCH_SIZE = (1, 2, 2)  # (T, H, W) latent positions per token, every preset


def patch_grid(
    latent_frames: int, latent_height: int, latent_width: int, patch_size: tuple[int, int, int]
) -> tuple[int, int, int]:
    """Patches along (T, H, W) of a latent, padded up to whole patches."""
    return tuple(math.ceil(size / patch) for size, patch in zip((latent_frames, latent_height, latent_width), patch_size))


def video_tokens(latent_frames: int, latent_height: int, latent_width: int, patch_size: tuple[int, int, int]) -> int:
    """Patch tokens of a latent (padded up to whole patches), without the start/end tokens."""
    return math.prod(patch_grid(latent_frames, latent_height, latent_width, patch_size))


@dataclass(frozen=True)
class ParallelDims:
    """How one MUGDiT is laid out over ranks: tensor- and context-parallel sizes, sequence parallel.

    Explicit model input (the default is one process); a model with any size above 1 runs inside
    the matching Megatron-Core parallel state.
    """

    tp: int = 1
    cp: int = 1
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        if self.tp < 1 or self.cp < 1:
            raise ValueError(f"parallel sizes must be >= 1, got tp={self.tp} cp={self.cp}")

    @property
    def sequence_split(self) -> int:
        """Ranks the token sequence is sharded over between blocks: TP with sequence parallel, else 1."""
        return self.tp if self.sequence_parallel and self.tp > 1 else 1


class DiTConfig(BaseModel):
    """Architecture of one MUGDiT; every field is a property of the weights or the forward."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    in_channels: int = 24
    out_channels: int = 48
    patch_size: tuple[int, int, int] = PATCH_SIZE
    caption_channels: int = 4096
    model_max_length: int = 300
    mlp_ratio: float = 4.0
    class_dropout_prob: float = Field(default=0.0, ge=0.0, le=1.0)
    qk_norm: bool = True
    use_start_end_tokens: bool = True
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_frame_index: int = Field(default=479, ge=0)
    timestep_frequency_dim: int = 256
    default_fps: float = 30.0
    init_std: float = 0.014

    @model_validator(mode="after")
    def _check_shapes(self) -> "DiTConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.head_dim % 6:
            raise ValueError(f"head dim {self.head_dim} must be a multiple of 6 for 3D RoPE (H, W, T)")
        if (self.mlp_ratio * self.hidden_size) % 1:
            raise ValueError("mlp_ratio * hidden_size must be an integer")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def start_end_tokens(self) -> int:
        """Learned tokens around the video tokens: 2 (start, end) or 0."""
        return START_END_TOKEN_COUNT if self.use_start_end_tokens else 0

    def patch_grid(self, latent_frames: int, latent_height: int, latent_width: int) -> tuple[int, int, int]:
        """Patches along (T, H, W) of a latent of this size (padded up to whole patches)."""
        return patch_grid(latent_frames, latent_height, latent_width, self.patch_size)

    def video_tokens(self, latent_frames: int, latent_height: int, latent_width: int) -> int:
        """Patch tokens of a latent, without the start/end tokens."""
        return video_tokens(latent_frames, latent_height, latent_width, self.patch_size)

    def tokens(self, latent_frames: int, latent_height: int, latent_width: int) -> int:
        """Sequence length of one sample: its patch tokens plus the start/end tokens."""
        return self.video_tokens(latent_frames, latent_height, latent_width) + self.start_end_tokens

    def parameter_split(self) -> tuple[int, int]:
        """(parameters tensor parallel splits, replicated parameters) of the model, counted from the shapes.

        Split: the column-parallel linears (self-attention QKV, cross-attention Q and KV, MLP fc1), weights
        and biases, and the row-parallel weights (both attention projections, MLP fc2); their biases are
        replicated. Everything outside the blocks is replicated.
        """
        h, ffn, patch_volume = self.hidden_size, self.mlp_hidden_size, math.prod(self.patch_size)
        column = (3 * h + h + 2 * h + ffn) * (h + 1)
        row_weights = 2 * h * h + ffn * h
        qk_norms = 2 * 2 * self.head_dim if self.qk_norm else 0  # RMSNorm weights, self- and cross-attention
        block_replicated = 3 * h + qk_norms + 2 * h + 6 * h  # row biases, q/k norms, cross-attn LayerNorm, adaLN table
        timestep_mlp = self.timestep_frequency_dim * h + h + h * h + h
        outside = (
            2 * timestep_mlp  # timestep and fps embedders
            + 6 * h * h + 6 * h  # shared adaLN t_block
            + self.in_channels * patch_volume * h + h  # patch embedding
            + self.caption_channels * h + h + h * h + h  # caption MLP
            + 2 * h + patch_volume * self.out_channels * (h + 1)  # final layer: scale/shift table, linear
            + self.start_end_tokens * h
        )
        return self.depth * (column + row_weights), self.depth * block_replicated + outside

    @property
    def parameter_count(self) -> int:
        """Total (unsharded) parameters, from the shapes: no torch, no model."""
        return sum(self.parameter_split())


def _paper(hidden_size: int) -> DiTConfig:
    return DiTConfig(depth=56, hidden_size=hidden_size, num_heads=hidden_size // 72)


PRESETS: dict[str, DiTConfig] = {
    "debug": _paper(288),
    "1B": _paper(1152),
    "4B": _paper(2304),
    "10B": _paper(3456),
    "18B": _paper(4608),
    "tiny": DiTConfig(depth=4, hidden_size=96, num_heads=2, caption_channels=384),  # the CPU default
    "small": DiTConfig(depth=4, hidden_size=384, num_heads=4, caption_channels=384),
}


def get_preset(name: str, **overrides: object) -> DiTConfig:
    """The preset `name` with fields replaced by `overrides` (validated)."""
    if name not in PRESETS:
        raise KeyError(f"unknown DiT preset {name!r}; known: {sorted(PRESETS)}")
    return DiTConfig.model_validate({**PRESETS[name].model_dump(), **overrides})
