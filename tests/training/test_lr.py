"""The shared LR schedule reproduces each trainer's former learning rate bit for bit."""

from __future__ import annotations

import math

import torch
import yaml

from mugv.training.config import LRScheduleConfig
from mugv.training.lr import LRSchedule
from mugv.training.vae_trainer import VAETrainConfig, _phase_of, lr_schedule_config


def vae_lr_before(cfg: VAETrainConfig, step_in_phase: int, phase_steps: int) -> float:
    """The VAE trainer's own LR function before it moved onto LRSchedule (verbatim)."""
    if step_in_phase < cfg.warmup_steps:
        return cfg.lr * (step_in_phase + 1) / cfg.warmup_steps
    span = max(phase_steps - cfg.warmup_steps, 1)
    progress = min((step_in_phase - cfg.warmup_steps) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def vae_lrs(cfg: VAETrainConfig) -> list[float]:
    """The lr the VAE trainer's schedule gives every global step (one schedule per phase)."""
    out, schedules = [], {}
    for step in range(cfg.spatial_steps + cfg.temporal_steps):
        phase, in_phase, phase_steps = _phase_of(cfg, step)
        if phase not in schedules:
            optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
            schedules[phase] = LRSchedule(optimizer, lr_schedule_config(cfg), phase_steps, warmup_peak_first=True)
        schedules[phase].set_step(in_phase)
        out.append(schedules[phase].optimizer.param_groups[0]["lr"])
    return out


def test_vae_lr_is_bit_identical_to_the_former_function_for_the_default_params():
    with open("params.yaml") as f:
        cfg = VAETrainConfig(**yaml.safe_load(f)["train_vae"])
    expected = [vae_lr_before(cfg, *_phase_of(cfg, s)[1:]) for s in range(cfg.spatial_steps + cfg.temporal_steps)]
    assert vae_lrs(cfg) == expected  # exact floats, every step


def test_vae_lr_is_bit_identical_for_other_params():
    for overrides in ({"lr": 3e-3, "warmup_steps": 7, "min_lr_ratio": 0.0, "spatial_steps": 13, "temporal_steps": 5},
                      {"lr": 7e-4, "warmup_steps": 0, "spatial_steps": 4, "temporal_steps": 9},
                      {"warmup_steps": 20, "spatial_steps": 5, "temporal_steps": 30}):
        cfg = VAETrainConfig(**overrides)
        expected = [vae_lr_before(cfg, *_phase_of(cfg, s)[1:]) for s in range(cfg.spatial_steps + cfg.temporal_steps)]
        assert vae_lrs(cfg) == expected, overrides


def test_dit_lr_keeps_its_own_warmup_order():
    """The DiT's warm-up lr is peak * ((s + 1) / warmup): not the VAE's order, which differs in the last bit."""
    cfg = LRScheduleConfig(kind="cosine", peak=1e-3, warmup_steps=10, min_ratio=0.3)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    dit, vae = LRSchedule(optimizer, cfg, 60), LRSchedule(optimizer, cfg, 60, warmup_peak_first=True)
    assert [dit.lr_at(s) for s in range(60)] == [cfg.peak * dit.factor(s) for s in range(60)]
    assert [vae.lr_at(s) for s in range(10)] == [cfg.peak * (s + 1) / 10 for s in range(10)]
    assert dit.lr_at(2) != vae.lr_at(2)  # 1e-3 * 0.3 vs 3e-3 / 10
