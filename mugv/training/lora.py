"""LoRA adapters on MUGDiT's Megatron parallel linears: apply, freeze, save/load, merge, and switch off for a reference."""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mugv.training.config import LoRAConfig  # the params section (rank, alpha, targets, dropout), torch-free

LORA_A, LORA_B = "lora_A", "lora_B"


def _stable_seed(seed: int, name: str) -> int:
    """A generator seed per (seed, module name), the same in every process and layout."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


class LoRALinear(nn.Module):
    """A frozen Megatron column- or row-parallel linear plus scale * B A, sharded like the base weight.

    Column-parallel (W split along its output): A [r, in] is replicated, B [out/tp, r] split like W.
    Under TP the rank-r activation A x enters the tensor-parallel region through Megatron's
    copy (backward: all-reduce), so A's gradient sums every rank's B_i^T dY_i; with sequence
    parallelism the input is a token shard, so A x is all-gathered over the sequence like the
    base input (backward: reduce-scatter) and A, having seen only this rank's tokens, is marked
    `sequence_parallel` (its gradient is summed over TP, like the block's norms).

    Row-parallel (W split along its input, output all-reduced): A [r, in/tp] is split like W and
    B [out, r] replicated. Of the two correct ways to reduce the partial products (add the LoRA
    term before the base layer's all-reduce, or reduce A's output) we reduce A's output: it needs
    no change to the base layer (local and Transformer Engine alike), and it moves r values per
    token instead of `out`. The reduction is the base's own: an all-reduce over TP (backward:
    identity), or under sequence parallelism a reduce-scatter over the sequence (backward:
    all-gather), after which B sees this rank's tokens only and is marked `sequence_parallel`.

    B starts at zero, so a freshly wrapped model computes exactly what its base does. Dropout on
    the LoRA input uses the default generator: it must draw the same on every TP rank (callers seed
    all ranks alike), else the replicated A would drift apart.
    """

    def __init__(self, base: nn.Module, row_parallel: bool, rank: int, alpha: float, dropout: float,
                 init_seed: int) -> None:
        super().__init__()
        self.base = base
        self.row_parallel = row_parallel
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = dropout
        self.disabled = False
        config = base.config
        self.tp = config.tensor_model_parallel_size
        self.sequence_parallel = bool(config.sequence_parallel) and self.tp > 1
        weight = base.weight  # this rank's shard [out or out/tp, in or in/tp]: A and B follow its split
        out_local, in_local = weight.shape
        self.lora_A = nn.Parameter(torch.empty(rank, in_local, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_local, rank, dtype=weight.dtype, device=weight.device))
        self._init_a(in_local * self.tp if row_parallel else in_local, init_seed)
        self._mark_sharding()

    def _init_a(self, in_full: int, seed: int) -> None:
        """Kaiming-uniform A (bound 1/sqrt(fan_in), as nn.Linear), drawn whole, then this rank's slice:
        the same adapter for every TP layout."""
        if self.lora_A.device.type == "meta":
            return
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(in_full)
        full = torch.empty(self.rank, in_full).uniform_(-bound, bound, generator=g)
        if self.row_parallel and self.tp > 1:
            full = full.chunk(self.tp, dim=1)[self._tp_rank()]
        with torch.no_grad():
            self.lora_A.copy_(full)

    def _tp_rank(self) -> int:
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_rank()

    def _tp_group(self):
        from megatron.core import parallel_state

        return getattr(self.base, "tp_group", None) or parallel_state.get_tensor_model_parallel_group()

    def _mark_sharding(self) -> None:
        """Megatron's attributes: which LoRA factor is a TP shard (and along which dim), which a
        replicated parameter whose gradient covers only this rank's tokens."""
        from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

        split, replicated, dim = (self.lora_A, self.lora_B, 1) if self.row_parallel else (self.lora_B, self.lora_A, 0)
        set_tensor_model_parallel_attributes(split, is_parallel=self.tp > 1, dim=dim, stride=1)
        if self.sequence_parallel:
            replicated.sequence_parallel = True

    def _split_name(self) -> str:
        return LORA_A if self.row_parallel else LORA_B

    def _split_dim(self) -> int:
        return 1 if self.row_parallel else 0

    def whole(self, factor: str) -> torch.Tensor:
        """A copy of the whole factor (`lora_A` or `lora_B`): a split one all-gathered over TP (collective)."""
        tensor = getattr(self, factor).detach().clone()
        if self.tp == 1 or factor != self._split_name():
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.tp)]
        torch.distributed.all_gather(parts, tensor, group=self._tp_group())
        return torch.cat(parts, dim=self._split_dim())

    def shard_of(self, factor: str, value: torch.Tensor) -> torch.Tensor:
        """This rank's part of a factor given whole or already as this rank's shard."""
        shape = getattr(self, factor).shape
        if value.shape == shape:
            return value
        if self.tp > 1 and factor == self._split_name():
            whole = list(shape)
            whole[self._split_dim()] *= self.tp
            if list(value.shape) == whole:
                return value.chunk(self.tp, dim=self._split_dim())[self._tp_rank()]
        raise ValueError(f"{factor} of shape {tuple(value.shape)} fits neither this rank's {tuple(shape)} nor the whole")

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """B A x (unscaled) for this rank's part of the base output."""
        from megatron.core import tensor_parallel

        x = F.dropout(x, self.dropout, self.training) if self.dropout else x
        low = F.linear(x, self.lora_A)
        if self.tp > 1:
            group = self._tp_group()
            if self.row_parallel:
                low = (tensor_parallel.reduce_scatter_to_sequence_parallel_region(low, group=group)
                       if self.sequence_parallel else tensor_parallel.reduce_from_tensor_model_parallel_region(low, group=group))
            else:
                low = (tensor_parallel.gather_from_sequence_parallel_region(low, group=group)
                       if self.sequence_parallel else tensor_parallel.copy_to_tensor_model_parallel_region(low, group=group))
        return F.linear(low, self.lora_B)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = self.base(x, *args, **kwargs)
        if self.disabled:
            return out, bias
        return torch.add(out, self.low_rank(x).to(out.dtype), alpha=self.scale), bias  # out + scale * B A x

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """This rank's shard of W + scale * B A (a new tensor)."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
        return (self.base.weight.float() + delta).to(self.base.weight.dtype)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        """The base's sharded tensors under `base.`, A and B sharded like the base weight (dist checkpoints)."""
        from megatron.core.transformer.utils import (
            ensure_metadata_has_dp_cp_group,
            make_sharded_tensors_for_checkpoint,
            sharded_state_dict_default,
        )

        metadata = ensure_metadata_has_dp_cp_group(metadata)
        group = self._tp_group()
        sharded = sharded_state_dict_default(self.base, f"{prefix}base.", sharded_offsets, metadata, tp_group=group)
        own = {LORA_A: self.lora_A, LORA_B: self.lora_B}
        sharded.update(make_sharded_tensors_for_checkpoint(
            own, prefix, {self._split_name(): self._split_dim()}, sharded_offsets,
            tp_group=group, dp_cp_group=metadata["dp_cp_group"],
        ))
        return sharded

    def extra_repr(self) -> str:
        kind = "row" if self.row_parallel else "column"
        return f"{kind}-parallel, rank={self.rank}, scale={self.scale:g}, tp={self.tp}"


