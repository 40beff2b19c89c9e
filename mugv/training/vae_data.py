"""Kept clips for VAE training: the qc table, a held-out split, random crops and whole-clip eval tensors."""

from __future__ import annotations

import hashlib

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mugv.data.names import QC_TABLE
from mugv.data.video_io import read_frames
from mugv.models.vae.config import VAEConfig
from mugv.models.vae.model import frames_for_latents, latent_frames

SPATIAL_FACTOR = VAEConfig().spatial_factor  # pixels per latent/map position along H and W (8: every preset)

QC_COLUMNS = ("clip_id", "path", "fps", "width", "height", "num_frames", "keep")


@dataclass(frozen=True)
class Clip:
    """One kept clip: where it is and what it holds."""

    clip_id: str
    path: Path
    fps: float
    width: int
    height: int
    num_frames: int


def kept_clips(clips_dir: Path, qc_dir: Path) -> list[Clip]:
    """Rows of `qc_dir/qc.parquet` with keep=True, sorted by clip_id; paths resolved under clips_dir."""
    table = pd.read_parquet(Path(qc_dir) / QC_TABLE)
    missing = [c for c in QC_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"qc.parquet lacks columns {missing}")
    table = table[table["keep"].astype(bool)].sort_values("clip_id")
    return [
        Clip(str(r.clip_id), Path(clips_dir) / str(r.path), float(r.fps), int(r.width), int(r.height), int(r.num_frames))
        for r in table.itertuples()
    ]


def clips_fingerprint(clips: list[Clip]) -> str:
    """sha256 over the clips' ids, shapes and file bytes: equal digests, same training data."""
    digest = hashlib.sha256()
    for clip in clips:
        digest.update(f"{clip.clip_id}:{clip.fps}:{clip.width}x{clip.height}x{clip.num_frames}:".encode())
        digest.update(hashlib.sha256(clip.path.read_bytes()).digest())
    return digest.hexdigest()


def split_holdout(clips: list[Clip], holdout: int, seed: int) -> tuple[list[Clip], list[Clip]]:
    """(train, held-out): `holdout` clips drawn with `seed`; at least one clip always stays for training."""
    if len(clips) < 2 and holdout > 0:
        raise ValueError(f"need at least 2 kept clips to hold {holdout} out, found {len(clips)}")
    n = min(holdout, len(clips) - 1)
    order = np.random.default_rng(seed).permutation(len(clips))
    held = set(order[:n].tolist())
    return [c for i, c in enumerate(clips) if i not in held], [c for i, c in enumerate(clips) if i in held]


def to_unit_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [T, H, W, 3] -> float [3, T, H, W] in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float [3, T, H, W] in [-1, 1] -> uint8 frames [T, H, W, 3]."""
    return video.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(1, 2, 3, 0).numpy()


def _cover(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [3, T, H, W] up (keeping aspect) until it covers height x width; unchanged if it already does."""
    h, w = video.shape[-2:]
    scale = max(height / h, width / w)
    if scale <= 1:
        return video
    size = (max(height, round(h * scale)), max(width, round(w * scale)))
    return F.interpolate(video, size=size, mode="bilinear", align_corners=False).clamp(-1, 1)


