"""The plain-PyTorch 2D Encoder/Decoder against diffusers': same keys, same initial weights per seed, same outputs and grads."""

import pytest
import torch

from mugv.models.vae import blocks2d
from mugv.models.vae.config import SPATIAL_LEVELS, get_vae_preset

diffusers_vae = pytest.importorskip("diffusers.models.autoencoders.vae")


def build(module, cfg, seed: int = 0):
    """(encoder, decoder) of `module` (blocks2d or diffusers) for VAE config `cfg`, built after seeding."""
    common = dict(block_out_channels=cfg.spatial_block_out_channels, layers_per_block=cfg.spatial_layers_per_block,
                  norm_num_groups=cfg.spatial_norm_groups, mid_block_add_attention=cfg.spatial_mid_attention)
    extra_enc, extra_dec = {}, {}
    if module is diffusers_vae:
        extra_enc = dict(down_block_types=("DownEncoderBlock2D",) * SPATIAL_LEVELS, act_fn="silu")
        extra_dec = dict(up_block_types=("UpDecoderBlock2D",) * SPATIAL_LEVELS, act_fn="silu")
    torch.manual_seed(seed)
    enc = module.Encoder(in_channels=3, out_channels=cfg.spatial_bottleneck_channels, double_z=True,
                         **common, **extra_enc)
    dec = module.Decoder(in_channels=cfg.spatial_bottleneck_channels, out_channels=3, **common, **extra_dec)
    return enc, dec


def run_cut(enc, dec, images):
    """SpatialAutoencoder's cut: encoder to its mid block, decoder from its mid block."""
    h = enc.conv_in(images)
    for block in enc.down_blocks:
        h = block(h)
    z = enc.mid_block(h)
    h = dec.mid_block(z)
    for block in dec.up_blocks:
        h = block(h)
    return z, dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))


@pytest.mark.parametrize("preset,size", [("tiny", 32), ("small", 32), ("full", 8)])
def test_same_keys_init_outputs_and_grads_as_diffusers(preset, size):
    cfg = get_vae_preset(preset)
    ours, theirs = build(blocks2d, cfg), build(diffusers_vae, cfg)
    for a, b in zip(ours, theirs):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)  # names and order (optimizer state follows parameter order)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same construction order: same initial weights
        assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    torch.manual_seed(1)
    images = torch.randn(2, 3, size, size)
    worst = {}
    for mode in ("eval", "train") if preset != "full" else ("eval",):
        outs = []
        for enc, dec in (ours, theirs):
            enc.train(mode == "train"), dec.train(mode == "train")
            x = images.clone().requires_grad_(True)
            z, y = run_cut(enc, dec, x)
            (y.square().mean() + z.mean()).backward()
            grads = [p.grad.clone() for p in (*enc.parameters(), *dec.parameters()) if p.grad is not None]
            enc.zero_grad(), dec.zero_grad()
            outs.append((z.detach(), y.detach(), x.grad, grads))
        (z1, y1, g1, p1), (z2, y2, g2, p2) = outs
        worst[mode] = max((z1 - z2).abs().max(), (y1 - y2).abs().max(), (g1 - g2).abs().max(),
                          *((a - b).abs().max() for a, b in zip(p1, p2)))
        assert len(p1) == len(p2)
    assert max(worst.values()) <= 1e-5, worst
    with torch.no_grad():  # the full forward of each, conv_out included
        for a, b in zip(ours, theirs):
            a.eval(), b.eval()
        assert (ours[0](images) - theirs[0](images)).abs().max() <= 1e-5
        z = torch.randn(1, cfg.spatial_bottleneck_channels, size // 8, size // 8)
        assert (ours[1](z) - theirs[1](z)).abs().max() <= 1e-5
