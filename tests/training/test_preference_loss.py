"""Flow-DPO and Diffusion-KTO: the formulas by hand, shared t and noise per pair, no gradient into the reference,
KTO's reference point averaged over DP=2."""

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from mugv.diffusion.schedule import add_noise, sample_timesteps
from mugv.training.preference_loss import (
    dpo_step_losses,
    flow_dpo_loss,
    kto_loss,
    kto_step_losses,
    shared_noise_and_timesteps,
    velocity_mse,
)


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# --------------------------------------------------------------------------- the formulas


def test_flow_dpo_loss_equals_a_hand_computation():
    policy_w, policy_l = [0.30, 0.50], [0.40, 0.20]
    ref_w, ref_l = [0.35, 0.45], [0.38, 0.25]
    beta = 20.0
    inner = [-beta / 2 * ((pw - rw) - (pl - rl)) for pw, rw, pl, rl in zip(policy_w, ref_w, policy_l, ref_l)]
    # pair 0: -10 * (-0.05 - 0.02) = 0.7; pair 1: -10 * (0.05 + 0.05) = -1.0
    expected = sum(-math.log(_sigmoid(v)) for v in inner) / 2

    t = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    loss, stats = flow_dpo_loss(t(policy_w), t(policy_l), t(ref_w), t(ref_l), beta)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert stats["implicit_accuracy"].item() == 0.5
    assert stats["inner"].item() == pytest.approx((0.7 - 1.0) / 2)
    assert stats["margin_winner"].item() == pytest.approx(0.0)  # (-0.05 + 0.05) / 2
    assert stats["margin_loser"].item() == pytest.approx((0.02 - 0.05) / 2)
    assert stats["policy_mse"].item() == pytest.approx(sum(policy_w + policy_l) / 4)
    assert stats["reference_mse"].item() == pytest.approx(sum(ref_w + ref_l) / 4)


def test_flow_dpo_gradient_lowers_the_winner_error_and_raises_the_loser_error():
    policy_w = torch.tensor([0.3], requires_grad=True)
    policy_l = torch.tensor([0.3], requires_grad=True)
    ref = torch.tensor([0.3], requires_grad=True)
    loss, _ = flow_dpo_loss(policy_w, policy_l, ref, ref, beta=10.0)
    loss.backward()
    # at equality: d/dw = -log sigmoid'(0) * (-beta/2) = 0.5 * 5; minimising pushes w's error down, l's up
    assert policy_w.grad.item() == pytest.approx(2.5) and policy_l.grad.item() == pytest.approx(-2.5)
    assert ref.grad is None  # the reference errors are constants


def test_kto_loss_equals_a_hand_computation_with_its_reference_point():
    policy = [0.20, 0.50, 0.30]
    ref = [0.26, 0.48, 0.35]
    desirable = [True, False, True]
    beta, lam_d, lam_u = 10.0, 1.0, 1.5
    reward = [r - p for p, r in zip(policy, ref)]  # 0.06, -0.02, 0.05
    z = max(0.0, sum(reward) / 3)  # 0.03
    terms = [(lam_d if d else lam_u) * (1 - _sigmoid((1 if d else -1) * beta * (g - z))) for g, d in zip(reward, desirable)]

    policy_t = torch.tensor(policy, dtype=torch.float64, requires_grad=True)
    loss, stats = kto_loss(policy_t, torch.tensor(ref, dtype=torch.float64), torch.tensor(desirable), beta, lam_d, lam_u)
    assert loss.item() == pytest.approx(sum(terms) / 3, rel=1e-12)
    assert stats["reference_point"].item() == pytest.approx(z)
    assert stats["reward_desirable"].item() == pytest.approx((0.06 + 0.05) / 2)
    assert stats["reward_undesirable"].item() == pytest.approx(-0.02)

    loss.backward()  # z is a constant: d loss / d policy_i = lambda * sign * beta * s(1 - s) / B, with s = sigmoid(...)
    for i, (g, d) in enumerate(zip(reward, desirable)):
        sign, lam = (1, lam_d) if d else (-1, lam_u)
        s = _sigmoid(sign * beta * (g - z))
        assert policy_t.grad[i].item() == pytest.approx(lam * sign * beta * s * (1 - s) / 3, rel=1e-9)


