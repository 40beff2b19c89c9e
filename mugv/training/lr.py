"""Learning-rate schedule of both trainers: linear warm-up, then cosine decay or constant, as a stateful object."""

from __future__ import annotations

import math

from mugv.training.config import LRScheduleConfig


class LRSchedule:
    """Sets the lr of every param group of `optimizer` for the current step; `step()` advances by one.

    lr(s) = peak * (s + 1) / warmup during warm-up, then constant or cosine from peak down to
    peak * min_ratio at `total_steps`. Its state is the step count (`state_dict`/`load_state_dict`).
    Groups may carry an `lr_mult` key that scales their lr.

    The DiT trainer runs one schedule per curriculum stage; the VAE trainer one per phase
    (`total_steps` = the phase's steps, `set_step` to the step within the phase).
    `warmup_peak_first` picks the float evaluation order of the warm-up lr: `(peak * (s + 1)) /
    warmup` (the VAE's) rather than `peak * ((s + 1) / warmup)` (the DiT's). The two differ in the
    last bit at some steps; each trainer keeps its own so that its weights stay bit-identical.
    """

    def __init__(self, optimizer, cfg: LRScheduleConfig, total_steps: int, warmup_peak_first: bool = False) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.warmup_peak_first = warmup_peak_first
        self.last_step = 0
        self.apply()

    def factor(self, step: int) -> float:
        """lr / peak at `step` (0-based)."""
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.kind == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
        return cfg.min_ratio + (1 - cfg.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def lr_at(self, step: int) -> float:
        """The learning rate at `step` (0-based)."""
        cfg = self.cfg
        if self.warmup_peak_first and step < cfg.warmup_steps:
            return cfg.peak * (step + 1) / cfg.warmup_steps
        return cfg.peak * self.factor(step)

    def get_lr(self) -> float:
        return self.lr_at(self.last_step)

    def apply(self) -> None:
        """Write the current lr into the optimizer (again after loading its state, which carries old lrs)."""
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)

    def step(self) -> None:
        self.last_step += 1
        self.apply()

    def set_step(self, step: int) -> None:
        """Jump to `step` and write its lr into the optimizer."""
        self.last_step = step
        self.apply()

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps, "cfg": self.cfg.model_dump()}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.apply()
