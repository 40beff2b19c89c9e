"""generate(): a pretraining checkpoint + tiny VAE + MiniLM -> an H.264 file of the asked size (T2V and I2V)."""

import numpy as np
import pytest

from mugv.data.video_io import read_frames
from mugv.models.text.model import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from mugv.training.config import CurriculumStage, PretrainConfig
from mugv.inference.generate import generate
from mugv.training.bucket_sampler import BatchingConfig
from mugv.training.dit_trainer import run_pretrain
from tests.support.latent_set import TEXT_LEN, make_latent_set


@pytest.mark.slow
def test_text_and_image_to_video(tmp_path):
    latents = make_latent_set(tmp_path / "latents")
    cfg = PretrainConfig(peak_flops=1e10, heldout={"samples": 0}, stages=[
        CurriculumStage(name="s", steps=2, batching=BatchingConfig(tokens_per_batch=150))])
    run_pretrain(latents, "s", None, tmp_path / "run", cfg, progress=False)
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    common = dict(vae=tmp_path / "vae", latents_dir=latents, text=TextEncoderConfig(max_length=TEXT_LEN),
                  frames=9, height=48, width=64, steps=2, seed=1)

    t2v = generate(tmp_path / "run", "a red ball", tmp_path / "t2v.mp4", **common)
    assert read_frames(t2v).shape == (9, 48, 64, 3)

    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    i2v = generate(tmp_path / "run", "a red ball", tmp_path / "i2v.mp4", image=image, **common)
    assert read_frames(i2v).shape == (9, 48, 64, 3)
    assert not np.array_equal(read_frames(i2v), read_frames(t2v))