class ClipSampler:
    """Random training windows: `frames` consecutive frames of a random clip, randomly cropped to `crop` (H, W).

    Decoded clips stay in a least-recently-used cache bounded by `cache_mb` of uint8 frames.
    """

    def __init__(
        self, clips: list[Clip], frames: int, crop: tuple[int, int], generator: torch.Generator, cache_mb: int = 256
    ):
        if not clips:
            raise ValueError("no training clips")
        self.clips, self.frames, self.crop, self.generator = clips, frames, crop, generator
        self.cache_bytes = cache_mb * 2**20
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, max(high, 1), (1,), generator=self.generator))

    def _cached(self, clip: Clip, load: Callable[[Clip], np.ndarray | torch.Tensor]):
        """`load(clip)` through the LRU cache, evicting the oldest entries past the byte budget."""
        if clip.path in self._cache:
            self._cache.move_to_end(clip.path)
            return self._cache[clip.path]
        value = self._cache[clip.path] = load(clip)
        while len(self._cache) > 1 and sum(v.nbytes for v in self._cache.values()) > self.cache_bytes:
            self._cache.popitem(last=False)
        return value

    def _decoded(self, clip: Clip) -> np.ndarray:
        return self._cached(clip, lambda c: read_frames(c.path))

    def window(self) -> torch.Tensor:
        """[3, frames, crop_h, crop_w] in [-1, 1]; short clips repeat their last frame."""
        clip = self.clips[self._randint(len(self.clips))]
        decoded = self._decoded(clip)
        start = self._randint(len(decoded) - self.frames + 1)
        video = to_unit_range(decoded[start : start + self.frames])
        if video.shape[1] < self.frames:
            video = torch.cat([video, video[:, -1:].expand(-1, self.frames - video.shape[1], -1, -1)], dim=1)
        ch, cw = self.crop
        video = _cover(video, ch, cw)
        top, left = self._randint(video.shape[2] - ch + 1), self._randint(video.shape[3] - cw + 1)
        return video[:, :, top : top + ch, left : left + cw]

    def batch(self, size: int) -> torch.Tensor:
        """[size, 3, frames, crop_h, crop_w]."""
        return torch.stack([self.window() for _ in range(size)])


class MapSampler(ClipSampler):
    """Random windows of spatial maps: each clip is encoded once by `encode` ([3, T, H, W] -> [C, T, H/8, W/8]).

    For training the temporal stage while the spatial stage is frozen; `crop` is in map units and
    is clamped to the smallest clip's map, so every window of a batch has the same size.
    Encoded clips share the LRU cache budget.
    """

    def __init__(self, clips: list[Clip], frames: int, crop: tuple[int, int], generator: torch.Generator,
                 encode: Callable[[torch.Tensor], torch.Tensor], cache_mb: int = 256):
        if clips:
            crop = (min(crop[0], *(c.height // SPATIAL_FACTOR for c in clips)),
                    min(crop[1], *(c.width // SPATIAL_FACTOR for c in clips)))
        super().__init__(clips, frames, crop, generator, cache_mb)
        self.encode = encode

    def _decoded(self, clip: Clip) -> torch.Tensor:
        return self._cached(clip, self._encode_clip)

    def _encode_clip(self, clip: Clip) -> torch.Tensor:
        video = to_unit_range(read_frames(clip.path))
        h, w = (video.shape[2] // SPATIAL_FACTOR) * SPATIAL_FACTOR, (video.shape[3] // SPATIAL_FACTOR) * SPATIAL_FACTOR
        return self.encode(video[:, :, :h, :w])

    def window(self) -> torch.Tensor:
        """[C, frames, crop_h, crop_w] (crop clamped to the map); short clips repeat their last frame."""
        clip = self.clips[self._randint(len(self.clips))]
        encoded = self._decoded(clip)
        start = self._randint(encoded.shape[1] - self.frames + 1)
        window = encoded[:, start : start + self.frames]
        if window.shape[1] < self.frames:
            window = torch.cat([window, window[:, -1:].expand(-1, self.frames - window.shape[1], -1, -1)], dim=1)
        ch, cw = self.crop
        top, left = self._randint(window.shape[2] - ch + 1), self._randint(window.shape[3] - cw + 1)
        return window[:, :, top : top + ch, left : left + cw]


def eval_video(clip: Clip, max_frames: int) -> torch.Tensor:
    """The first 8k+1 <= `max_frames` frames of a clip, centre-cropped to multiples of 8: [3, T, H, W] in [-1, 1].

    8k+1 frames (an image latent + k chunks) is what the encode buckets feed the VAE; a clip too
    short for `max_frames` gives its longest 8k+1 prefix (a 12-frame clip: 9 frames).
    """
    video = to_unit_range(read_frames(clip.path, 0, max_frames))
    video = video[:, : frames_for_latents(latent_frames(video.shape[1]))]
    h, w = (video.shape[2] // SPATIAL_FACTOR) * SPATIAL_FACTOR, (video.shape[3] // SPATIAL_FACTOR) * SPATIAL_FACTOR
    if h == 0 or w == 0:
        raise ValueError(f"clip {clip.clip_id} is smaller than {SPATIAL_FACTOR}x{SPATIAL_FACTOR}")
    top, left = (video.shape[2] - h) // 2, (video.shape[3] - w) // 2
    return video[:, :, top : top + h, left : left + w]
