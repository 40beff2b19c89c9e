"""`mugv convert` end to end: official -> mugv -> megatron -> official reproduces the official weights."""

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.support.paths import ASSETS

GOLDEN = ASSETS / "dit_golden.safetensors"
pytestmark = pytest.mark.slow


def convert(src: Path, dst: Path, frm: str, to: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mugv.cli", "convert", str(src), str(dst), "--from", frm, "--to", to],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_convert_round_trip_through_every_format(tmp_path):
    official = {k.removeprefix("weights."): v for k, v in load_file(GOLDEN).items() if k.startswith("weights.")}
    src = tmp_path / "official.safetensors"
    save_file(official, src)
    convert(src, tmp_path / "mugv", "official", "mugv")
    convert(tmp_path / "mugv", tmp_path / "megatron", "mugv", "megatron")
    convert(tmp_path / "megatron", tmp_path / "back.safetensors", "megatron", "official")
    back = load_file(tmp_path / "back.safetensors")
    assert set(back) == set(official)
    for key, value in official.items():
        assert back[key].equal(value), key


def test_convert_rejects_unknown_format(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mugv.cli", "convert", "a", "b", "--from", "hf", "--to", "mugv"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "hf" in (proc.stdout + proc.stderr)


def test_convert_vae_official_to_mugv_and_back(tmp_path):
    """An official-layout VAE state dict (random, `small` sizes) -> a mugv VAE folder -> the same state dict."""
    import torch

    from mugv.models.vae import VideoVAE, get_vae_preset, load_vae

    torch.manual_seed(0)
    official = {k: v.clone() for k, v in VideoVAE(get_vae_preset("small")).state_dict().items()}
    torch.save(official, tmp_path / "vae.pt")
    for src, dst, frm, to in ((tmp_path / "vae.pt", tmp_path / "mugv", "official", "mugv"),
                              (tmp_path / "mugv", tmp_path / "back.safetensors", "mugv", "official")):
        proc = subprocess.run(
            [sys.executable, "-m", "mugv.cli", "convert", str(src), str(dst), "--from", frm, "--to", to,
             "--model", "vae", "--vae-preset", "small"], capture_output=True, text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load_vae(tmp_path / "mugv").cfg == get_vae_preset("small")
    back = load_file(tmp_path / "back.safetensors")
    assert set(back) == set(official) and all(back[k].equal(v) for k, v in official.items())
