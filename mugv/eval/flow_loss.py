"""Held-out flow loss of a DiT: velocity MSE at fixed timesteps on latent samples never trained on."""

from __future__ import annotations

from pathlib import Path

import torch

from mugv.diffusion.loss import per_sample_mse, velocity_channels
from mugv.diffusion.schedule import add_noise
from mugv.latents.heldout import heldout_sample_ids, seed_of
from mugv.latents.shards import LatentDataset


@torch.no_grad()
def heldout_flow_loss(model: torch.nn.Module, latents_dir: Path, count: int, seed: int,
                      timesteps: list[float]) -> dict[str, float]:
    """{"t<timestep>": mean MSE over the held-out samples, ..., "mean": over all}: the same samples,
    noise and timesteps as the trainer's held-out loss (`pretrain.heldout`, `pretrain.seed`)."""
    dataset = LatentDataset(latents_dir)
    ids = heldout_sample_ids(list(dataset.index["sample_id"]), count, seed)
    if not ids:
        return {}
    model.eval()
    t = torch.tensor(timesteps, dtype=torch.float32)
    losses = []
    for sample_id in ids:
        sample = dataset.get(sample_id)
        x0 = sample["latent"].float()[None]
        g = torch.Generator().manual_seed(seed_of(seed, "heldout", sample_id))
        noise = torch.randn(x0.shape[1:], generator=g).expand(len(t), *x0.shape[1:])
        x0 = x0.expand_as(noise)
        y = sample["text"].float()[None, None].expand(len(t), -1, -1, -1)
        mask = sample["text_mask"][None].expand(len(t), -1)
        fps = torch.full((len(t),), float(sample["fps"]))
        out = model(add_noise(x0, noise, t), t, y, mask, fps=fps)
        losses.append(per_sample_mse(velocity_channels(out, x0.shape[1]), x0 - noise))
    per_timestep = torch.stack(losses).mean(dim=0)
    result = {f"t{value:g}": float(loss) for value, loss in zip(timesteps, per_timestep)}
    result["mean"] = float(per_timestep.mean())
    return result
