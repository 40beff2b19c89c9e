"""Resolution x aspect x frame-count buckets: which bucket a clip goes to, and how its frames are cropped to it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mugv.latents.config import BucketConfig


@dataclass(frozen=True, order=True)
class Bucket:
    """One bucket: a resolution name, a pixel shape and a frame count."""

    resolution: str
    height: int
    width: int
    frames: int

    @property
    def name(self) -> str:
        return f"{self.resolution}_{self.height}x{self.width}_f{self.frames}"

    @property
    def kind(self) -> str:
        return "image" if self.frames == 1 else "video"

    def latent_shape(self, compression: tuple[int, int, int]) -> tuple[int, int, int]:
        """(T', H', W') of a sample in this bucket under a VAE of `compression` (t, h, w)."""
        ct, ch, cw = compression
        if self.frames % ct == 1:  # first frame is its own latent (an image latent when frames == 1)
            t = (self.frames - 1) // ct + 1
        else:
            t = math.ceil(self.frames / ct)
        return t, self.height // ch, self.width // cw

    def resolvable(self, cfg: BucketConfig) -> bool:
        """Sides divisible by the spatial multiple and a frame count the VAE maps to whole latents."""
        spatial = self.height % cfg.spatial_multiple == 0 and self.width % cfg.spatial_multiple == 0
        temporal = self.frames == 1 or self.frames % cfg.temporal_stride == 1
        return spatial and temporal


@dataclass(frozen=True)
class Crop:
    """Resize a (src_h, src_w) frame to (resize_h, resize_w), then take the centered (height, width) window."""

    resize_h: int
    resize_w: int
    top: int
    left: int
    height: int
    width: int


def configured_buckets(cfg: BucketConfig) -> list[Bucket]:
    """Every configured bucket, largest area first, then by name (the order assignment ties break on)."""
    out = [
        Bucket(resolution=name, height=h, width=w, frames=f)
        for name, shapes in cfg.resolutions.items()
        for h, w in shapes
        for f in cfg.frames
    ]
    return sorted(out, key=lambda b: (-b.height * b.width, b.resolution, b.height, b.width, b.frames))


def crop_for(src_h: int, src_w: int, height: int, width: int) -> Crop | None:
    """Resize so the frame just covers (height, width), then center-crop; None if that would upscale."""
    scale = max(height / src_h, width / src_w)
    if scale > 1.0:
        return None
    rh = max(height, round(src_h * scale))
    rw = max(width, round(src_w * scale))
    return Crop(rh, rw, (rh - height) // 2, (rw - width) // 2, height, width)


def crop_fraction(src_h: int, src_w: int, height: int, width: int) -> float:
    """Share of the source area cut away by cover-resize + center-crop to the bucket's aspect."""
    a_src, a_dst = src_w / src_h, width / height
    return 1.0 - min(a_src / a_dst, a_dst / a_src)


@dataclass(frozen=True)
class Assignment:
    """Where a clip goes: its spatial bucket shape and video frame count, or why it goes nowhere."""

    resolution: str | None
    height: int | None
    width: int | None
    frames: int | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def bucket(self, frames: int | None = None) -> Bucket:
        """The bucket for `frames` (default: the video frame count) at this spatial shape."""
        if not self.ok:
            raise ValueError(f"clip is not assigned: {self.reason}")
        return Bucket(self.resolution, self.height, self.width, self.frames if frames is None else frames)


def assign(src_h: int, src_w: int, num_frames: int, cfg: BucketConfig, video: bool = True) -> Assignment:
    """The highest resolution with a bucket that does not upscale the clip; in it, the nearest-aspect such bucket.

    Frame count: the largest configured video count <= the clip's frames. With `video=False`
    only the spatial shape is chosen (for image samples) and `frames` is 1. A clip that fits
    nowhere gets an Assignment whose `reason` says why.
    """
    if video and not cfg.video_frames:
        return _unassigned("no video bucket: only frame count 1 is configured")
    if not video and 1 not in cfg.frames:
        return _unassigned("no image bucket: frame count 1 is not configured")
    if video and num_frames < cfg.video_frames[0]:
        return _unassigned(f"too short: {num_frames} frames < {cfg.video_frames[0]}")
    by_area = sorted(
        cfg.resolutions.items(), key=lambda kv: (-sum(h * w for h, w in kv[1]) / len(kv[1]), kv[0])
    )
    reason = f"too small: {src_h}x{src_w} would be upscaled to every bucket"
    for name, shapes in by_area:
        fitting = sorted(
            (crop_fraction(src_h, src_w, h, w), -h * w, h, w)
            for h, w in shapes
            if crop_for(src_h, src_w, h, w) is not None
        )
        if not fitting:
            continue
        lost, _, h, w = fitting[0]
        if lost > cfg.max_crop_fraction:
            reason = (
                f"aspect: {src_h}x{src_w} would lose {lost:.0%} of its area to the nearest bucket "
                f"{name} {h}x{w} (max_crop_fraction {cfg.max_crop_fraction:.0%})"
            )
            continue
        frames = max(f for f in cfg.video_frames if f <= num_frames) if video else 1
        return Assignment(name, h, w, frames)
    return _unassigned(reason)


def _unassigned(reason: str) -> Assignment:
    return Assignment(None, None, None, None, reason)
