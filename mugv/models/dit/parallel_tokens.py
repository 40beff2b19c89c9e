"""Context- and sequence-parallel handling of MUGDiT's token sequence: which tokens a rank holds, and back."""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel

from mugv.models.dit.config import ParallelDims


def running_parallel_dims(sequence_parallel: bool = False) -> ParallelDims:
    """The layout of the running Megatron-Core parallel state (one process when there is none)."""
    if not parallel_state.model_parallel_is_initialized():
        return ParallelDims(sequence_parallel=sequence_parallel)
    return ParallelDims(
        tp=parallel_state.get_tensor_model_parallel_world_size(),
        cp=parallel_state.get_context_parallel_world_size(),
        sequence_parallel=sequence_parallel,
    )


def check_parallel_state(dims: ParallelDims) -> None:
    """A model laid out over several ranks must be built inside the matching Megatron parallel state.

    Megatron's parallel linears take their TP group from the global state: a mismatch would shard
    (or not) silently.
    """
    running = running_parallel_dims()
    if parallel_state.model_parallel_is_initialized() or dims.tp > 1 or dims.cp > 1:
        if (running.tp, running.cp) != (dims.tp, dims.cp):
            raise ValueError(
                f"model layout tp={dims.tp} cp={dims.cp} but the running Megatron parallel state is "
                f"tp={running.tp} cp={running.cp} (start it with mugv.training.distributed.init_parallel)"
            )


def gather_over_context(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather sequence-first tokens over the CP group (backward: reduce-scatter of the grads)."""
    return tensor_parallel.gather_from_sequence_parallel_region(
        tensor, tensor_parallel_output_grad=True, group=parallel_state.get_context_parallel_group()
    )


class TokenSharding:
    """Where a rank's tokens sit: a contiguous CP slice of the sequence, and between blocks its SP shard.

    Context parallel (CP) keeps this rank's contiguous slice of the tokens, with the same slice of
    the RoPE rotations and noised flags; the prediction is all-gathered at the end, every CP rank
    returning it whole (backward keeps each rank's slice). Sequence parallel (SP) scatters the
    slice over the TP ranks for the blocks and gathers it back before the final layer. With
    tp = cp = 1 every method is the identity.
    """

    def __init__(self, dims: ParallelDims) -> None:
        self.dims = dims

    def split_context(self, hidden: torch.Tensor, noised: torch.Tensor, rope: torch.Tensor):
        """(hidden, noised, rope) of every token -> those of this CP rank's slice."""
        split = self.dims.cp * self.dims.sequence_split
        if hidden.shape[0] % split:
            raise ValueError(
                f"{hidden.shape[0]} tokens do not split over CP={self.dims.cp} x SP={self.dims.sequence_split} ranks"
            )
        if self.dims.cp == 1:
            return hidden, noised, rope
        rank = parallel_state.get_context_parallel_rank()
        return tuple(t.chunk(self.dims.cp)[rank] for t in (hidden, noised, rope))

    def scatter_sequence(self, hidden: torch.Tensor, t_mod: torch.Tensor, t0_mod: torch.Tensor, noised: torch.Tensor):
        """Enter the blocks: this TP rank's shard of hidden and noised flags under SP.

        The modulation inputs stay whole, but each rank's blocks see only its tokens: their grads
        are summed over the TP ranks.
        """
        if self.dims.sequence_split == 1:
            return hidden, t_mod, t0_mod, noised
        hidden = tensor_parallel.scatter_to_sequence_parallel_region(hidden)
        t_mod = tensor_parallel.copy_to_tensor_model_parallel_region(t_mod)
        t0_mod = tensor_parallel.copy_to_tensor_model_parallel_region(t0_mod)
        noised = noised.chunk(self.dims.sequence_split)[parallel_state.get_tensor_model_parallel_rank()]
        return hidden, t_mod, t0_mod, noised

    def gather_sequence(self, hidden: torch.Tensor) -> torch.Tensor:
        """Leave the blocks: the whole CP slice again under SP."""
        if self.dims.sequence_split == 1:
            return hidden
        return tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)

    def gather_context(self, out: torch.Tensor) -> torch.Tensor:
        """Every CP rank's slice of the prediction -> the whole sequence (backward keeps this rank's slice)."""
        if self.dims.cp == 1:
            return out
        return tensor_parallel.gather_from_sequence_parallel_region(
            out, tensor_parallel_output_grad=False, group=parallel_state.get_context_parallel_group()
        )
