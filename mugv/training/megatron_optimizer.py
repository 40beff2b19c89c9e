"""The GPU optimizer component: Megatron-Core DDP (bucketed grad reduce overlapped with backward) + its distributed optimizer."""

from __future__ import annotations

import contextlib

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.transformer.module import MegatronModule

from mugv.training.config import OptimizerConfig


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
        return self.optimizer.sharded_state_dict(model_sharded_state_dict, is_loading=is_loading)

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
