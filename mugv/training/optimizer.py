"""The optimizer component: AdamW with data-parallel gradient sums, TP-aware clipping and a dist-checkpoint view."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.optimizer import (
    get_param_id_to_sharded_param_map,
    optim_state_to_sharding_state,
)
from torch import nn

from mugv.training.config import OptimizerConfig


class AdamWOptimizer:
    """torch AdamW over this rank's parameters (TP shards and replicated ones).

    `step()` sums gradients over the data-parallel group (callers scale the loss by
    1 / global samples, so the sum is the global mean) and over context-parallel ranks (each holds
    the gradient of its slice of the tokens), clips by the global norm (each TP
    shard counted once, replicated parameters once) and updates. On CPU this is the optimizer
    of choice: Megatron's `get_megatron_optimizer` hard-codes CUDA in its FP32 path.
    """

    def __init__(self, model: nn.Module, cfg: OptimizerConfig) -> None:
        self.cfg = cfg
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=0.0, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
        self._init_state()

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)

    def accumulating(self, last: bool):
        """Context of one micro-batch's backward (the gradients are reduced in `step`)."""
        return contextlib.nullcontext()

    def _reduce_gradients(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        group = parallel_state.get_data_parallel_group(with_context_parallel=True)
        if dist.get_world_size(group) == 1:
            return
        grads = [p.grad for p in self.params]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=group)
        for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)

    def _global_grad_norm(self) -> torch.Tensor:
        squares = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        for p in self.params:
            if tensor_parallel.param_is_not_tensor_parallel_duplicate(p):
                squares = squares + p.grad.float().pow(2).sum()
        group = parallel_state.get_model_parallel_group()
        if dist.get_world_size(group) > 1:
            dist.all_reduce(squares, group=group)
        return squares.sqrt()

    def step(self) -> float:
        """Reduce, clip and apply the gradients; return the global gradient norm before clipping."""
        self._reduce_gradients()
        norm = self._global_grad_norm()
        scale = (self.cfg.clip_grad / (norm + 1e-6)).clamp(max=1.0)
        for p in self.params:
            p.grad.mul_(scale)
        self.optimizer.step()
        return float(norm)

    # ------------------------------------------------------------------ checkpoint

    def _init_state(self) -> None:
        """Allocate the Adam moments (zeros, step 0) up front, as AdamW would on its first step.

        With the state always present, a checkpoint saved at any step has the same layout.
        """
        for p in self.params:
            if p not in self.optimizer.state or not self.optimizer.state[p]:
                self.optimizer.state[p] = {
                    "step": torch.zeros((), dtype=torch.float32),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        """Adam moments as tensors sharded like their parameters; the shared step count as common state."""
        state = self.optimizer.state_dict()
        steps = {float(s["step"]) for s in state["state"].values() if "step" in s}
        if len(steps) > 1:
            raise ValueError(f"optimizer step differs between parameters: {sorted(steps)}")
        id_map = get_param_id_to_sharded_param_map(model_sharded_state_dict, self.params)
        optim_state_to_sharding_state(state, id_map, exclude_keys=("step",))
        state["common_step"] = steps.pop() if steps else 0.0
        return state

    def load_state_dict(self, state: dict) -> None:
        step = float(state.pop("common_step"))
        for param_state in state["state"].values():
            param_state["step"] = torch.tensor(step, dtype=torch.float32)
        self.optimizer.load_state_dict(state)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, device: torch.device):
    """Megatron DDP + distributed optimizer on GPU (unless `cfg.distributed` is off), torch AdamW otherwise."""
    if device.type == "cuda" and cfg.distributed:
        from mugv.training.megatron_optimizer import MegatronDistributedOptimizer

        return MegatronDistributedOptimizer(model, cfg)
    return AdamWOptimizer(model, cfg)
