"""VideoGenerator split into sample_latents + decode: the same seed renders the same bytes as the one-piece render did."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mugv.data.video_io import write_video
from mugv.diffusion.sampler import sample
from mugv.inference.generate import VideoGenerator
from mugv.models.vae import latent_frames
from tests.preference.tiny_release import make_release

PROMPT = "a red circle moves quickly from left to right on a blue striped background"


@torch.no_grad()
def render_in_one_piece(gen: VideoGenerator, prompt: str, image: np.ndarray | None, frames: int, height: int,
                        width: int, steps: int, cfg: float, seed: int, fps: float) -> np.ndarray:
    """The frames `VideoGenerator.render` produced before the split (its body, frozen here as the reference)."""
    features, mask = gen.encoder.encode([prompt])
    cond = {"y": features.float()[:, None], "mask": mask}
    decoder, stats = gen.decoder, gen.stats
    spatial = decoder.cfg.spatial_factor
    shape = (1, len(stats.std), latent_frames(frames), height // spatial, width // spatial)
    conditioning = noised = None
    if image is not None:
        pixels = torch.from_numpy(image).float().permute(2, 0, 1) / 127.5 - 1.0
        clip = pixels[None, :, None].expand(1, 3, decoder.cfg.temporal_factor, height, width)
        conditioning = torch.zeros(shape)
        conditioning[:, :, :1] = stats.normalize(decoder.encode(clip))
        noised = torch.ones(1, shape[2], dtype=torch.bool)
        noised[:, 0] = False
    z = sample(gen.model, shape, cond, gen.uncond, steps=steps, cfg_scale=cfg,
               generator=torch.Generator().manual_seed(seed), shift=None, model_kwargs={"fps": torch.tensor([fps])},
               conditioning_latents=conditioning, noised_frames=noised)
    video = decoder.decode(stats.denormalize(z), num_frames=frames)[0]
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return VideoGenerator(make_release(tmp_path_factory.mktemp("split")))


@pytest.mark.parametrize("with_image", [False, True], ids=["t2v", "i2v"])
def test_render_is_sample_latents_then_decode_bit_for_bit(generator, with_image, tmp_path):
    size = dict(frames=9, height=32, width=48)
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8) if with_image else None
    before = render_in_one_piece(generator, PROMPT, image, steps=3, cfg=4.0, seed=7, fps=8.0, **size)
    write_video(tmp_path / "before.mp4", list(before), 8.0)

    after = generator.render(PROMPT, tmp_path / "after.mp4", image=image, steps=3, cfg=4.0, seed=7, fps=8.0, **size)
    assert after.read_bytes() == (tmp_path / "before.mp4").read_bytes()

    sampled = generator.sample_latents(PROMPT, steps=3, cfg=4.0, seed=7, fps=8.0, image=image, **size)
    assert np.array_equal(generator.decode(sampled.z, 9), before)
    assert sampled.z.shape == (24, 2, 4, 6) and sampled.y.shape == (1, 16, 384) and sampled.mask.shape == (16,)
    assert sampled.mask.dtype == torch.int64 and not sampled.y[0, sampled.mask == 0].any()  # zero beyond the prompt
    other = generator.sample_latents(PROMPT, steps=3, cfg=4.0, seed=8, fps=8.0, image=image, **size)
    assert not torch.equal(other.z, sampled.z)


def test_encode_pixels_gives_the_standardised_latent_of_a_decoded_video(generator):
    z = generator.sample_latents(PROMPT, frames=9, height=32, width=32, steps=2, seed=0, fps=8.0).z
    frames = generator.decode(z, 9)
    pixels = torch.from_numpy(frames).float().permute(3, 0, 1, 2) / 127.5 - 1.0
    encoded = generator.encode_pixels(pixels)
    assert encoded.shape == z.shape and encoded.dtype == torch.float32
    torch.testing.assert_close(generator.stats.denormalize(encoded[None]), generator.decoder.encode(pixels[None]))


def test_a_seed_sampled_in_a_batch_matches_it_sampled_alone(generator):
    size = dict(frames=9, height=32, width=48, steps=3, cfg=4.0, fps=8.0)
    batch = generator.sample_seeds(PROMPT, [7, 3, 11], **size)
    for seed, sampled in zip([7, 3, 11], batch):
        alone = generator.sample_latents(PROMPT, seed=seed, **size)
        torch.testing.assert_close(sampled.z, alone.z, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batch[0].z, batch[1].z)  # each seed its own noise
