"""Rectified flow: formulas against hand-computed values, the Euler sampler on analytic flows."""

import math

import pytest
import torch

from mugv.diffusion.config import DiffusionConfig
from mugv.diffusion.loss import (
    drop_captions,
    flow_matching_loss,
    per_sample_mse,
    sample_weights,
    velocity_channels,
)
from mugv.diffusion.sampler import guided_velocity, sample
from mugv.diffusion.schedule import (
    add_noise,
    sample_timesteps,
    sampling_timesteps,
    shift_ratio,
    shift_ratio_for_latent,
    timestep_transform,
    velocity_target,
)

SHAPE = (2, 3, 4, 2, 2)


# ---------------------------------------------------------------- schedule


def test_add_noise_at_t250_is_three_quarters_data():
    x0 = torch.full(SHAPE, 2.0)
    eps = torch.full(SHAPE, -1.0)
    x_t = add_noise(x0, eps, torch.tensor([250.0, 1000.0]))
    assert torch.allclose(x_t[0], torch.full(SHAPE[1:], 0.75 * 2.0 + 0.25 * -1.0))  # 1.25
    assert torch.allclose(x_t[1], eps[1])


def test_add_noise_keeps_conditioning_frames_clean():
    x0, eps = torch.full(SHAPE, 2.0), torch.full(SHAPE, -1.0)
    noised = torch.tensor([[False, True, True, True], [True, True, True, True]])
    x_t = add_noise(x0, eps, torch.tensor([500.0, 500.0]), noised_frames=noised)
    assert torch.equal(x_t[0, :, 0], x0[0, :, 0])
    assert torch.allclose(x_t[0, :, 1:], torch.full((3, 3, 2, 2), 0.5))
    assert torch.allclose(x_t[1], torch.full((3, 4, 2, 2), 0.5))


def test_velocity_points_from_noise_to_data():
    x0, eps = torch.tensor([3.0]), torch.tensor([1.0])
    assert velocity_target(x0, eps).item() == 2.0
    # moving x_t along v for the remaining time fraction lands on x0
    x_t = add_noise(x0.view(1, 1, 1, 1, 1), eps.view(1, 1, 1, 1, 1), torch.tensor([400.0]))
    assert x_t.item() + 2.0 * 0.4 == pytest.approx(3.0)


def test_shift_at_ratio_2_and_half_time():
    assert timestep_transform(0.5, 2.0, num_timesteps=1) == pytest.approx(2 * 0.5 / (1 + 0.5))
    assert timestep_transform(500.0, 2.0) == pytest.approx(666.6667, abs=1e-3)
    assert timestep_transform(1000.0, 7.0) == pytest.approx(1000.0)
    assert timestep_transform(0.0, 7.0) == 0.0
    assert timestep_transform(300.0, 1.0) == pytest.approx(300.0)


def test_shift_ratio_uses_pixels_and_latent_frames():
    assert shift_ratio(1024, 1024, 4) == pytest.approx(2.0 * 2.0)
    assert shift_ratio(512, 512, 1) == pytest.approx(1.0)
    # 720p, 5 s: 14 latent frames; sqrt(720*1280/512^2) = 1.875, sqrt(14) = 3.741657
    assert shift_ratio(720, 1280, 14) == pytest.approx(1.875 * 3.741657, rel=1e-6)
    assert shift_ratio_for_latent(14, 90, 160) == pytest.approx(shift_ratio(720, 1280, 14))


def test_sample_timesteps_is_seeded_logit_normal_then_shifted():
    gen = torch.Generator().manual_seed(3)
    raw = torch.sigmoid(torch.randn(5, generator=gen)) * 1000
    t = sample_timesteps(5, 3.0, generator=torch.Generator().manual_seed(3))
    expected = 3.0 * (raw / 1000) / (1 + 2.0 * (raw / 1000)) * 1000
    assert torch.allclose(t, expected)
    many = sample_timesteps(20000, 1.0, generator=torch.Generator().manual_seed(0))
    assert 0 < many.min() and many.max() < 1000
    assert many.median().item() == pytest.approx(500.0, abs=15.0)  # logit-normal(0,1) median is 0.5
    shifted = sample_timesteps(20000, 3.0, generator=torch.Generator().manual_seed(0))
    assert shifted.median().item() == pytest.approx(750.0, abs=15.0)  # 3*0.5/(1+2*0.5)


def test_sample_timesteps_per_sample_ratio():
    t = sample_timesteps(2, torch.tensor([1.0, 4.0]), generator=torch.Generator().manual_seed(1))
    raw = sample_timesteps(2, 1.0, generator=torch.Generator().manual_seed(1))
    assert t[0] == pytest.approx(raw[0].item())
    s = raw[1].item() / 1000
    assert t[1].item() == pytest.approx(4 * s / (1 + 3 * s) * 1000, rel=1e-5)


