"""VideoVAE: the two stages together, with MUG-V's chunking rules, posterior sampling and (de)serialisation."""

from __future__ import annotations

import json
import math
import os

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import nn

from mugv import storage
from mugv.models.vae.config import VAEConfig
from mugv.models.vae.spatial import SpatialVAE
from mugv.models.vae.temporal import CHUNK_FRAMES, TemporalVAE

WEIGHTS_NAME = "vae.safetensors"
CONFIG_NAME = "vae_config.json"
LOGVAR_CLAMP = (-30.0, 20.0)
RANGE_TOLERANCE = 1e-3


def latent_frames(num_frames: int) -> int:
    """Latent frames for `num_frames` video frames: ceil(T / 8) (105 -> 14, 1 -> 1, 16 -> 2)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return math.ceil(num_frames / CHUNK_FRAMES)


def frames_for_latents(num_latents: int) -> int:
    """Video frames MUG-V decodes from `num_latents` latents: one image latent + 8 per other (14 -> 105)."""
    if num_latents < 1:
        raise ValueError(f"num_latents must be >= 1, got {num_latents}")
    return CHUNK_FRAMES * (num_latents - 1) + 1


def check_pixel_range(x: torch.Tensor) -> None:
    """Frames enter the VAE as floats in [-1, 1]; fail loudly on uint8-scaled or [0, 1]-shifted input."""
    if not torch.is_floating_point(x):
        raise TypeError(f"VAE input must be a float tensor in [-1, 1], got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(f"VAE input must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]")


def to_chunk_multiple(x_z: torch.Tensor) -> torch.Tensor:
    """Make the time axis a multiple of 8, as MUG-V does before its independent 8-frame chunks.

    T % 8 == 1: the first frame is repeated 7 more times, so latent 0 encodes a still image
    (a lone image becomes 8 copies). Any other remainder is filled with zeros at the front.
    """
    t = x_z.shape[2]
    rem = t % CHUNK_FRAMES
    if rem == 0:
        return x_z
    if rem == 1:
        head = x_z[:, :, :1].expand(-1, -1, CHUNK_FRAMES - 1, -1, -1)
    else:
        head = x_z.new_zeros(*x_z.shape[:2], CHUNK_FRAMES - rem, *x_z.shape[3:])
    return torch.cat([head, x_z], dim=2)


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed over all but the batch axis: [B]."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class VideoVAE(nn.Module):
    """MUG-V video VAE: 8x8 spatial (2D autoencoder) then 8x temporal (3D-conv autoencoder), 24 channels.

    Frames are floats in [-1, 1], [B, 3, T, H, W] with H, W multiples of 8. Latents are RAW
    (not standardised): the `shift`/`scale` buffers carry per-channel statistics that ship with a
    checkpoint (the released one has MUG-V's), but encode/decode never apply them — the encode
    stage standardises once, with its stored stats. `logvar` is the official trainer's learned
    NLL log-variance, kept only so the released state dict loads strictly; nothing here uses it.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.spatial_vae = SpatialVAE(cfg)
        self.temporal_vae = TemporalVAE(cfg)
        stats_shape = (1, cfg.latent_channels, 1, 1, 1)
        self.register_buffer("shift", torch.zeros(stats_shape))
        self.register_buffer("scale", torch.ones(stats_shape))
        self.logvar = nn.Parameter(torch.zeros(()), requires_grad=False)

    # ------------------------------------------------------------------ facts
    @property
    def compression(self) -> tuple[int, int, int]:
        """(time, height, width) downsampling factors."""
        return (self.cfg.temporal_factor, self.cfg.spatial_factor, self.cfg.spatial_factor)

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @staticmethod
    def latent_frames(num_frames: int) -> int:
        return latent_frames(num_frames)

    @staticmethod
    def frames_for_latents(num_latents: int) -> int:
        return frames_for_latents(num_latents)

    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) [C_lat] stored with the checkpoint (zeros/ones unless set)."""
        return self.shift.flatten().clone(), self.scale.flatten().clone()

    # ------------------------------------------------------------------ encode
    def encode_spatial_map(self, x_z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled spatial map [B, C_i, T, h, w] -> posterior (mean, logvar) [B, C_lat, ceil(T/8), h, w]."""
        batch = x_z.shape[0]
        chunks = rearrange(to_chunk_multiple(x_z), "b c (n t) h w -> (b n) c t h w", t=CHUNK_FRAMES)
        step = self.cfg.encode_chunk_batch
        moments = torch.cat([self.temporal_vae.moments(chunks[i : i + step]) for i in range(0, chunks.shape[0], step)])
        moments = rearrange(moments, "(b n) c 1 h w -> b c n h w", b=batch)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_CLAMP)

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, 3, T, H, W] in [-1, 1] -> posterior (mean, logvar), each [B, C_lat, ceil(T/8), H/8, W/8]."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected frames [B, 3, T, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"height and width must be multiples of 8, got {x.shape[-2]}x{x.shape[-1]}")
        check_pixel_range(x)
        return self.encode_spatial_map(self.spatial_vae.encode(x))

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames [B, 3, T, H, W] in [-1, 1] -> raw latents [B, C_lat, ceil(T/8), H/8, W/8].

        The posterior mean, or with `sample` a draw mean + std * eps (eps from `generator`).
        T % 8 == 1 (e.g. 105 -> 14) makes latent 0 an image latent; T == 1 encodes one image.
        """
        mean, logvar = self.encode_distribution(x)
        if not sample:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    # ------------------------------------------------------------------ decode
    def decode_spatial_map(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Latents [B, C_lat, n, h, w] -> scaled spatial map [B, C_i, num_frames, h, w].

        Latents are decoded in micro-chunks of `decode_chunk_latents` (48 frames in MUG-V) to
        bound memory; the frames encode padded at the front (repeats or zeros) are dropped.
        """
        n = z.shape[2]
        num_frames = frames_for_latents(n) if num_frames is None else num_frames
        if latent_frames(num_frames) != n:
            raise ValueError(f"{n} latents do not decode to {num_frames} frames (they encode {latent_frames(num_frames)})")
        step = self.cfg.decode_chunk_latents
        x_z = torch.cat([self.temporal_vae.decode(z[:, :, i : i + step]) for i in range(0, n, step)], dim=2)
        return x_z[:, :, CHUNK_FRAMES * n - num_frames :]

    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Raw latents [B, C_lat, n, h, w] -> frames [B, 3, T, 8h, 8w], approximately in [-1, 1].

        T defaults to MUG-V's 8n - 7 (latent 0 is an image latent: 14 -> 105, 1 -> one image);
        pass `num_frames` to invert an encode of any other length (e.g. 16 frames -> 2 latents).
        """
        if z.ndim != 5 or z.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"expected latents [B, {self.cfg.latent_channels}, n, h, w], got {tuple(z.shape)}")
        return self.spatial_vae.decode(self.decode_spatial_map(z, num_frames))

    def forward(
        self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct frames: (recon [B, 3, T, H, W], posterior mean, posterior logvar)."""
        mean, logvar = self.encode_distribution(x)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z, num_frames=x.shape[2]), mean, logvar


