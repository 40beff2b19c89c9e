"""Converter between the released MUG-V `vae.pt` state dict and VideoVAE (same key names and shapes)."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file

from mugv import storage
from mugv.models.vae.config import VAEConfig, get_vae_preset
from mugv.models.vae.model import VideoVAE, load_vae, save_vae

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers around the whole model


def _strip_wrappers(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _layout_errors(expected: dict[str, torch.Size], given: dict[str, torch.Tensor]) -> list[str]:
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(given[k].shape) != tuple(expected[k]))
    errors = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            errors.append(f"{len(keys)} {label} keys, e.g. {keys[:5]}")
    if wrong:
        errors.append(
            f"{len(wrong)} shape mismatches, e.g. "
            + ", ".join(f"{k}: {tuple(given[k].shape)} vs {tuple(expected[k])}" for k in wrong[:5])
        )
    return errors


def from_official(state_dict: dict[str, torch.Tensor], cfg: VAEConfig | None = None) -> VideoVAE:
    """A VideoVAE holding an official-layout state dict (default: the `full` preset), in float32.

    Keys must match exactly (after dropping a DDP/compile wrapper prefix); a mismatch raises
    ValueError naming the missing, unexpected and mis-shaped keys.
    """
    cfg = cfg or get_vae_preset("full")
    vae = VideoVAE(cfg)
    expected = {k: v.shape for k, v in vae.state_dict().items()}
    given = {_strip_wrappers(k): v for k, v in state_dict.items()}
    errors = _layout_errors(expected, given)
    if errors:
        raise ValueError("state dict is not an official MUG-V VAE layout for this config: " + "; ".join(errors))
    vae.load_state_dict({k: v.float() for k, v in given.items()}, strict=True)
    return vae


def to_official(vae: VideoVAE) -> dict[str, torch.Tensor]:
    """The state dict in the official layout (cloned tensors), loadable by the released inference code."""
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def load_official(path: str | os.PathLike, cfg: VAEConfig | None = None) -> VideoVAE:
    """Read a released `vae.pt` (torch.load with weights_only=True) or an official-layout .safetensors
    (local or s3://) into a VideoVAE."""
    with storage.local_copy(path) as local:
        if str(path).endswith(".safetensors"):
            state = load_file(str(local))
        else:
            state = torch.load(local, map_location="cpu", weights_only=True)
    return from_official(state, cfg).eval()


def convert_vae(src: str | os.PathLike, dst: str | os.PathLike, from_: str, to: str, preset: str = "full") -> None:
    """`mugv convert --model vae`: official (.pt / .safetensors, VAE `preset` sizes) <-> a mugv VAE folder."""
    if (from_, to) == ("official", "mugv"):
        save_vae(load_official(src, get_vae_preset(preset)), dst)
    elif (from_, to) == ("mugv", "official"):
        with storage.atomic_path(dst) as tmp:
            save_file({k: v.contiguous() for k, v in to_official(load_vae(src)).items()}, str(tmp))
    else:
        raise ValueError(f"the VAE converts official <-> mugv, not {from_} -> {to}")