def test_kto_reference_point_is_clamped_at_zero_and_stats_skip_absent_labels():
    policy = torch.tensor([0.5, 0.6])
    ref = torch.tensor([0.4, 0.5])  # the policy is worse everywhere: mean reward -0.1 -> 0
    loss, stats = kto_loss(policy, ref, torch.tensor([True, True]), beta=5.0)
    assert stats["reference_point"].item() == 0.0
    assert "reward_undesirable" not in stats
    assert loss.item() == pytest.approx(1 - _sigmoid(5.0 * -0.1), rel=1e-6)


def test_velocity_mse_is_the_per_sample_mean_of_the_velocity_channels_error():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(2, 3, 2, 2, 2, generator=g)
    output = torch.randn(2, 6, 2, 2, 2, generator=g)  # velocity first, then 3 more channels
    expected = ((output[:, :3] - (x0 - noise)) ** 2).flatten(1).mean(1)
    assert torch.allclose(velocity_mse(output, x0, noise), expected)


def test_shared_noise_and_timesteps_draw_one_of_each_per_pair_reproducibly():
    noise, t = shared_noise_and_timesteps((3, 4, 2, 2, 2), torch.Generator().manual_seed(5), ratio=2.0)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(t, sample_timesteps(3, 2.0, g))
    assert torch.equal(noise, torch.randn(3, 4, 2, 2, 2, generator=g))
    again, t_again = shared_noise_and_timesteps((3, 4, 2, 2, 2), torch.Generator().manual_seed(5), ratio=2.0)
    assert torch.equal(again, noise) and torch.equal(t_again, t)


# --------------------------------------------------------------------------- one step, with recording models


