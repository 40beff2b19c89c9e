"""Micro-batch tensors from the latent data set: read on tensor-parallel rank 0, broadcast to the TP group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from mugv.latents.shards import LatentDataset


@dataclass
class Batch:
    """Latents x0 [B, C, T, H, W], text y [B, 1, L, D] + mask [B, L], fps [B], is_image [B], index rows [B]."""

    x0: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    fps: torch.Tensor
    is_image: torch.Tensor
    rows: list[int]

    @property
    def size(self) -> int:
        return self.x0.shape[0]


class BatchReader:
    """Builds a Batch for index rows of a LatentDataset.

    Only the source rank of each TP group reads shards; the other TP ranks receive the tensors by
    broadcast (their shapes follow from the index table and the stored null caption, so nothing
    else is exchanged).
    """

    def __init__(self, dataset: LatentDataset, device: torch.device) -> None:
        self.dataset = dataset
        self.device = device
        null = dataset.text_null()
        self.null_y = null["null.text"].float()
        self.null_mask = null["null.text_mask"]
        self.channels = len(dataset.stats.mean)
        index = dataset.index
        self._shape = index[["latent_t", "latent_h", "latent_w"]].to_numpy()
        self._fps = torch.tensor(index["fps"].to_numpy(), dtype=torch.float32)
        self._image = torch.tensor((index["kind"] == "image").to_numpy())
        self._group = parallel_state.get_tensor_model_parallel_group()
        self._src = parallel_state.get_tensor_model_parallel_src_rank()
        self._tp = parallel_state.get_tensor_model_parallel_world_size()

    def _read(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        samples = [self.dataset[row] for row in rows]
        x0 = torch.stack([s["latent"].float() for s in samples])
        y = torch.stack([s["text"].float() for s in samples])[:, None]
        mask = torch.stack([s["text_mask"] for s in samples])
        return x0, y, mask

    def _empty(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t, h, w = (int(v) for v in self._shape[rows[0]])
        length, dim = self.null_y.shape
        return (
            torch.empty(len(rows), self.channels, t, h, w),
            torch.empty(len(rows), 1, length, dim),
            torch.empty(len(rows), length, dtype=torch.int64),
        )

    def read(self, rows: Sequence[int]) -> Batch:
        is_source = self._tp == 1 or dist.get_rank() == self._src
        tensors = self._read(rows) if is_source else self._empty(rows)
        tensors = tuple(t.to(self.device) for t in tensors)
        if self._tp > 1:
            for tensor in tensors:
                dist.broadcast(tensor, src=self._src, group=self._group)
        x0, y, mask = tensors
        rows_t = torch.as_tensor(list(rows))
        return Batch(
            x0=x0, y=y, mask=mask, fps=self._fps[rows_t].to(self.device),
            is_image=self._image[rows_t].to(self.device), rows=list(rows),
        )
