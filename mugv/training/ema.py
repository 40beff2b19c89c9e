"""Exponential moving average of model weights, kept as a frozen copy of the model updated in place."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mugv.training.config import EMAConfig


class EMA:
    """A frozen copy of a model: ema = decay * ema + (1 - decay) * model after each optimizer step.

    The copy comes from `build` (a fresh model of the same architecture and parallel layout),
    since Megatron modules hold process groups that cannot be deep-copied. Buffers are copied.
    """

    def __init__(self, model: nn.Module, build: Callable[[], nn.Module], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = build()
        self.model.load_state_dict(model.state_dict())
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1.0 - self.decay)
        ema_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)
