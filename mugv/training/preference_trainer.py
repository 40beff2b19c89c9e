"""Preference optimisation of MUGDiT on a preference set: Flow-DPO on pairs or Diffusion-KTO on labels, LoRA optional."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from mugv.diffusion.config import FlowTrainingConfig
from mugv.diffusion.schedule import sample_timesteps, shift_ratio_for_latent
from mugv.latents.heldout import seed_of
from mugv.models.dit.convert import save_mugv
from mugv.preference.table import PreferenceSet
from mugv.training.checkpoint import load_checkpoint, resolve_checkpoint, run_identity
from mugv.training.config import PretrainConfig, PreferenceOptConfig
from mugv.training.dit_trainer import Trainer, converted_start
from mugv.training.metrics import LogFn

ADAPTER = "adapter"          # out_dir/adapter/: the LoRA adapter alone (safetensors + config), registered on its own
MERGED = "merged"            # out_dir/merged/: the trained DiT with the adapter folded in (mugv format)
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class PreferenceBatches:
    """An endless seeded stream of step batches over pairs (DPO) or labelled samples (KTO), split over DP ranks.

    Each epoch is a fresh permutation (seeded by seed and epoch); a step takes the next `batch` items
    (whole steps only) and DP rank r gets its contiguous share. State: the number of steps taken.
    """

    def __init__(self, items: int, batch: int, seed: int, dp_rank: int = 0, dp_size: int = 1) -> None:
        if items < batch:
            raise ValueError(f"the preference set has {items} items, fewer than one step's batch of {batch}")
        if batch % dp_size:
            raise ValueError(f"batch {batch} is not divisible by the data-parallel size {dp_size}")
        self.items, self.batch, self.seed = items, batch, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.steps = 0

    def indices(self, step: int) -> np.ndarray:
        per_epoch = self.items // self.batch
        epoch, position = divmod(step, per_epoch)
        order = np.random.default_rng(seed_of(self.seed, "preference", epoch) % 2**32).permutation(self.items)
        chosen = order[position * self.batch:(position + 1) * self.batch]
        share = self.batch // self.dp_size
        return chosen[self.dp_rank * share:(self.dp_rank + 1) * share]

    def next_step(self) -> np.ndarray:
        out = self.indices(self.steps)
        self.steps += 1
        return out

    def state_dict(self) -> dict:
        return {"steps": self.steps, "items": self.items, "batch": self.batch}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        if strict and (state["items"], state["batch"]) != (self.items, self.batch):
            raise ValueError(f"checkpoint's preference stream ({state['items']} items, batch {state['batch']}) "
                             f"differs from this one ({self.items}, {self.batch})")
        self.steps = int(state["steps"])


class PreferenceTrainer(Trainer):
    """Flow-DPO or Diffusion-KTO from a starting checkpoint (the SFT model), which is also the frozen reference.

    With LoRA the base weights are frozen and the reference is the same model with its adapters switched
    off (no second copy); without, the reference is a frozen copy of the starting weights. Held-out flow
    loss, checkpoints, resume and metrics are the pretraining Trainer's.
    """

    def __init__(self, cfg: PretrainConfig, opt: PreferenceOptConfig, preference_dir: Path, latents_dir: Path,
                 out_dir: Path, init_from: Path, log: LogFn | None = None, progress: bool = True,
                 flow: FlowTrainingConfig | None = None) -> None:
        self.opt, self.preference_dir = opt, Path(preference_dir)
        self.preference = PreferenceSet.load(preference_dir)
        super().__init__(cfg, opt.method, latents_dir, out_dir, init_from, log, progress, flow)
        self.reference = None if opt.lora.enabled else self.frozen_copy()

    # ------------------------------------------------------------------ set-up hooks

    def prepare_model(self) -> None:
        """Load the starting weights into the plain model, then (LoRA) freeze them and add the adapters."""
        self.load_start(self.model)
        if self.opt.lora.enabled:
            from mugv.training.lora import apply_lora

            apply_lora(self.model, self.opt.lora, seed=self.cfg.seed)

    def load_start(self, model) -> None:
        converted = converted_start(self.init_from)
        if converted is not None:
            from mugv.models.dit.convert import load_converted_into

            load_converted_into(model, converted)
        else:
            load_checkpoint(resolve_checkpoint(self.init_from), model, weights_only=True)

    def frozen_copy(self):
        reference = self.build_model()
        self.load_start(reference)
        return reference.eval().requires_grad_(False)

    def build_sampler(self, dp: int, excluded: set[str]) -> PreferenceBatches:
        items = len(self.preference.pairs) if self.opt.method == "dpo" else len(self.preference.labels)
        return PreferenceBatches(items, self.opt.batch, self.cfg.seed, parallel_state.get_data_parallel_rank(), dp)

    def load_or_init(self) -> None:
        """Resume from this stage's own checkpoint; a fresh start already holds its weights (prepare_model)."""
        latest = self.checkpointer.resumable()
        if latest is None:
            if self.history is not None:
                self.history.truncate_after(-1)
            self.schedule.apply()
            return
        common = load_checkpoint(latest, self.model, self.optimizer, self.ema)
        self.step = int(common["step"])
        self.sampler.load_state_dict(common["sampler"])
        self.schedule.load_state_dict(common["schedule"])
        if self.history is not None:
            self.history.truncate_after(self.step)

    def run_id(self) -> str:
        """The pretraining identity plus this method's settings and the preference set's content."""
        from mugv.tracking import folder_fingerprint

        return run_identity(base=super().run_id(), opt=self.opt.model_dump(mode="json"),
                            preference=folder_fingerprint(self.preference_dir))

    # ------------------------------------------------------------------ one step

    def step_inputs(self, indices: np.ndarray, step: int):
        """Per item: the latents, text, one timestep and one noise (shared by a pair's winner and loser)."""
        tensors = self.preference.tensors
        flow = self.flow
        shape = tensors["x0"].shape[1:]
        ratio = (shift_ratio_for_latent(*shape[1:], base_resolution=flow.shift_base_pixels)
                 if flow.resolution_shift else 1.0)
        timesteps, noises = [], []
        for i in indices:
            g = torch.Generator().manual_seed(seed_of(self.cfg.seed, self.opt.method, step, int(i)))
            timesteps.append(sample_timesteps(1, ratio, g, flow.timestep_loc, flow.timestep_scale))
            noises.append(torch.randn(shape, generator=g))
        return torch.cat(timesteps).to(self.device), torch.stack(noises).to(self.device)

    def gather(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.preference.tensors
        return {"x0": t["x0"][rows].to(self.device), "y": t["y"][rows].to(self.device),
                "mask": t["mask"][rows].to(self.device), "fps": t["fps"][rows].to(self.device)}

    def method_loss(self, indices: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        from mugv.training import preference_loss as losses

        t, noise = self.step_inputs(indices, step)
        if self.opt.method == "dpo":
            pairs = torch.as_tensor(self.preference.pairs)[torch.as_tensor(indices)]
            winner, loser = self.gather(pairs[:, 0]), self.gather(pairs[:, 1])
            with self.autocast():  # reference None: the policy with its LoRA adapters off
                return losses.dpo_step_losses(self.model, self.reference, winner, loser, t, noise, beta=self.opt.beta)
        labels = self.preference.labels
        rows = torch.as_tensor([labels[int(i)][0] for i in indices])
        desirable = torch.as_tensor([labels[int(i)][1] for i in indices], device=self.device)
        batch = self.gather(rows)
        group = parallel_state.get_data_parallel_group() if dist.is_initialized() else None
        with self.autocast():
            return losses.kto_step_losses(self.model, self.reference, batch, desirable, t, noise, beta=self.opt.beta,
                                          lambda_desirable=self.opt.lambda_desirable,
                                          lambda_undesirable=self.opt.lambda_undesirable, group=group)

    def train_step(self, indices: np.ndarray) -> tuple[float, float]:
        self.optimizer.zero_grad()
        with self.optimizer.accumulating(last=True):
            loss, stats = self.method_loss(indices, self.step)
            loss.backward()
        grad_norm = self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model)
        total = loss.detach().clone()
        if parallel_state.get_data_parallel_world_size() > 1:
            dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
            total /= parallel_state.get_data_parallel_world_size()
        self.guard.finite_step(self.step, total, grad_norm)
        self.last_stats = {k: float(v) for k, v in stats.items()}
        return float(total), grad_norm

    # ------------------------------------------------------------------ metrics and outputs

    def window_metrics(self, window) -> dict:
        seconds = sum(w[3] for w in window)
        out = {"loss": sum(w[0] for w in window) / len(window), "grad_norm": window[-1][1],
               "lr": self.schedule.lr_at(self.step - 1), "steps_per_s": len(window) / seconds}
        return {**out, **getattr(self, "last_stats", {})}

    def summary(self) -> dict:
        """Final metrics: first and last loss, held-out flow loss at start and end, the last window's method stats."""
        checkpoint = self.checkpointer.latest()
        if not self.is_main:
            return {"checkpoint": str(checkpoint)}
        train, heldout = self.logged()
        stats = {k: v for k, v in train[-1].items() if k not in ("step", "loss", "grad_norm", "lr", "steps_per_s")}
        return {"stage": self.opt.method, "steps": self.step, "loss_first": train[0]["loss"],
                "loss_last": train[-1]["loss"], "heldout_loss_start": heldout[0], "heldout_loss_end": heldout[-1],
                **stats, "checkpoint": str(checkpoint)}

    def export_weights(self) -> Path:
        """Write the trained DiT (adapters merged in) as a mugv-format folder, and the adapter on its own."""
        from safetensors.torch import save_file

        from mugv.training import lora

        merged_dir = self.out_dir / MERGED
        if self.opt.lora.enabled:
            adapter_dir = self.out_dir / ADAPTER
            adapter_dir.mkdir(parents=True, exist_ok=True)
            save_file(lora.full_lora_state_dict(self.model), str(adapter_dir / ADAPTER_WEIGHTS))
            (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(
                {**self.opt.lora.model_dump(mode="json"), "base": str(self.init_from), "method": self.opt.method},
                indent=1) + "\n")
            lora.merge_lora(self.model)
        save_mugv(self.model, merged_dir)
        return merged_dir
