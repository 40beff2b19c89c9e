"""MUGDiT attention and MLP layers built on Megatron-Core parallel linears, plus 3D RoPE."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from mugv.models.dit.parallel_tokens import gather_over_context


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, computed in float32, scaled by a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


# --------------------------------------------------------------------------- 3D RoPE


def rope_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The head_dim/6 rotary frequencies shared by the H, W and T axes."""
    exponents = torch.arange(0, head_dim, 6)[: head_dim // 6].float() / head_dim
    return 1.0 / theta**exponents


def rope_angles(positions: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Rotation angles [..., head_dim/2] for integer (h, w, t) positions [..., 3].

    The rotated pairs of a head are laid out as [h pairs | w pairs | t pairs].
    """
    per_axis = positions.float().unsqueeze(-1) * frequencies  # [..., 3, head_dim/6]
    return per_axis.flatten(-2)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [..., head_dim] in float32.

    Each pair is a complex number x[2i] + i x[2i+1], multiplied by its unit rotation
    cos + i sin [..., head_dim/2]: (even cos - odd sin, even sin + odd cos), one fused op.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


# --------------------------------------------------------------------------- core attention


class SDPACoreAttention(nn.Module):
    """Softmax attention via torch SDPA on sequence-first [s, b, heads, head_dim] tensors."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """key_padding_mask [b, s_k] is True for keys to attend to. Returns [s_q, b, heads*head_dim]."""
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out.permute(2, 0, 1, 3).flatten(2)


# --------------------------------------------------------------------------- submodule specs


@dataclass
class SelfAttentionSubmodules:
    linear_qkv: ModuleSpec | type
    core_attention: ModuleSpec | type
    linear_proj: ModuleSpec | type
    qk_norm: ModuleSpec | type


@dataclass
class CrossAttentionSubmodules:
    linear_q: ModuleSpec | type
    linear_kv: ModuleSpec | type
    core_attention: ModuleSpec | type
    linear_proj: ModuleSpec | type
    qk_norm: ModuleSpec | type


@dataclass
class MLPSubmodules:
    linear_fc1: ModuleSpec | type
    linear_fc2: ModuleSpec | type


@dataclass
class DiTBlockSubmodules:
    self_attention: ModuleSpec
    cross_attention: ModuleSpec
    mlp: ModuleSpec


def _bias_in_place(spec) -> bool:
    """True for Megatron's own ColumnParallelLinear: matmul, then an out-of-place `output + bias`.

    It is built with skip_bias_add and `with_bias` adds the bias in place instead, which saves
    allocating (and page-faulting) a second output-sized tensor per linear; the values are the
    same. Not for RowParallelLinear: its output comes from the TP all-reduce Function, which
    returns its input as is, and autograd forbids modifying that in place. Transformer Engine
    linears fuse the bias into the GEMM: left as they are.
    """
    module = spec.module if isinstance(spec, ModuleSpec) else spec
    return isinstance(module, type) and issubclass(module, ColumnParallelLinear)


def with_bias(output: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """A parallel linear's (output, bias) as one tensor: a skipped bias is added in place."""
    out, bias = output
    return out if bias is None else out.add_(bias)


def _column(spec, config, in_size, out_size, name):
    return build_module(
        spec, in_size, out_size, config=config, init_method=config.init_method, bias=True,
        gather_output=False, skip_bias_add=_bias_in_place(spec), is_expert=False, tp_comm_buffer_name=name,
    )


def _row(spec, config, in_size, out_size, name):
    return build_module(
        spec, in_size, out_size, config=config, init_method=config.output_layer_init_method,
        bias=True, input_is_parallel=True, skip_bias_add=False, is_expert=False,
        tp_comm_buffer_name=name,
    )


def _norm_or_identity(spec, enabled: bool, dim: int, eps: float) -> nn.Module:
    return build_module(spec, dim, eps=eps) if enabled else nn.Identity()


# --------------------------------------------------------------------------- attention / MLP


class DiTSelfAttention(MegatronModule):
    """Full 3D self-attention: QKV (heads-major layout, so TP splits whole heads), QK RMSNorm, RoPE.

    Under context parallelism each rank holds a contiguous slice of the tokens (rotated with its
    slice of the RoPE table); keys and values are all-gathered over the CP group (backward:
    reduce-scatter), so local queries attend to every token. Attention is not causal, so
    contiguous slices are already load-balanced.
    """

    def __init__(self, config: TransformerConfig, submodules: SelfAttentionSubmodules, qk_norm: bool, eps: float):
        super().__init__(config)
        self.head_dim = config.kv_channels
        hidden = config.hidden_size
        self.linear_qkv = _column(submodules.linear_qkv, config, hidden, 3 * hidden, "qkv")
        self.q_layernorm = _norm_or_identity(submodules.qk_norm, qk_norm, self.head_dim, eps)
        self.k_layernorm = _norm_or_identity(submodules.qk_norm, qk_norm, self.head_dim, eps)
        self.core_attention = build_module(submodules.core_attention, config=config)
        self.linear_proj = _row(submodules.linear_proj, config, hidden, hidden, "proj")

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x [s, b, h] (sequence-sharded under SP); rope [s, b, 1, head_dim/2] complex rotations of this CP slice."""
        qkv = with_bias(self.linear_qkv(x))
        seq, batch = qkv.shape[:2]
        query, key, value = qkv.view(seq, batch, -1, 3, self.head_dim).unbind(3)
        query = apply_rope(self.q_layernorm(query), rope)
        key = apply_rope(self.k_layernorm(key), rope)
        if self.config.context_parallel_size > 1:
            key, value = gather_over_context(key), gather_over_context(value)
        return with_bias(self.linear_proj(self.core_attention(query, key, value)))


class DiTCrossAttention(MegatronModule):
    """Video tokens attend to their own sample's text tokens (padding keys masked), QK RMSNorm."""

    def __init__(self, config: TransformerConfig, submodules: CrossAttentionSubmodules, qk_norm: bool, eps: float):
        super().__init__(config)
        self.head_dim = config.kv_channels
        hidden = config.hidden_size
        # Text is replicated on every TP rank, never sequence-sharded: its projection must not
        # all-gather along the sequence.
        text_config = dataclasses.replace(config, sequence_parallel=False)
        self.linear_q = _column(submodules.linear_q, config, hidden, hidden, "q")
        self.linear_kv = _column(submodules.linear_kv, text_config, hidden, 2 * hidden, "kv")
        self.q_layernorm = _norm_or_identity(submodules.qk_norm, qk_norm, self.head_dim, eps)
        self.k_layernorm = _norm_or_identity(submodules.qk_norm, qk_norm, self.head_dim, eps)
        self.core_attention = build_module(submodules.core_attention, config=config)
        self.linear_proj = _row(submodules.linear_proj, config, hidden, hidden, "proj")

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """x [s, b, h]; text [l, b, h]; text_mask [b, l] True for real tokens."""
        query = with_bias(self.linear_q(x))
        key_value = with_bias(self.linear_kv(text))
        query = query.view(query.shape[0], query.shape[1], -1, self.head_dim)
        key, value = key_value.view(key_value.shape[0], key_value.shape[1], -1, 2, self.head_dim).unbind(3)
        out = self.core_attention(self.q_layernorm(query), self.k_layernorm(key), value, text_mask)
        return with_bias(self.linear_proj(out))


class DiTMLP(MegatronModule):
    """fc1 (column-parallel) -> GELU(tanh) -> fc2 (row-parallel)."""

    def __init__(self, config: TransformerConfig, submodules: MLPSubmodules):
        super().__init__(config)
        self.linear_fc1 = _column(submodules.linear_fc1, config, config.hidden_size, config.ffn_hidden_size, "fc1")
        self.linear_fc2 = _row(submodules.linear_fc2, config, config.ffn_hidden_size, config.hidden_size, "fc2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = with_bias(self.linear_fc1(x))
        return with_bias(self.linear_fc2(F.gelu(hidden, approximate="tanh")))
