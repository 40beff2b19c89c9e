"""Megatron-Core 0.16's CPU workarounds: applied by init_parallel without CUDA, undone by destroy_parallel, version-checked."""

from __future__ import annotations

import warnings

WRITTEN_FOR_MEGATRON = (0, 16)  # megatron-core major.minor these workarounds were checked against
TE_APEX_WARNING = "Transformer Engine and Apex are not installed"

_originals: dict[str, object] = {}


def silence_megatron_import_warnings() -> None:
    """Hide Megatron's "Transformer Engine and Apex are not installed" UserWarnings (idempotent).

    Four megatron modules (optimizer, clip_grads, the optimizer's and Megatron-FSDP's mixed
    precision) warn at import time when neither package is present, which is always the case on
    a CPU machine and on a GPU without them; they then fall back to torch implementations, which
    is what we want. The filter matches only that message, only UserWarning, only from megatron
    modules, and must be installed before megatron is first imported: entry points (the CLI's
    callback, scripts) call it first. (Megatron's "full scope is deprecated" warning is not
    filtered: `megatron_config` passes the non-deprecated `cuda_graph_scope=[]`.)
    """
    warnings.filterwarnings("ignore", message=TE_APEX_WARNING, category=UserWarning, module="megatron")


def megatron_version() -> tuple[int, int, int]:
    from megatron.core import package_info

    return (package_info.MAJOR, package_info.MINOR, package_info.PATCH)


def check_megatron_version() -> bool:
    """True on the megatron-core line the workarounds were written for; otherwise warn (and return False)."""
    found = megatron_version()
    if found[:2] == WRITTEN_FOR_MEGATRON:
        return True
    warnings.warn(
        f"mugv's CPU workarounds (mugv/training/megatron_compat.py) were written for megatron-core "
        f"{'.'.join(map(str, WRITTEN_FOR_MEGATRON))}.x, found {'.'.join(map(str, found))}: check that its "
        "tensor-parallel mappings and dist_checkpointing still call torch.cuda.current_device/synchronize on "
        "CPU (tests/test_megatron_compat.py) and update or drop the patches",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


def _cpu_device():
    import torch

    return torch.device("cpu")


def _no_op() -> None:
    return None


def cpu_patches_applied() -> bool:
    return bool(_originals)


def apply_cpu_patches() -> None:
    """Make Megatron-Core's hard-coded CUDA calls harmless when no GPU exists (idempotent).

    Does nothing when CUDA is available: on a GPU Megatron-Core runs unpatched. Process-wide
    (Megatron's modules look the functions up on `torch.cuda` at call time), so it is applied only
    while a CPU process group exists: `init_parallel` applies it, `destroy_parallel` undoes it.
    """
    import torch

    if _originals or torch.cuda.is_available():
        return
    check_megatron_version()
    _originals.update(current_device=torch.cuda.current_device, synchronize=torch.cuda.synchronize)
    # The tensor-parallel mappings (gather/scatter/reduce-scatter of sequence and context
    # parallel), the sequence-parallel backward of ColumnParallelLinear, the global memory buffer
    # and dist_checkpointing's saver (its failure flag) allocate on
    # `device=torch.cuda.current_device()`, which raises on a CPU build of torch. Pointing it at
    # the CPU makes those CPU tensors, which gloo handles.
    torch.cuda.current_device = _cpu_device
    # dist_checkpointing's filesystem writer calls torch.cuda.synchronize() before writing
    # (device-to-host copies); with no CUDA there is nothing to wait for.
    torch.cuda.synchronize = _no_op


def remove_cpu_patches() -> None:
    """Put torch.cuda.current_device / synchronize back (idempotent)."""
    import torch

    for name, original in _originals.items():
        setattr(torch.cuda, name, original)
    _originals.clear()


def initialize_cpu_rng_tracker() -> None:
    """Set up Megatron's RNG tracker without CUDA.

    `tensor_parallel.model_parallel_cuda_manual_seed` seeds CUDA generators and fails on CPU;
    the inference tracker is a plain CPU-safe tracker that `get_cuda_rng_tracker().fork()`
    (used by parallel-linear initialisation) accepts.
    """
    from megatron.core import tensor_parallel

    tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
