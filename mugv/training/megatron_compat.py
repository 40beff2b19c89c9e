"""Every workaround Megatron-Core 0.16.1 needs to run on a CPU-only machine, in one place.

Imports nothing heavy at module level: `mugv/__init__.py` imports it to install the warning
filter before anything in the project can import megatron.
"""

from __future__ import annotations

import warnings

_applied = False


def silence_megatron_import_warnings() -> None:
    """Hide Megatron's "Transformer Engine and Apex are not installed" UserWarnings (idempotent).

    Four megatron modules (optimizer, clip_grads, the optimizer's and Megatron-FSDP's mixed
    precision) warn at import time when neither package is present, which is always the case on
    a CPU machine and on a GPU without them; they then fall back to torch implementations, which
    is what we want. Without this filter every CLI command prints them. The filter matches only
    that message, only UserWarning, only from megatron modules, and must be installed before
    megatron is first imported: `import mugv` does it. (Megatron's "full scope is deprecated"
    warning is not filtered: `megatron_config` passes the non-deprecated `cuda_graph_scope=[]`.)
    """
    warnings.filterwarnings(
        "ignore", message="Transformer Engine and Apex are not installed", category=UserWarning, module="megatron"
    )


def _cpu_device():
    import torch

    return torch.device("cpu")


def _no_op() -> None:
    return None


def apply_cpu_patches() -> None:
    """Make Megatron-Core's hard-coded CUDA calls harmless when no GPU exists (idempotent).

    Does nothing when CUDA is available: on a GPU Megatron-Core runs unpatched.
    """
    import torch

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
