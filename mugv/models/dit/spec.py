"""ModuleSpecs of the MUGDiT block: Transformer Engine linears on GPU, local Megatron linears anywhere."""

from __future__ import annotations

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.spec_utils import ModuleSpec

from mugv.models.dit.layers import (
    CrossAttentionSubmodules,
    DiTBlockSubmodules,
    DiTCrossAttention,
    DiTMLP,
    DiTSelfAttention,
    MLPSubmodules,
    RMSNorm,
    SDPACoreAttention,
    SelfAttentionSubmodules,
)

try:  # a broken Transformer Engine raises RuntimeError, not ImportError
    from megatron.core.extensions import transformer_engine as _te

    # Without TE the module still imports, with MagicMock placeholders and HAVE_TE False.
    HAVE_TE = bool(_te.HAVE_TE)
except Exception:
    HAVE_TE = False
if HAVE_TE:
    TEColumnParallelLinear, TERowParallelLinear = _te.TEColumnParallelLinear, _te.TERowParallelLinear

_BLOCK = ("mugv.models.dit.model", "MUGDiTBlock")


def _block_spec(column: type, row: type) -> ModuleSpec:
    return ModuleSpec(
        module=_BLOCK,
        submodules=DiTBlockSubmodules(
            self_attention=ModuleSpec(
                module=DiTSelfAttention,
                submodules=SelfAttentionSubmodules(
                    linear_qkv=column, core_attention=SDPACoreAttention, linear_proj=row, qk_norm=RMSNorm
                ),
            ),
            cross_attention=ModuleSpec(
                module=DiTCrossAttention,
                submodules=CrossAttentionSubmodules(
                    linear_q=column, linear_kv=column, core_attention=SDPACoreAttention,
                    linear_proj=row, qk_norm=RMSNorm,
                ),
            ),
            mlp=ModuleSpec(module=DiTMLP, submodules=MLPSubmodules(linear_fc1=column, linear_fc2=row)),
        ),
    )


def local_block_spec() -> ModuleSpec:
    """Megatron-Core's own parallel linears and SDPA attention: runs on CPU and GPU."""
    return _block_spec(ColumnParallelLinear, RowParallelLinear)


def te_block_spec() -> ModuleSpec:
    """Transformer Engine parallel linears (GPU); attention stays SDPA (flash / efficient kernels)."""
    if not HAVE_TE:
        raise RuntimeError("Transformer Engine is not importable; use local_block_spec()")
    return _block_spec(TEColumnParallelLinear, TERowParallelLinear)


def parallel_linear_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(column-parallel, row-parallel) linear classes any spec may use."""
    column: tuple[type, ...] = (ColumnParallelLinear,)
    row: tuple[type, ...] = (RowParallelLinear,)
    if HAVE_TE:
        column, row = column + (TEColumnParallelLinear,), row + (TERowParallelLinear,)
    return column, row


def default_block_spec() -> ModuleSpec:
    """TE when it imports and a GPU is present, else local."""
    import torch

    return te_block_spec() if HAVE_TE and torch.cuda.is_available() else local_block_spec()