def test_sampling_timesteps_hand_values():
    assert sampling_timesteps(4, 1.0) == pytest.approx([1000.0, 750.0, 500.0, 250.0])
    assert sampling_timesteps(4, 2.0) == pytest.approx([1000.0, 2 * 0.75 / 1.75 * 1000, 2000 / 3, 400.0])
    with pytest.raises(ValueError):
        sampling_timesteps(0, 1.0)


# ---------------------------------------------------------------- loss


def _frames_target():
    target = torch.zeros(1, 2, 2, 1, 1)
    target[:, :, 0] = 1.0
    target[:, :, 1] = 2.0
    return target


def test_mse_over_noised_frames_only():
    pred = torch.zeros(1, 2, 2, 1, 1)
    assert per_sample_mse(pred, _frames_target()).item() == pytest.approx((1 + 4) / 2)
    noised = torch.tensor([[False, True]])
    assert per_sample_mse(pred, _frames_target(), noised).item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        per_sample_mse(pred, _frames_target(), torch.tensor([[False, False]]))


def test_loss_weights_images_and_uses_velocity_channels():
    x0 = torch.cat([torch.full((1, 2, 1, 1, 1), 2.0), torch.full((1, 2, 1, 1, 1), 1.0)])
    noise = torch.zeros_like(x0)
    output = torch.cat([torch.zeros_like(x0), torch.full_like(x0, 100.0)], dim=1)  # 2C, junk second half
    weights = sample_weights(torch.tensor([True, False]))
    assert weights.tolist() == pytest.approx([0.3, 1.0])
    # per-sample MSE: 4 (image) and 1 (video) -> (0.3 * 4 + 1 * 1) / 2
    assert flow_matching_loss(output, x0, noise, weights=weights).item() == pytest.approx(1.1)
    assert flow_matching_loss(output, x0, noise).item() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        velocity_channels(torch.zeros(1, 1, 1, 1, 1), 2)


def test_loss_has_gradient_towards_target():
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    pred = torch.zeros(SHAPE, requires_grad=True)
    flow_matching_loss(pred, x0, noise).backward()
    n = x0[0].numel()
    assert torch.allclose(pred.grad, -2 * (x0 - noise) / (n * SHAPE[0]))


def test_caption_dropout():
    y = torch.randn(4, 1, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0]] * 4)
    null_y = torch.randn(5, 3)
    y_all, m_all, dropped = drop_captions(y, mask, null_y, 1.0, torch.Generator().manual_seed(0))
    assert dropped.all()
    assert torch.equal(y_all, null_y.expand(4, 1, 5, 3))
    assert torch.equal(m_all, torch.ones_like(mask))
    y_none, m_none, dropped = drop_captions(y, mask, null_y, 0.0, torch.Generator().manual_seed(0))
    assert not dropped.any() and torch.equal(y_none, y) and torch.equal(m_none, mask)
    a = drop_captions(y, mask, null_y, 0.5, torch.Generator().manual_seed(7))
    b = drop_captions(y, mask, null_y, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    for i in range(4):
        assert torch.equal(a[0][i], null_y[None] if a[2][i] else y[i])
    big = drop_captions(torch.zeros(2000, 1, 1, 1), torch.ones(2000, 1), torch.ones(1, 1), 0.1,
                        torch.Generator().manual_seed(1))[2]
    assert big.float().mean().item() == pytest.approx(0.1, abs=0.03)


# ---------------------------------------------------------------- sampler


def _linear_flow_to(data: torch.Tensor):
    """The exact velocity of x_t = (1-s) data + s eps: v = (data - x_t) / s."""

    def model_fn(x, timestep, **_):
        s = (timestep / 1000).view(-1, 1, 1, 1, 1)
        return (data - x) / s

    return model_fn


@pytest.mark.parametrize("steps", [1, 3, 25])
def test_euler_on_linear_flow_reaches_data_exactly(steps):
    data = torch.linspace(-2, 2, math.prod(SHAPE)).view(SHAPE)
    cond = {"y": torch.zeros(2, 1, 3, 4)}
    out = sample(_linear_flow_to(data), SHAPE, cond, steps=steps, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, data, atol=1e-5)


def test_sampler_takes_velocity_from_2c_output():
    data = torch.ones(SHAPE)
    flow = _linear_flow_to(data)

    def two_c(x, timestep, **kw):
        return torch.cat([flow(x, timestep), torch.full_like(x, 9.0)], dim=1)

    out = sample(two_c, SHAPE, {"y": torch.zeros(2, 1)}, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, data, atol=1e-5)


def _text_dependent_flow():
    """Velocity towards a target set by the text input y ([B, 1]): the conditional data."""

    def model_fn(x, timestep, y, **_):
        s = (timestep / 1000).view(-1, 1, 1, 1, 1)
        return (y.view(-1, 1, 1, 1, 1) - x) / s

    return model_fn


def test_cfg_scale_one_equals_conditional_and_scale_extrapolates():
    cond, uncond = {"y": torch.full((2, 1), 3.0)}, {"y": torch.full((2, 1), -1.0)}
    seen = []

    def spy(x, timestep, y):
        seen.append((x.shape[0], timestep.shape[0]))
        return _text_dependent_flow()(x, timestep, y)

    only_cond = sample(spy, SHAPE, cond, None, steps=6, cfg_scale=1.0, generator=torch.Generator().manual_seed(1))
    with_cfg1 = sample(spy, SHAPE, cond, uncond, steps=6, cfg_scale=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(only_cond, with_cfg1, atol=1e-5)
    assert seen[0] == (2, 2) and seen[-1] == (4, 4)  # cond + uncond in one batch of 2B
    # the guided field points to uncond + s (cond - uncond) = -1 + 4 * 4 = 15, reached exactly
    guided = sample(_text_dependent_flow(), SHAPE, cond, uncond, cfg_scale=4.0, steps=6,
                    generator=torch.Generator().manual_seed(1))
    assert torch.allclose(guided, torch.full(SHAPE, 15.0), atol=1e-4)


def test_guided_velocity_hand_values():
    v_cond, v_uncond = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.5, 0.5]])
    assert guided_velocity(v_cond, v_uncond, 4.0).tolist() == [[2.5, 10.5]]
    rescaled = guided_velocity(v_cond, v_uncond, 4.0, guidance_rescale=1.0)
    assert rescaled.std().item() == pytest.approx(v_cond.std().item())
    half = guided_velocity(v_cond, v_uncond, 4.0, guidance_rescale=0.5)
    assert torch.allclose(half, 0.5 * rescaled + 0.5 * torch.tensor([[2.5, 10.5]]))


