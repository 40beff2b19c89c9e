"""The GPU optimizer component: Megatron-Core DDP (bucketed grad reduce overlapped with backward) + its distributed optimizer."""

from __future__ import annotations

import contextlib

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.transformer.module import MegatronModule

from mugv.training.config import OptimizerConfig

# Named, not left to Megatron's default: megatron-core 0.16 defaults to 'fully_sharded_model_space', whose
# ShardedTensors carry a flattened_range that its own dist_checkpointing then refuses ("ShardedTensor.flattened_range
# is not supported"; seen on an H200 with megatron-core 0.16.1). 'fully_reshardable' gathers the moments on
# data-parallel rank 0 at save and loads on any TP / DP size.
CHECKPOINT_LAYOUT = {"distrib_optim_sharding_type": "fully_reshardable"}


def _give_fresh_state_its_shapes(optimizer) -> None:
    """Megatron-core 0.16 workaround, kept here only: without Transformer Engine or Apex its DistributedOptimizer
    falls back to torch's Adam, and building a state dict to load into (`state_dict()`) then asserts that every
    Adam state has one common 'step', which a fresh optimizer (no state yet) does not have (seen on an H200). Megatron
    has the cure for its own loads: one step on zero gradients to create the moments, which the load then
    overwrites, as it does the parameters."""
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if inner.optimizer.state:
            continue
        if not hasattr(inner, "_init_optimizer_states_with_dummy_values"):
            raise RuntimeError("megatron.core DistributedOptimizer._init_optimizer_states_with_dummy_values is gone; "
                               "update mugv.training.megatron_optimizer._give_fresh_state_its_shapes")
        inner._init_optimizer_states_with_dummy_values()


def _load_distributed(optimizer, state: dict) -> None:
    """Megatron-core 0.16 workaround, kept here only: with torch's Adam (no Transformer Engine or Apex),
    DistributedOptimizer.load_state_dict first puts Adam's 'step' into every parameter's state, then loads the
    fully reshardable moments, which skip 'step', into every key of that state: KeyError 'step' (seen on an H200).
    So the common state is loaded first and the moments after, with 'step' set aside meanwhile."""
    param_state = state.pop("param_state", None)
    layout = state.pop("param_state_sharding_type", None)
    optimizer.load_state_dict(state)
    if param_state is None:
        return
    if layout != CHECKPOINT_LAYOUT["distrib_optim_sharding_type"]:
        raise ValueError(f"optimizer state of layout {layout!r}; this version reads "
                         f"{CHECKPOINT_LAYOUT['distrib_optim_sharding_type']!r}")
    adam_state = optimizer.optimizer.state
    steps = {param: entry.pop("step") for param, entry in adam_state.items() if "step" in entry}
    try:
        optimizer.load_parameter_state_from_fully_reshardable(param_state)
    finally:
        for param, step in steps.items():
            adam_state[param]["step"] = step


class MegatronDistributedOptimizer:
    """Megatron's DistributedDataParallel + DistributedOptimizer behind the interface of `AdamWOptimizer`.

    The model keeps its fp32 parameters (compute runs under bf16 autocast); DDP accumulates the
    gradients in contiguous fp32 buffers and reduce-scatters each bucket as soon as backward has
    filled it, on the last micro-batch of a step; the distributed optimizer keeps each rank's
    shard of the Adam moments only (12 bytes per parameter / DP in `mugv plan`), clips by the
    global norm and all-gathers the updated parameters.

    Loss convention: the trainer scales each micro-batch's loss by 1 / global samples, so the
    gradients must be summed over the data x context parallel ranks, not averaged; Megatron's
    `calculate_per_token_loss` is the switch that makes DDP's gradient scaling factor 1.
    Needs CUDA: Megatron allocates its buffers with `torch.cuda.current_device()`.
    """

    def __init__(self, model: MegatronModule, cfg: OptimizerConfig) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("the Megatron distributed optimizer needs CUDA; on CPU the trainer uses AdamWOptimizer")
        model.config.calculate_per_token_loss = True  # sum gradients over DP x CP (see the class docstring)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=True,
            use_distributed_optimizer=True,
            bucket_size=cfg.bucket_size,
        )
        self.ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
        self.optimizer = get_megatron_optimizer(
            MegatronOptimizerConfig(
                optimizer="adam",
                lr=0.0,  # the stage's LRSchedule writes the lr of every param group each step
                min_lr=0.0,
                weight_decay=cfg.weight_decay,
                adam_beta1=cfg.betas[0],
                adam_beta2=cfg.betas[1],
                adam_eps=cfg.eps,
                clip_grad=cfg.clip_grad,
                bf16=False,
                params_dtype=torch.float32,
                use_distributed_optimizer=True,
            ),
            [self.ddp],
        )

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()

    def accumulating(self, last: bool):
        """Context of one micro-batch's backward: the gradient reduce starts only on the step's last one."""
        return contextlib.nullcontext() if last else self.ddp.no_sync()

    def step(self) -> float:
        """Finish the gradient reduce, clip, update and all-gather the parameters; return the global grad norm."""
        finalize_model_grads([self.ddp])
        _, grad_norm, _ = self.optimizer.step()
        return float(grad_norm) if grad_norm is not None else float("nan")

    def sharded_state_dict(self, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
        """The Adam moments in Megatron's fully reshardable layout (loads on another TP / DP size)."""
        if is_loading:
            _give_fresh_state_its_shapes(self.optimizer)
        return self.optimizer.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading,
                                                 metadata=CHECKPOINT_LAYOUT)

    def load_state_dict(self, state: dict) -> None:
        optimizers = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        parts = [state] if len(optimizers) == 1 else [state[i] for i in range(len(optimizers))]
        for optimizer, part in zip(optimizers, parts):
            _load_distributed(optimizer, dict(part))
