"""Every workaround Megatron-Core 0.16.1 needs to run on a CPU-only machine, in one place."""

from __future__ import annotations

import torch

_applied = False


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def _no_op() -> None:
    return None


def apply_cpu_patches() -> None:
    """Make Megatron-Core's hard-coded CUDA calls harmless when no GPU exists (idempotent).

    Does nothing when CUDA is available: on a GPU Megatron-Core runs unpatched.
    """
    global _applied
    if _applied or torch.cuda.is_available():
        return
    # The tensor-parallel mappings (gather/scatter/reduce-scatter of sequence and context
    # parallel), the sequence-parallel backward of ColumnParallelLinear, the global memory buffer
    # and dist_checkpointing's saver (its failure flag) allocate on
    # `device=torch.cuda.current_device()`, which raises on a CPU build of torch. Pointing it at
    # the CPU makes those CPU tensors, which gloo handles.
    torch.cuda.current_device = _cpu_device
    # dist_checkpointing's filesystem writer calls torch.cuda.synchronize() before writing
    # (device-to-host copies); with no CUDA there is nothing to wait for.
    torch.cuda.synchronize = _no_op
    _applied = True


def initialize_cpu_rng_tracker() -> None:
    """Set up Megatron's RNG tracker without CUDA.

    `tensor_parallel.model_parallel_cuda_manual_seed` seeds CUDA generators and fails on CPU;
    the inference tracker is a plain CPU-safe tracker that `get_cuda_rng_tracker().fork()`
    (used by parallel-linear initialisation) accepts.
    """
    from megatron.core import tensor_parallel

    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