class RecordingModel(nn.Module):
    """A model stub: output = scale * x_t (+ caption mean), velocity channels doubled; records its inputs."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.calls: list[dict] = []

    def forward(self, x_t, t, y, mask, fps=None, x_mask=None):
        self.calls.append({"x_t": x_t.detach().clone(), "t": t.clone(), "y": y.clone(), "mask": mask.clone(),
                           "fps": fps, "grad_enabled": torch.is_grad_enabled()})
        out = self.scale * x_t + y.mean(dim=(1, 2, 3))[:, None, None, None, None]
        return torch.cat([out, out], dim=1)


def _pair_batch(pairs: int = 3):
    g = torch.Generator().manual_seed(0)
    shape = (pairs, 4, 2, 2, 2)
    side = lambda: {"x0": torch.randn(shape, generator=g), "y": torch.randn(pairs, 1, 5, 8, generator=g),  # noqa: E731
                    "mask": torch.ones(pairs, 5, dtype=torch.long), "fps": torch.full((pairs,), 24.0)}
    winner, loser = side(), side()
    loser["y"], loser["mask"] = winner["y"], winner["mask"]  # a pair shares its prompt
    noise, t = shared_noise_and_timesteps(shape, torch.Generator().manual_seed(1))
    return winner, loser, noise, t


def test_dpo_step_shares_t_and_noise_within_a_pair_and_batches_each_model_once():
    winner, loser, noise, t = _pair_batch()
    policy, reference = RecordingModel(0.9), RecordingModel(1.1).requires_grad_(False)
    loss, stats = dpo_step_losses(policy, reference, winner, loser, t, noise, beta=50.0)
    loss.backward()

    assert len(policy.calls) == 1 and len(reference.calls) == 1  # one batched forward of 2P each
    call = policy.calls[0]
    assert call["grad_enabled"] and not reference.calls[0]["grad_enabled"]
    assert torch.equal(call["t"], torch.cat([t, t]))
    expected_x_t = torch.cat([add_noise(winner["x0"], noise, t), add_noise(loser["x0"], noise, t)])
    assert torch.equal(call["x_t"], expected_x_t)  # winner i and loser i: the same noise at the same t
    assert torch.equal(reference.calls[0]["x_t"], expected_x_t)
    assert torch.equal(call["fps"], torch.full((6,), 24.0))

    def errors(model):
        out = model(expected_x_t, call["t"], call["y"], call["mask"])
        return velocity_mse(out, torch.cat([winner["x0"], loser["x0"]]), torch.cat([noise, noise]))

    with torch.no_grad():
        policy_mse, ref_mse = errors(policy), errors(reference)
    expected, _ = flow_dpo_loss(*policy_mse.chunk(2), *ref_mse.chunk(2), 50.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert policy.scale.grad is not None and reference.scale.grad is None
    assert stats["reference_mse"].item() == pytest.approx(ref_mse.mean().item(), rel=1e-6)


def test_kto_step_runs_each_model_once_and_gives_the_reference_no_gradient():
    winner, _, noise, t = _pair_batch()
    desirable = torch.tensor([True, False, True])
    policy, reference = RecordingModel(0.9), RecordingModel(1.1)  # not even frozen: no_grad must protect it
    loss, stats = kto_step_losses(policy, reference, winner, desirable, t, noise, beta=20.0, lambda_undesirable=2.0)
    loss.backward()
    assert len(policy.calls) == 1 and len(reference.calls) == 1 and not reference.calls[0]["grad_enabled"]
    x_t = add_noise(winner["x0"], noise, t)
    with torch.no_grad():
        policy_mse = velocity_mse(policy(x_t, t, winner["y"], winner["mask"]), winner["x0"], noise)
        ref_mse = velocity_mse(reference(x_t, t, winner["y"], winner["mask"]), winner["x0"], noise)
    expected, _ = kto_loss(policy_mse, ref_mse, desirable, 20.0, 1.0, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert policy.scale.grad is not None and reference.scale.grad is None


# --------------------------------------------------------------------------- with a LoRA policy as its own reference


@pytest.fixture(scope="module")
def lora_policy(process_group):
    from mugv.models.dit.config import get_preset
    from mugv.models.dit.model import build_model
    from mugv.models.dit.spec import local_block_spec
    from mugv.training.config import LoRAConfig
    from mugv.training.lora import apply_lora, lora_modules

    torch.manual_seed(0)
    base = build_model(get_preset("tiny"), local_block_spec()).requires_grad_(False)
    torch.manual_seed(0)
    policy = build_model(get_preset("tiny"), local_block_spec())
    apply_lora(policy, LoRAConfig(enabled=True, rank=4, alpha=8.0))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in lora_modules(policy).values():
            module.lora_B.normal_(0.0, 0.05, generator=g)
    return policy, base


def _latent_pairs():
    g = torch.Generator().manual_seed(3)
    shape = (2, 24, 1, 4, 4)
    side = lambda: {"x0": torch.randn(shape, generator=g), "y": torch.randn(2, 1, 6, 384, generator=g),  # noqa: E731
                    "mask": torch.ones(2, 6, dtype=torch.long), "fps": torch.tensor([24.0])}
    winner, loser = side(), side()
    noise, t = shared_noise_and_timesteps(shape, torch.Generator().manual_seed(4))
    return winner, loser, noise, t


def test_dpo_with_lora_uses_the_frozen_base_as_reference_and_leaves_it_without_grad(lora_policy):
    from mugv.training.lora import lora_disabled, lora_parameters

    policy, base = lora_policy
    winner, loser, noise, t = _latent_pairs()
    policy.zero_grad(set_to_none=True)
    loss, stats = dpo_step_losses(policy, None, winner, loser, t, noise, beta=100.0)
    loss.backward()
    assert all(p.grad is None for n, p in policy.named_parameters() if "lora_" not in n)
    assert all(p.grad is not None for p in lora_parameters(policy))

    separate, separate_stats = dpo_step_losses(policy, base, winner, loser, t, noise, beta=100.0)
    assert separate.item() == pytest.approx(loss.item(), rel=1e-5)  # the disabled adapters are the base model
    assert separate_stats["reference_mse"].item() == pytest.approx(stats["reference_mse"].item(), rel=1e-6)
    assert stats["policy_mse"].item() != pytest.approx(stats["reference_mse"].item(), rel=1e-6)
    with lora_disabled(policy), pytest.raises(ValueError, match="switched off"):
        dpo_step_losses(policy, None, winner, loser, t, noise, beta=100.0)


def test_kto_with_lora_reference_gives_the_base_no_grad(lora_policy):
    from mugv.training.lora import lora_parameters

    policy, _ = lora_policy
    winner, _, noise, t = _latent_pairs()
    policy.zero_grad(set_to_none=True)
    loss, _ = kto_step_losses(policy, None, winner, torch.tensor([True, False]), t, noise, beta=100.0)
    loss.backward()
    assert all(p.grad is None for n, p in policy.named_parameters() if "lora_" not in n)
    assert any(p.grad.abs().sum() > 0 for p in lora_parameters(policy))


# --------------------------------------------------------------------------- KTO under DP=2

DP = 2
LOCAL_POLICY = ([0.20, 0.50], [0.30, 0.10, 0.40])  # different local batch sizes
LOCAL_REF = ([0.26, 0.48], [0.33, 0.13, 0.41])
LOCAL_DESIRABLE = ([True, False], [True, True, False])


def _dp_worker(rank: int, workdir: str, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=DP)
    policy = torch.tensor(LOCAL_POLICY[rank], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor(LOCAL_REF[rank], dtype=torch.float64)
    loss, stats = kto_loss(policy, ref, torch.tensor(LOCAL_DESIRABLE[rank]), 10.0, group=dist.group.WORLD)
    loss.backward()
    worse = torch.tensor(LOCAL_REF[rank], dtype=torch.float64) + 0.1  # every reward negative
    _, clamped = kto_loss(worse, ref, torch.tensor(LOCAL_DESIRABLE[rank]), 10.0, group=dist.group.WORLD)
    save_file({"reference_point": stats["reference_point"].reshape(1), "loss": loss.detach().reshape(1),
               "grad": policy.grad, "clamped": clamped["reference_point"].reshape(1)},
              str(Path(workdir) / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_kto_reference_point_is_the_global_mean_over_data_parallel_ranks(tmp_path):
    mp.spawn(_dp_worker, args=(str(tmp_path), _free_port()), nprocs=DP, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(DP)]
    rewards = [r - p for rank in range(DP) for p, r in zip(LOCAL_POLICY[rank], LOCAL_REF[rank])]
    global_mean = sum(rewards) / len(rewards)  # over all 5 samples, not the mean of the 2 local means
    assert global_mean > 0
    for rank, result in enumerate(ranks):
        assert result["reference_point"].item() == pytest.approx(global_mean, rel=1e-12)
        assert result["clamped"].item() == 0.0
        # detached: each rank's gradient is its local formula with the global z as a constant
        local, _ = kto_loss(torch.tensor(LOCAL_POLICY[rank], dtype=torch.float64, requires_grad=True),
                            torch.tensor(LOCAL_REF[rank], dtype=torch.float64), torch.tensor(LOCAL_DESIRABLE[rank]), 10.0)
        n = len(LOCAL_POLICY[rank])
        for i, (p, r, d) in enumerate(zip(LOCAL_POLICY[rank], LOCAL_REF[rank], LOCAL_DESIRABLE[rank])):
            sign = 1 if d else -1
            s = _sigmoid(sign * 10.0 * ((r - p) - global_mean))
            assert result["grad"][i].item() == pytest.approx(sign * 10.0 * s * (1 - s) / n, rel=1e-9)
        assert local.item() != pytest.approx(result["loss"].item())  # a local-only reference point differs
