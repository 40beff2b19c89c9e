"""A self-contained, pickle-free release of a trained stage: what `mugv generate` and the registry need.

Layout of a release folder:
    dit/model.safetensors, dit/config.json      the DiT (its EMA weights when it has them), mugv format
    vae/vae.safetensors, vae/vae_config.json    the VAE that made the latents
    latents/latent_stats.json                    per-channel stats that undo the latent normalisation
    latents/text_null.safetensors                null-caption and negative-prompt features (CFG)
    release.json                                 text encoder, training stage, source checkpoint
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from mugv.latents.shards import STATS, TEXT_NULL, LatentStats, load_text_null
from mugv.models.dit.config import DiTConfig
from mugv.models.dit.reference import ReferenceMUGDiT
from mugv.models.text.config import TextEncoderConfig

MANIFEST = "release.json"
VAE_FILES = ("vae.safetensors", "vae_config.json")
DIT_FILES = ("model.safetensors", "config.json")  # convert.WEIGHTS_FILE, CONFIG_FILE, without importing Megatron


def is_release(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class NonFiniteWeightsError(ValueError):
    """A model holds NaN or infinite values: it is neither released nor registered."""


def check_finite(tensors: Mapping[str, object], where: str) -> None:
    """NonFiniteWeightsError naming the first floating-point tensor of `tensors` that holds a NaN or an inf."""
    for name, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise NonFiniteWeightsError(f"{where}: tensor {name} holds {count} non-finite values (NaN/inf)")


def check_release_finite(path: str | Path) -> None:
    """Every weight file of a release folder (DiT, VAE) is finite; else NonFiniteWeightsError naming the tensor."""
    path = Path(path)
    for weights in (path / "dit" / DIT_FILES[0], path / "vae" / VAE_FILES[0]):
        check_finite(load_file(str(weights)), str(weights))


def export_release(
    checkpoint: Path, vae_dir: Path, latents_dir: Path, text: TextEncoderConfig, out: Path, use_ema: bool = True,
    time_shift: dict | None = None,
) -> Path:
    """Write a release folder for a pretraining checkpoint; return it. `time_shift`: {"resolution": bool,
    "base_pixels": int}, the shift the model was trained with (`diffusion.training`), which its sampler must use
    (None: the schedule's default). A model with a non-finite weight is refused (NonFiniteWeightsError)."""
    from mugv.models.dit.convert import save_mugv
    from mugv.inference.dit_loader import load_dit

    out = Path(out)
    dit = load_dit(checkpoint, use_ema)
    check_finite(dit.state_dict(), f"checkpoint {checkpoint} ({'EMA' if use_ema else 'model'} weights)")
    if out.exists():
        shutil.rmtree(out)
    save_mugv(dit, out / "dit")
    (out / "vae").mkdir(parents=True)
    for name in VAE_FILES:
        shutil.copy2(Path(vae_dir) / name, out / "vae" / name)
    (out / "latents").mkdir()
    for name in (STATS, TEXT_NULL):
        shutil.copy2(Path(latents_dir) / name, out / "latents" / name)
    manifest = {"text_encoder": text.model_dump(mode="json"), "source_checkpoint": str(checkpoint), "ema": use_ema,
                "time_shift": time_shift}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


@dataclass
class Release:
    """A loaded release: the DiT, the VAE folder, latent stats, CFG text features, text encoder config."""

    dit: ReferenceMUGDiT
    vae_dir: Path
    stats: LatentStats
    text_null: dict
    text: TextEncoderConfig
    time_shift: dict | None = None  # {"resolution": bool, "base_pixels": int} as trained (None: the default)


def load_plain_dit(directory: str | Path) -> ReferenceMUGDiT:
    """The DiT of a mugv-format folder as the plain-PyTorch reference model (one process, no Megatron), in eval mode."""
    weights, config = DIT_FILES
    with torch.device("meta"):  # no random init: every parameter comes from the file
        model = ReferenceMUGDiT(DiTConfig.model_validate_json((Path(directory) / config).read_text()))
    model.load_state_dict(load_file(str(Path(directory) / weights)), strict=True, assign=True)
    return model.eval()


def load_release(path: str | Path) -> Release:
    """A release folder, its DiT as the plain-PyTorch reference model."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    return Release(
        dit=load_plain_dit(path / "dit"),
        vae_dir=path / "vae",
        stats=LatentStats.load(path / "latents" / STATS),
        text_null=load_text_null(path / "latents" / TEXT_NULL),
        text=TextEncoderConfig.model_validate(manifest["text_encoder"]),
        time_shift=manifest.get("time_shift"),
    )