# --------------------------------------------------------------------------- model-level functions


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> list[str]:
    """Wrap every targeted parallel linear of `model` in place, freeze every base parameter.

    A target is an attribute name (`linear_qkv`, `linear_proj`, `linear_q`, `linear_kv`, `linear_fc1`,
    `linear_fc2`; `linear_proj` names both attention projections) or a dotted suffix of a module name
    (`cross_attention.linear_proj`); it matches every parallel linear whose name ends with it.

    Returns the wrapped module names. Only the LoRA factors require grad afterwards; build the
    optimizer (and the EMA, whose `build` must apply LoRA too) after this call. A's values depend
    only on (seed, module name), whatever the TP layout. A target matching no parallel linear is
    an error, as is applying LoRA twice.
    """
    from mugv.models.dit.spec import parallel_linear_types

    if lora_modules(model):
        raise ValueError("the model already has LoRA adapters")
    column, row = parallel_linear_types()
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, column + row) and _matches(name, cfg.targets)]
    unmatched = [t for t in cfg.targets if not any(_matches(name, [t]) for name, _ in chosen)]
    if unmatched:
        raise ValueError(f"LoRA targets {unmatched} match no parallel linear of the model")
    model.requires_grad_(False)
    for name, module in chosen:
        wrapper = LoRALinear(module, isinstance(module, row), cfg.rank, cfg.alpha, cfg.dropout, _stable_seed(seed, name))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, wrapper)
    return [name for name, _ in chosen]


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Wrapped module name -> its LoRALinear."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every LoRA factor (A and B of each wrapped linear), in module order."""
    return [p for module in lora_modules(model).values() for p in (module.lora_A, module.lora_B)]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone, `<wrapped module>.lora_A` / `.lora_B` -> a copy of this rank's shard: ready for
    safetensors' save_file. `full_lora_state_dict` gives the whole adapter under TP."""
    out = {}
    for name, module in lora_modules(model).items():
        out[f"{name}.{LORA_A}"] = module.lora_A.detach().clone()
        out[f"{name}.{LORA_B}"] = module.lora_B.detach().clone()
    return out


def full_lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole adapter whatever the TP layout (split factors all-gathered: every TP rank must call it);
    the same keys as `lora_state_dict`, and at TP=1 the same tensors."""
    return {f"{name}.{factor}": module.whole(factor)
            for name, module in lora_modules(model).items() for factor in (LORA_A, LORA_B)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an adapter into a LoRA-wrapped model: each factor either whole (`full_lora_state_dict`, any TP
    layout) or as this rank's shard (`lora_state_dict` of the same layout). Keys must match exactly."""
    modules = lora_modules(model)
    own = {f"{name}.{factor}" for name in modules for factor in (LORA_A, LORA_B)}
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(f"adapter keys differ from the model's: missing {missing[:4]}, unexpected {unexpected[:4]}"
                         f"{' ...' if len(missing) > 4 or len(unexpected) > 4 else ''}")
    with torch.no_grad():
        for key, value in state.items():
            name, _, factor = key.rpartition(".")
            try:
                shard = modules[name].shard_of(factor, value)
            except ValueError as error:
                raise ValueError(f"adapter {key}: {error}") from None
            getattr(modules[name], factor).copy_(shard)


def merge_lora(model: nn.Module) -> list[str]:
    """Fold scale * B A into each base weight (this rank's shard) and put the base linears back.

    The model is then a plain MUGDiT with its original state-dict keys; its parameters stay
    frozen as `apply_lora` left them. Returns the merged module names.
    """
    merged = []
    for name, module in lora_modules(model).items():
        with torch.no_grad():
            module.base.weight.copy_(module.merged_weight())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.base)
        merged.append(name)
    return merged


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, the model's forward is its frozen base (the DPO/KTO reference without a second copy)."""
    modules = list(lora_modules(model).values())
    previous = [m.disabled for m in modules]
    for module in modules:
        module.disabled = True
    try:
        yield model
    finally:
        for module, was in zip(modules, previous):
            module.disabled = was
