"""What `mugv convert` writes loads into generation and into pretraining as `--init-from`."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mugv.data.video_io import read_frames
from mugv.inference.dit_loader import load_dit
from mugv.models.dit.config import get_preset
from mugv.models.dit.convert import (
    build_model,
    convert_checkpoint,
    converted_format,
    load_converted_into,
    to_official,
)
from tests.support.paths import ASSETS

GOLDEN = ASSETS / "dit_golden.safetensors"


pytestmark = pytest.mark.usefixtures("process_group")


def convert_all(official: dict[str, torch.Tensor], root) -> dict[str, object]:
    """official file -> `--to mugv` folder -> `--to megatron` folder, as `mugv convert` writes them."""
    save_file(official, root / "official.safetensors")
    convert_checkpoint(root / "official.safetensors", root / "mugv", "official", "mugv")
    convert_checkpoint(root / "mugv", root / "megatron", "mugv", "megatron")
    return {"mugv": root / "mugv", "megatron": root / "megatron"}


def test_converted_golden_checkpoint_loads_for_generation(tmp_path):
    official = {k.removeprefix("weights."): v for k, v in load_file(str(GOLDEN)).items() if k.startswith("weights.")}
    for fmt, folder in convert_all(official, tmp_path).items():
        assert converted_format(folder) == fmt
        loaded = to_official(load_dit(folder))  # the loader `mugv generate` uses for a non-release checkpoint
        assert set(loaded) == set(official) and all(loaded[k].equal(v) for k, v in official.items()), fmt


def test_converted_golden_checkpoint_of_other_sizes_is_refused_as_init(tmp_path):
    official = {k.removeprefix("weights."): v for k, v in load_file(str(GOLDEN)).items() if k.startswith("weights.")}
    folders = convert_all(official, tmp_path)
    tiny = build_model(get_preset("tiny"), perform_initialization=False)
    with pytest.raises(ValueError, match="hidden_size: 48 there, 96 here"):
        load_converted_into(tiny, folders["megatron"])


@pytest.mark.slow
def test_convert_then_generate_and_init_from(tmp_path):
    """An official checkpoint of the tiny preset, converted to both formats: each generates a video (with --vae
    and --latents) and starts a pretraining stage from its weights."""
    from mugv.inference.generate import generate
    from mugv.models.text.model import TextEncoderConfig
    from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
    from mugv.training.bucket_sampler import BatchingConfig
    from mugv.training.config import CurriculumStage, PretrainConfig
    from mugv.training.dit_trainer import run_pretrain
    from tests.support.latent_set import TEXT_LEN, make_latent_set

    torch.manual_seed(3)
    official = to_official(build_model(get_preset("tiny"), perform_initialization=True))
    folders = convert_all(official, tmp_path)
    latents = make_latent_set(tmp_path / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    for fmt, folder in folders.items():
        video = generate(folder, "a red ball", tmp_path / f"{fmt}.mp4", vae=tmp_path / "vae", latents_dir=latents,
                         text=TextEncoderConfig(max_length=TEXT_LEN), frames=9, height=48, width=64, steps=2)
        assert read_frames(video).shape == (9, 48, 64, 3)

    cfg = PretrainConfig(peak_flops=1e10, heldout={"samples": 2}, stages=[
        CurriculumStage(name="s", steps=1, batching=BatchingConfig(tokens_per_batch=150))])
    start = {name: run_pretrain(latents, "s", init, tmp_path / f"run-{name}", cfg, progress=False)["heldout_loss_start"]
             for name, init in (("scratch", None), *folders.items())}
    assert start["mugv"] == pytest.approx(start["megatron"], rel=1e-6)  # the same weights from either folder
    assert start["mugv"] != pytest.approx(start["scratch"], rel=1e-3)
