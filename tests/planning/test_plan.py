"""`mugv plan`: latent shape, tokens, FLOPs and parameter count of a preset at a clip size."""

import pytest

from mugv.models.dit.model import count_parameters
from mugv.models.dit.config import get_preset
from mugv.planning.flops import dit_flops
from mugv.planning.plan import format_plan, plan, vae_latent_shape


def test_latent_shape_follows_the_vae_rules():
    assert vae_latent_shape(105, 720, 1280) == (24, 14, 90, 160)  # 5 s 720p
    assert vae_latent_shape(1, 512, 512) == (24, 1, 64, 64)  # an image
    assert vae_latent_shape(17, 64, 96) == (24, 3, 8, 12)  # 17 % 8 == 1: first frame alone + 2
    assert vae_latent_shape(16, 64, 96) == (24, 2, 8, 12)
    assert vae_latent_shape(105, 832, 1110) == (24, 14, 104, 138)


def test_plan_720p_5s_on_the_10b_preset():
    report = plan("10B", 105, 720, 1280)
    assert report.sample.video_tokens == 50_400
    assert report.sample.tokens == 50_402
    expected = dit_flops(get_preset("10B"), 50_402, 300)
    assert report.compute.forward_flops == expected.forward
    assert report.compute.training_flops == expected.training()
    assert report.compute.training_flops_recompute == expected.training(recompute=True)
    assert report.parameters == pytest.approx(10.7e9, rel=0.03)  # MUGV.md: ~16 h^2 per layer, 10.7B


def test_format_plan_prints_every_section():
    report = plan("tiny", 17, 64, 96, text_len=32)
    text = format_plan(report)
    assert f"parameters: {count_parameters('tiny')}" in text.splitlines()
    assert "latent shape: 24x3x8x12" in text
    assert "tokens per sample: 74 (72 + 2 start/end)" in text  # 3 * 4 * 6 patch tokens
    assert f"FLOPs per sample, forward: {report.compute.forward_flops:.4e}" in text
    assert "FLOPs per sample, training:" in text


def test_plan_rejects_text_longer_than_the_model_takes():
    with pytest.raises(ValueError):
        plan("tiny", 1, 64, 64, text_len=301)
