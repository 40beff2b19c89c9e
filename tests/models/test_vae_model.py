"""VideoVAE: shapes and compression per preset, MUG-V chunking rules, official layout, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from einops import rearrange

from tests.support.paths import ASSETS
from mugv.models.vae import VAEConfig, VideoVAE, frames_for_latents, get_vae_preset, latent_frames, load_vae, save_vae
from mugv.models.vae.config import PRESETS
from mugv.models.vae.convert import from_official, load_official, to_official
from mugv.models.vae.shortcut import channel_average, channel_repeat

MANIFEST = ASSETS / "vae_full_official_keys.json"


@pytest.fixture(scope="module")
def tiny() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(get_vae_preset("tiny")).eval()


def frames(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * 2 - 1


def test_frame_latent_arithmetic():
    assert latent_frames(105) == 14 and frames_for_latents(14) == 105
    assert latent_frames(1) == 1 and frames_for_latents(1) == 1
    assert latent_frames(16) == 2 and latent_frames(17) == 3 and latent_frames(13) == 2
    with pytest.raises(ValueError):
        latent_frames(0)


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"full"}))
def test_cpu_preset_shapes_and_compression(preset):
    vae = VideoVAE(get_vae_preset(preset)).eval()
    assert vae.compression == (8, 8, 8) and vae.latent_channels == 24
    x = frames(2, 3, 17, 16, 24)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 24, 3, 2, 3)
        assert vae.decode(z).shape == x.shape  # 8 * 3 - 7 = 17


def test_full_preset_on_meta_device_matches_mugv_shapes():
    with torch.device("meta"):
        vae = VideoVAE(get_vae_preset("full"))
        x_z = vae.spatial_vae.encode(torch.empty(1, 3, 105, 720, 1280))
        assert x_z.shape == (1, 512, 105, 90, 160)  # the 512-channel interface at 1/8
        mean, logvar = vae.encode_spatial_map(x_z)
        assert mean.shape == logvar.shape == (1, 24, 14, 90, 160)
        assert vae.decode(mean).shape == (1, 3, 105, 720, 1280)
    n_params = sum(p.numel() for p in vae.parameters())
    assert 400e6 < n_params < 420e6


def test_full_state_dict_matches_official_layout_exactly():
    expected = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        state = VideoVAE(get_vae_preset("full")).state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == expected


def test_first_frame_rule_makes_latent_zero_an_image_latent(tiny):
    x = frames(1, 3, 9, 16, 16)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape[2] == 2
        # chunk 0 is frame 0 repeated 8 times: the same latent as encoding that image alone
        torch.testing.assert_close(z[:, :, :1], tiny.encode(x[:, :, :1]))
        torch.testing.assert_close(z[:, :, :1], tiny.encode(x[:, :, :1].repeat(1, 1, 8, 1, 1)))
        # chunks are independent: latent 1 sees frames 1..8 only
        torch.testing.assert_close(z[:, :, 1:], tiny.encode(x[:, :, 1:9]))


def test_105_frames_give_14_latents_and_decode_back(tiny):
    x = frames(1, 3, 105, 8, 8)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape == (1, 24, 14, 1, 1)
        assert tiny.decode(z).shape == x.shape
        assert tiny.decode(z[:, :, 1:], num_frames=104).shape[2] == 104


def test_decode_runs_in_independent_micro_chunks(tiny):
    z = frames(1, 24, 8, 2, 2)
    step = tiny.cfg.decode_chunk_latents
    with torch.no_grad():
        whole = tiny.decode_spatial_map(z, num_frames=64)
        first = tiny.decode_spatial_map(z[:, :, :step], num_frames=8 * step)
    torch.testing.assert_close(whole[:, :, : 8 * step], first)


def test_other_lengths_pad_at_the_front_and_decode_inverts_it(tiny):
    x = frames(1, 3, 13, 16, 16)
    with torch.no_grad():
        z = tiny.encode(x)
        assert z.shape[2] == 2
        assert tiny.decode(z, num_frames=13).shape[2] == 13
        with pytest.raises(ValueError, match="do not decode"):
            tiny.decode(z, num_frames=17)


def test_sampling_uses_the_generator(tiny):
    x = frames(1, 3, 8, 16, 16)
    with torch.no_grad():
        a = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        b = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
        c = tiny.encode(x, sample=True, generator=torch.Generator().manual_seed(2))
        mean, logvar = tiny.encode_distribution(x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert torch.allclose(tiny.encode(x), mean) and logvar.shape == mean.shape


@pytest.mark.parametrize("bad", [torch.rand(1, 3, 8, 16, 16) * 255, torch.randint(0, 255, (1, 3, 8, 16, 16))])
def test_frames_must_be_float_in_minus_one_one(tiny, bad):
    with pytest.raises((ValueError, TypeError)):
        tiny.encode(bad)


def test_real_clip_shape_round_trip(tiny):
    x = frames(1, 3, 17, 96, 128)
    with torch.no_grad():
        z = tiny.encode(x)
        recon = tiny.decode(z)
    assert z.shape == (1, 24, 3, 12, 16)
    assert recon.shape == x.shape and torch.isfinite(recon).all()


def test_official_layout_round_trip(tiny, tmp_path):
    torch.manual_seed(3)
    official = {k: torch.randn_like(v) for k, v in to_official(tiny).items()}
    vae = from_official(official, tiny.cfg).eval()
    back = to_official(vae)
    assert back.keys() == official.keys()
    assert all(torch.equal(back[k], official[k]) for k in official)
    torch.save({f"module.{k}": v.half() for k, v in official.items()}, tmp_path / "vae.pt")
    again = load_official(tmp_path / "vae.pt", tiny.cfg)
    x = frames(1, 3, 9, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.encode(x), vae.encode(x), atol=5e-2, rtol=5e-2)


def test_from_official_names_the_bad_keys(tiny):
    official = to_official(tiny)
    official.pop("logvar")
    official["extra.weight"] = torch.zeros(1)
    official["temporal_vae.quant_conv.conv.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="missing.*logvar.*unexpected.*extra.weight.*shape mismatches"):
        from_official(official, tiny.cfg)


def test_save_and_load(tiny, tmp_path):
    weights, config = save_vae(tiny, tmp_path / "vae")
    assert Path(weights).name == "vae.safetensors" and Path(config).name == "vae_config.json"
    for path in (tmp_path / "vae", weights):
        loaded = load_vae(path)
        assert loaded.cfg == tiny.cfg
        x = frames(1, 3, 9, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode(x), tiny.encode(x))


def test_config_rejects_unknown_keys_and_bad_levels():
    with pytest.raises(ValueError):
        VAEConfig(unknown=1)
    with pytest.raises(ValueError, match="levels"):
        VAEConfig(temporal_channel_multipliers=(1, 2, 4))
    with pytest.raises(ValueError, match="unknown VAE preset"):
        get_vae_preset("huge")


def test_channel_average_and_repeat_are_a_box_autoencoder():
    z = frames(2, 24, 3, 4, 5)
    torch.testing.assert_close(channel_average(channel_repeat(z, 192), 24), z)
    x = frames(2, 24, 8, 4, 5)
    folded = channel_average(rearrange(x, "n c t h w -> n (c t) 1 h w"), 24)  # as the temporal encoder folds a chunk
    torch.testing.assert_close(folded, x.mean(2, keepdim=True))
    uneven = channel_average(frames(1, 7, 2), 3)  # groups overlap when widths do not divide
    assert uneven.shape == (1, 3, 2)


def test_temporal_shortcut_starts_as_temporal_mean_and_keeps_the_layout():
    plain = VideoVAE(get_vae_preset("tiny").model_copy(update={"temporal_shortcut": False}))
    cfg = get_vae_preset("tiny").model_copy(update={"temporal_shortcut": True})
    vae = VideoVAE(cfg).eval()
    assert vae.state_dict().keys() == plain.state_dict().keys()  # parameter-free: released weights still load
    temporal = vae.temporal_vae
    for conv in (temporal.encoder.conv2.conv, temporal.decoder.conv_out.conv):
        torch.nn.init.zeros_(conv.weight), torch.nn.init.zeros_(conv.bias)
    torch.nn.init.zeros_(temporal.quant_conv.conv.bias[: cfg.latent_channels])
    # with the learned branches silenced the stage is exactly "average each chunk (or half-chunk), repeat it"
    steps = frames(1, cfg.interface_channels, 1, 3, 4).repeat_interleave(8, dim=2)  # constant within each chunk
    x_z = torch.cat([frames(1, cfg.interface_channels, 1, 3, 4, seed=1), steps], dim=2)  # image latent + 1 chunk
    with torch.no_grad():
        mean, _ = vae.encode_spatial_map(x_z)
        torch.testing.assert_close(mean, channel_repeat(x_z[:, :, :2], cfg.latent_channels), atol=1e-6, rtol=0)
        torch.testing.assert_close(vae.decode_spatial_map(mean, num_frames=9), x_z, atol=1e-6, rtol=0)
