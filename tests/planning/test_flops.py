"""Analytic DiT FLOPs: hand-computed values, and agreement with torch's FLOP counter on the real model."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mugv.models.dit.model import build_model
from mugv.models.dit.config import DiTConfig, get_preset, video_tokens
from mugv.planning.flops import dit_flops, mfu


pytestmark = pytest.mark.usefixtures("process_group")


def test_hand_computed_small_config():
    cfg = DiTConfig(depth=1, hidden_size=12, num_heads=2, in_channels=2, out_channels=4,
                    caption_channels=8, timestep_frequency_dim=4)
    n, length = 10, 3  # 8 video tokens + start/end, 3 text tokens
    f = dit_flops(cfg, n, length)
    # self-attention: QKV 2*10*12*36 = 8640, proj 2*10*12*12 = 2880, QK^T and AV 2*10*10*12 each = 4800
    assert f.self_attention == 8640 + 2880 + 2 * 2400
    # cross: Q 2880, KV 2*3*12*24 = 1728, scores + AV 2*(2*10*3*12) = 1440, proj 2880
    assert f.cross_attention == 2880 + 1728 + 1440 + 2880
    assert f.mlp == 2 * (2 * 10 * 12 * 48)  # fc1 + fc2
    assert f.patch_embed == 2 * 8 * (2 * 4) * 12  # in_channels * patch volume (1*2*2)
    assert f.final_layer == 2 * 10 * 12 * (4 * 4)  # all tokens: start/end are dropped after it
    assert f.caption_embed == 2 * 3 * 8 * 12 + 2 * 3 * 12 * 12
    # timestep MLP (4->12->12) for t and t=0, fps MLP, t_block 12->72 for t and t=0
    timestep_mlp = 2 * 4 * 12 + 2 * 12 * 12
    assert f.conditioning == 3 * timestep_mlp + 2 * (2 * 12 * 72)
    assert f.forward == (f.self_attention + f.cross_attention + f.mlp + f.patch_embed + f.final_layer
                         + f.caption_embed + f.conditioning)
    # no data gradient into the latents, the text features or the sinusoids
    assert f.no_input_grad == f.patch_embed + 2 * 3 * 8 * 12 + 3 * (2 * 4 * 12)
    assert f.backward == 2 * f.forward - f.no_input_grad
    assert f.training() == f.forward + f.backward
    assert f.training(recompute=True) == f.training() + f.layers


def test_recompute_is_about_four_times_forward_at_scale():
    cfg = get_preset("10B")
    tokens = video_tokens(14, 90, 160, cfg.patch_size) + 2
    assert tokens == 50_402
    f = dit_flops(cfg, tokens, 300)
    assert f.training() / f.forward == pytest.approx(3.0, abs=0.01)
    assert f.training(recompute=True) / f.forward == pytest.approx(4.0, abs=0.02)
    assert f.self_attention > f.mlp  # 50k tokens: the N^2 term dominates


def test_video_tokens_pad_to_whole_patches():
    assert video_tokens(14, 90, 160, (1, 2, 2)) == 14 * 45 * 80
    assert video_tokens(3, 7, 9, (1, 2, 2)) == 3 * 4 * 5


def test_mfu():
    assert mfu(4e14, 1e15) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        mfu(1.0, 0.0)


@pytest.mark.parametrize("grid,text_len", [((3, 8, 8), 20), ((2, 12, 10), 300)])
def test_matches_torch_flop_counter_on_the_model(grid, text_len):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    frames, height, width = grid
    x = torch.randn(2, cfg.in_channels, frames, height, width)
    y = torch.randn(2, 1, text_len, cfg.caption_channels)
    # the math backend runs attention as bmm ops the counter sees (CPU flash attention is uncounted)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x, torch.tensor([100.0, 700.0]), y)
        counted_forward = counter.get_total_flops()
        out.sum().backward()
    counted_backward = counter.get_total_flops() - counted_forward
    tokens = video_tokens(frames, height, width, cfg.patch_size) + 2
    f = dit_flops(cfg, tokens, text_len)
    # batch of 2; the analytic count is meant to match every matmul the model runs
    assert counted_forward / 2 == pytest.approx(f.forward, rel=1e-3)
    assert counted_backward / 2 == pytest.approx(f.backward, rel=1e-3)