def _weights_and_config(path: str | os.PathLike) -> tuple[str, str]:
    """(weights, config) locations: inside folder `path`, or beside `path` when it is a .safetensors file."""
    p = str(path).rstrip("/")
    folder = p.rsplit("/", 1)[0] if p.endswith(".safetensors") else p
    weights = p if p.endswith(".safetensors") else f"{folder}/{WEIGHTS_NAME}"
    return weights, f"{folder}/{CONFIG_NAME}"


def save_vae(vae: VideoVAE, path: str | os.PathLike) -> tuple[str, str]:
    """Write `vae.safetensors` + `vae_config.json` into the folder `path` (local or s3://); return both paths."""
    weights, config = _weights_and_config(path)
    state = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    with storage.atomic_path(weights) as tmp:
        save_file(state, str(tmp))
    storage.write_text(config, json.dumps(vae.cfg.model_dump(mode="json"), indent=2))
    return weights, config


def load_vae(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> VideoVAE:
    """Read a VAE written by save_vae: a folder, or its `vae.safetensors` with the config beside it."""
    weights, config = _weights_and_config(path)
    cfg = VAEConfig.model_validate_json(storage.read_text(config))
    vae = VideoVAE(cfg)
    with storage.local_copy(weights) as local:
        state = load_file(str(local), device=str(map_location))
    vae.load_state_dict(state, strict=True)
    return vae.to(map_location).eval()