def test_i2v_clamp_keeps_conditioning_frames():
    cond_latents = torch.randn(SHAPE)
    noised = torch.tensor([[False, True, True, True], [False, False, True, True]])
    masks_seen = []

    def drifting(x, timestep, y, x_mask):
        masks_seen.append(x_mask)
        return torch.full_like(x, 5.0)  # would move every frame

    out = sample(drifting, SHAPE, {"y": torch.zeros(2, 1)}, {"y": torch.ones(2, 1)}, steps=4,
                 generator=torch.Generator().manual_seed(0), conditioning_latents=cond_latents,
                 noised_frames=noised)
    assert torch.equal(out[0, :, :1], cond_latents[0, :, :1])
    assert torch.equal(out[1, :, :2], cond_latents[1, :, :2])
    assert not torch.allclose(out[0, :, 1:], cond_latents[0, :, 1:])
    assert torch.equal(masks_seen[0], torch.cat([noised, noised]))
    with pytest.raises(ValueError):
        sample(drifting, SHAPE, {"y": torch.zeros(2, 1)}, conditioning_latents=cond_latents)


def test_sampler_is_deterministic_with_a_seed():
    def zero_velocity(x, timestep, **_):
        return torch.zeros_like(x)

    kw = dict(cond={"y": torch.zeros(2, 1)}, steps=3)
    a = sample(zero_velocity, SHAPE, generator=torch.Generator().manual_seed(11), **kw)
    b = sample(zero_velocity, SHAPE, generator=torch.Generator().manual_seed(11), **kw)
    c = sample(zero_velocity, SHAPE, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, torch.randn(SHAPE, generator=torch.Generator().manual_seed(11)))


def test_sampler_uses_the_shifted_schedule_and_shared_kwargs():
    seen_t, seen_fps = [], []

    def spy(x, timestep, y, fps):
        seen_t.append(timestep[0].item())
        seen_fps.append(fps)
        return torch.zeros_like(x)

    fps = torch.tensor([24.0, 24.0])
    sample(spy, SHAPE, {"y": torch.zeros(2, 1)}, {"y": torch.zeros(2, 1)}, steps=4, shift=2.0,
           model_kwargs={"fps": fps})
    assert seen_t == pytest.approx([1000.0, 2 * 0.75 / 1.75 * 1000, 2000 / 3, 400.0], rel=1e-5)
    assert seen_fps[0].tolist() == [24.0] * 4


# ---------------------------------------------------------------- config


def test_config_defaults_match_mugv_and_reject_unknown_keys():
    cfg = DiffusionConfig()
    assert (cfg.sampler.steps, cfg.sampler.cfg_scale, cfg.training.image_loss_weight) == (25, 4.0, 0.3)
    with pytest.raises(ValueError):
        DiffusionConfig.model_validate({"training": {"image_weight": 0.5}})
    with pytest.raises(ValueError):
        DiffusionConfig.model_validate({"sampler": {"steps": 0}})
