"""A tiny release folder built without training or Megatron: a seeded plain-PyTorch DiT, an untrained tiny VAE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from mugv.inference.release import DIT_FILES, MANIFEST
from mugv.latents.shards import INDEX, STATS, TEXT_NULL
from mugv.models.dit.config import get_preset
from mugv.models.dit.reference import ReferenceMUGDiT
from mugv.models.text.config import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from tests.support.latent_set import TEXT_LEN, make_latent_set


def make_release(root: Path, seed: int = 0) -> Path:
    """root/release: a release whose DiT has PyTorch's default initialisation under `seed`; its latent set at
    root/latents (the stats and null-caption features the release carries)."""
    latents = make_latent_set(root / "latents")
    out = root / "release"
    torch.manual_seed(seed)
    dit = ReferenceMUGDiT(get_preset("tiny"))
    weights, config = DIT_FILES
    (out / "dit").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(out / "dit" / weights))
    (out / "dit" / config).write_text(dit.cfg.model_dump_json(indent=2))
    save_vae(VideoVAE(get_vae_preset("tiny")), out / "vae")
    (out / "latents").mkdir()
    for name in (STATS, TEXT_NULL):
        shutil.copy2(latents / name, out / "latents" / name)
    manifest = {"text_encoder": TextEncoderConfig(max_length=TEXT_LEN).model_dump(mode="json"),
                "source_checkpoint": "tests", "ema": False, "time_shift": None}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def set_captions(latents: Path, captions: list[str]) -> None:
    """Give the latent set's index rows these captions, in turn (the shards and their checksums are untouched)."""
    index = pd.read_parquet(latents / INDEX)
    index["caption"] = [captions[i % len(captions)] for i in range(len(index))]
    index.to_parquet(latents / INDEX, index=False)
