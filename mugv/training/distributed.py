"""Process-group and Megatron-Core model-parallel state: set up and tear down."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mugv.training.megatron_compat import apply_cpu_patches, initialize_cpu_rng_tracker, remove_cpu_patches


def init_parallel(tp: int = 1, pp: int = 1, backend: str | None = None, seed: int = 0, cp: int = 1) -> None:
    """Initialise torch.distributed and Megatron-Core's tensor/pipeline/context-parallel groups.

    Under torchrun the usual RANK/WORLD_SIZE/MASTER_* variables are used; otherwise a world of
    one process on an in-memory store (nothing listens beyond 127.0.0.1). Backend defaults to nccl with CUDA, gloo without.
    Calling it again with the same sizes is a no-op. Without CUDA it applies Megatron's CPU
    workaround (`megatron_compat.apply_cpu_patches`) until `destroy_parallel`.
    """
    from megatron.core import parallel_state, tensor_parallel

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch.cuda.is_available():
        apply_cpu_patches()
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun (or an explicit env:// setup)
            dist.init_process_group(backend=backend)
        else:
            # a world of one on an in-memory store: no TCP store, which listens on every interface
            # whatever address it is given, and no RANK/MASTER_PORT written into os.environ for
            # child processes (a converter, a torchrun job) to inherit
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if parallel_state.model_parallel_is_initialized():
        current = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size(),
        )
        if current == (tp, pp, cp):
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp
    )
    if torch.cuda.is_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        initialize_cpu_rng_tracker()


def destroy_parallel() -> None:
    """Tear down Megatron-Core's groups and the default process group, and undo the CPU workaround."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    remove_cpu_patches()


# what torchrun sets for its workers (torch.distributed.run), forgotten by leave_job; with TORCHELASTIC_USE_AGENT_STORE
# left set, a later world of one would wait for the launcher's store instead of starting its own
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def leave_job() -> None:
    """Collective, after a multi-process job's training: wait for every rank, tear the groups down and forget
    the torchrun world, so what this process does next alone (rank 0's release export) runs as a world of one.
    A no-op in a world of one (tests and single-process runs keep their group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    dist.barrier()
    destroy_parallel()
    for key in [*TORCHRUN_ENV, *(k for k in os.environ if k.startswith("TORCHELASTIC_"))]:
        os.environ.pop(key, None)

