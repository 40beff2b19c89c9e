"""Preference-optimisation objectives on per-sample flow errors: Flow-DPO on pairs, Diffusion-KTO on single labels.

Both compare the policy's velocity error with a frozen reference's on the same noised input.
Lower error is better, so the implicit reward of a sample is (reference error - policy error).
The reference is a frozen model, or (reference=None) the policy with its LoRA adapters switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mugv.diffusion.loss import per_sample_mse, velocity_channels
from mugv.diffusion.schedule import add_noise, sample_timesteps

Stats = dict[str, torch.Tensor]


def velocity_mse(
    model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, channels: int | None = None,
    noised_frames: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample [B] MSE of the predicted velocity (first `channels` output channels, default x0's) against
    x0 - noise, averaged over every element of the sample (over its noised frames when `noised_frames`
    [B, F] is given): the pretraining loss, per sample."""
    pred = velocity_channels(model_output, x0.shape[1] if channels is None else channels)
    return per_sample_mse(pred, x0 - noise, noised_frames)


def flow_dpo_loss(
    policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float
) -> tuple[torch.Tensor, Stats]:
    """Flow-DPO on pairs: -log sigmoid(-beta/2 * ((policy_w - ref_w) - (policy_l - ref_l))), mean over pairs.

    Inputs are per-sample velocity MSEs [P] of winner (w) and loser (l) at a shared timestep and noise;
    the reference errors are treated as constants. The policy wins a pair when its error drops more
    (or rises less) on the winner than on the loser, relative to the reference.

    beta depends on how the errors are reduced. Ours is the mean over the elements of a sample; at
    that reduction Diffusion-DPO (Wallace et al., SD1.5/SDXL) uses beta = 5000, flow_grpo's Flow-DPO
    uses 100; SimpleTuner sums over elements and uses 1 (a sum is the mean times the element
    count, so a summed beta of 1 is a mean beta of that count).

    Stats (detached scalars): implicit accuracy (share of pairs with a positive inner term), mean
    inner term, winner and loser margins (policy - reference error), policy and reference mean errors.
    """
    ref_w, ref_l = ref_w.detach(), ref_l.detach()
    margin_w, margin_l = policy_w - ref_w, policy_l - ref_l
    inner = -0.5 * beta * (margin_w - margin_l)
    loss = -F.logsigmoid(inner).mean()
    with torch.no_grad():
        stats = {
            "implicit_accuracy": (inner > 0).float().mean(),
            "inner": inner.mean(),
            "margin_winner": margin_w.mean(),
            "margin_loser": margin_l.mean(),
            "policy_mse": torch.cat([policy_w, policy_l]).mean(),
            "reference_mse": torch.cat([ref_w, ref_l]).mean(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def kto_reference_point(reward: torch.Tensor, group=None) -> torch.Tensor:
    """KTO's reference point: the mean implicit reward of the global batch, clamped at 0, detached.

    Summed with its sample count over the data-parallel `group` (when given and initialised), so
    ranks with different local batch sizes all get the mean over every sample.
    """
    dtype = torch.promote_types(reward.dtype, torch.float32)  # at least float32 for the sum
    totals = torch.stack([reward.detach().to(dtype).sum(), torch.tensor(float(reward.numel()), dtype=dtype, device=reward.device)])
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(totals, group=group)
    return (totals[0] / totals[1]).clamp(min=0.0).to(reward.dtype)


def kto_loss(
    policy_mse: torch.Tensor, ref_mse: torch.Tensor, desirable: torch.Tensor, beta: float,
    lambda_desirable: float = 1.0, lambda_undesirable: float = 1.0, group=None,
) -> tuple[torch.Tensor, Stats]:
    """Diffusion-KTO on labelled samples: lambda_y * (1 - sigmoid(sign_y * beta * (g - z))), mean over the batch.

    g = ref_mse - policy_mse is the implicit reward [B] (positive when the policy fits the sample better
    than the reference); `desirable` [B] bool gives sign_y = +1 (desirable) or -1 (undesirable) and the
    weight lambda_y; z = `kto_reference_point(g, group)` (global batch mean over the data-parallel group,
    clamped at 0, no gradient). beta follows the errors' reduction as in `flow_dpo_loss`.

    Stats (detached scalars): the reference point, the mean reward of the desirable and of the
    undesirable samples (each only when the local batch has such samples).
    """
    desirable = desirable.to(device=policy_mse.device, dtype=torch.bool)
    reward = ref_mse.detach() - policy_mse
    ref_point = kto_reference_point(reward, group)
    sign = desirable.float() * 2 - 1
    weight = torch.where(desirable, torch.full_like(sign, lambda_desirable), torch.full_like(sign, lambda_undesirable))
    loss = (weight * (1 - torch.sigmoid(sign * beta * (reward - ref_point)))).mean()
    with torch.no_grad():
        stats = {"reference_point": ref_point}
        for name, chosen in (("reward_desirable", desirable), ("reward_undesirable", ~desirable)):
            if bool(chosen.any()):
                stats[name] = reward[chosen].mean()
    return loss, {k: v.detach() for k, v in stats.items()}


def shared_noise_and_timesteps(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, ratio: float | torch.Tensor = 1.0,
    loc: float = 0.0, scale: float = 1.0, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [P, C, F, H, W], t [P]) for P pairs of latents of `shape`: one timestep (MUG-V's
    logit-normal(loc, scale), shifted by `ratio`, see `sample_timesteps`) and one noise per pair, to be
    used for both its winner and its loser. Drawn on `generator`'s device, timesteps first."""
    gen_device = generator.device if generator is not None else "cpu"
    t = sample_timesteps(shape[0], ratio, generator, loc, scale, device=gen_device)
    noise = torch.randn(tuple(shape), generator=generator, device=gen_device)
    return noise.to(device), t.to(device)


# --------------------------------------------------------------------------- one step's forward passes


def _joined(winner: Mapping[str, torch.Tensor], loser: Mapping[str, torch.Tensor], key: str) -> torch.Tensor | None:
    """winner[key] then loser[key] as one batch (None when neither has it); fps [1] or [P] on either side."""
    first, second = winner.get(key), loser.get(key)
    if first is None and second is None:
        return None
    if first is None or second is None:
        raise ValueError(f"winner and loser must both have {key!r} or neither")
    if key == "fps":
        if first.numel() == 1 and second.numel() == 1 and torch.equal(first, second):
            return first.reshape(1)
        pairs = winner["x0"].shape[0]
        first, second = first.reshape(-1).expand(pairs), second.reshape(-1).expand(pairs)
    return torch.cat([first, second])


def _reference_forward(policy: nn.Module, reference: nn.Module | None) -> Callable[..., torch.Tensor]:
    """The reference's forward under no_grad: a frozen model, or (None or the policy itself) the policy with
    its LoRA adapters switched off."""
    from mugv.training.lora import lora_disabled, lora_modules

    base_of_policy = reference is None or reference is policy
    if base_of_policy and not lora_modules(policy):
        raise ValueError("the reference is the policy's base, but the policy has no LoRA adapters to switch off")

    def forward(*args, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            if not base_of_policy:
                return reference(*args, **kwargs)
            with lora_disabled(policy):
                return policy(*args, **kwargs)

    return forward


def _check_adapters_on(policy: nn.Module) -> None:
    from mugv.training.lora import lora_modules

    modules = lora_modules(policy).values()
    if modules and all(m.disabled for m in modules):
        raise ValueError("the policy's LoRA adapters are switched off (called inside lora_disabled?): "
                         "pass reference=None to use the policy's base as the reference")


def _errors(model_call, x0, noise, t, y, mask, fps, x_mask) -> torch.Tensor:
    x_t = add_noise(x0, noise, t, x_mask)
    kwargs = {"fps": fps} if x_mask is None else {"fps": fps, "x_mask": x_mask}
    return velocity_mse(model_call(x_t, t, y, mask, **kwargs), x0, noise, noised_frames=x_mask)


def dpo_step_losses(
    policy: nn.Module, reference: nn.Module | None, winner: Mapping[str, torch.Tensor],
    loser: Mapping[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor, beta: float,
) -> tuple[torch.Tensor, Stats]:
    """Flow-DPO loss of P pairs, both models run once on the 2P winners-then-losers batch.

    `winner` and `loser` each hold x0 [P, C, F, H, W], y [P, 1, L, D], mask [P, L] and optionally
    fps ([P] or [1]) and x_mask ([P, F] bool, False for clean I2V conditioning frames); pair i's winner
    and loser share timestep t[i] and noise[i] ([P], [P, C, F, H, W]). The policy runs with autograd;
    the reference runs under no_grad: a frozen model, or with `reference=None` (or the policy itself)
    the policy with its LoRA adapters switched off; do not call this inside `lora_disabled`. Call it
    inside the trainer's autocast and backward the returned loss.
    """
    _check_adapters_on(policy)
    x0 = torch.cat([winner["x0"], loser["x0"]])
    args = (torch.cat([noise, noise]), torch.cat([t, t]), _joined(winner, loser, "y"), _joined(winner, loser, "mask"),
            _joined(winner, loser, "fps"), _joined(winner, loser, "x_mask"))
    ref_mse = _errors(_reference_forward(policy, reference), x0, *args)
    policy_mse = _errors(policy, x0, *args)
    policy_w, policy_l = policy_mse.chunk(2)
    ref_w, ref_l = ref_mse.chunk(2)
    return flow_dpo_loss(policy_w, policy_l, ref_w, ref_l, beta)


def kto_step_losses(
    policy: nn.Module, reference: nn.Module | None, batch: Mapping[str, torch.Tensor], desirable: torch.Tensor,
    t: torch.Tensor, noise: torch.Tensor, beta: float, lambda_desirable: float = 1.0,
    lambda_undesirable: float = 1.0, group=None,
) -> tuple[torch.Tensor, Stats]:
    """Diffusion-KTO loss of B labelled samples: `batch` holds x0, y, mask, optionally fps and x_mask (as in
    `dpo_step_losses`), `desirable` [B] bool. One policy forward with autograd, one reference forward
    under no_grad (same `reference` rules as `dpo_step_losses`) on the same noised batch; the reference
    point is averaged over the data-parallel `group` (see `kto_loss`). Call it inside the trainer's autocast."""
    _check_adapters_on(policy)
    args = (noise, t, batch["y"], batch["mask"], batch.get("fps"), batch.get("x_mask"))
    ref_mse = _errors(_reference_forward(policy, reference), batch["x0"], *args)
    policy_mse = _errors(policy, batch["x0"], *args)
    return kto_loss(policy_mse, ref_mse, desirable, beta, lambda_desirable, lambda_undesirable, group)
