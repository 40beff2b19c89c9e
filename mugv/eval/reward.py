"""Video rewards by name: an interface, a registry, and an automatic reward for the synthetic domain.

A reward scores a video [T, H, W, 3] uint8 RGB against its caption as a dict of named components,
each in [0, 1] (NaN where it does not apply, e.g. motion of a one-frame video), plus "reward": the
mean of the applicable components.

`synthetic_grammar` checks a video against a caption of `mugv.data.synth`'s grammar without a model:
the background colour (the frame's border ring), the shape's colour (the pixels that are not
background), its motion (the path of their centroid) and temporal flickering (VBench's formula).
It reads the palette, directions and drawing constants from `mugv.data.synth`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, TypeVar

import cv2
import numpy as np

from mugv.data import synth

# --------------------------------------------------------------------------- thresholds

BORDER_FRAC = 0.06  # width of the border ring read for the background colour, as a fraction of the short side
MIN_BORDER_PX = 2  # ... and at least this many pixels
BACKGROUND_GAINS = (1 - synth.TEXTURE_DEPTH, 1.0)  # a texture darkens its background colour by up to TEXTURE_DEPTH
SHAPE_GAINS = (1 - synth.SHADING, 1 + synth.SHADING)  # the light across a shape brightens or darkens its colour
BACKGROUND_TOLERANCE = 45.0  # a pixel this close (Euclidean RGB) to the detected background colour is background
SHAPE_RADIUS_FRAC = (0.2, 0.27)  # the shape's radius as a fraction of the short side (synth's `size_frac` range)
SHAPE_MIN_AREA = 0.2  # the shape is seen when its colour's largest blob has >= this many times pi * r_min^2 pixels (truth: >= 0.38)
SHAPE_MAX_AREA = 1.5  # ... and at most this many times pi * r_max^2 (truth: <= 1.1; more is a background, not a shape)
MIN_TRACKED_FRAC = 0.5  # motion is scored when the shape is seen in at least this share of the frames
MIN_COSINE = 0.9  # centroid displacement first -> last within ~26 deg of the direction (truth: >= 0.94; 45 deg: 0.71)
MIN_TRAVEL = 0.15  # ... and at least this fraction of the short side long (truth: >= 0.36)
STILL_RADIUS = 0.05  # a still shape's centroid stays within this fraction of the short side of its mean


# --------------------------------------------------------------------------- the interface


class Reward(ABC):
    """A score of a video against its caption, by named components in [0, 1] and their mean."""

    name: ClassVar[str]
    components: ClassVar[tuple[str, ...]]

    @abstractmethod
    def score(self, video: np.ndarray, caption: str) -> dict[str, float]:
        """Each component in [0, 1] (NaN if not applicable) and "reward", the mean of the applicable ones."""


RewardClass = TypeVar("RewardClass", bound=type[Reward])
_REWARDS: dict[str, type[Reward]] = {}


def register_reward(name: str) -> Callable[[RewardClass], RewardClass]:
    """Class decorator: make a Reward subclass available to `get_reward(name)`."""

    def register(cls: RewardClass) -> RewardClass:
        if name in _REWARDS:
            raise ValueError(f"reward {name!r} is already registered (by {_REWARDS[name].__qualname__})")
        cls.name = name
        _REWARDS[name] = cls
        return cls

    return register


def get_reward(name: str, **kwargs: object) -> Reward:
    """A new instance of the reward registered as `name`, built with `kwargs`."""
    if name not in _REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {', '.join(sorted(_REWARDS))}")
    return _REWARDS[name](**kwargs)


def _check_video(video: np.ndarray) -> None:
    """Raise ValueError unless `video` is uint8 [T, H, W, 3] with T >= 1 and H, W >= 16."""
    if not isinstance(video, np.ndarray) or video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        shape = getattr(video, "shape", None)
        raise ValueError(f"a video must be a uint8 array [T, H, W, 3], got {type(video).__name__} {shape}")
    t, h, w, _ = video.shape
    if t < 1 or h < 16 or w < 16:
        raise ValueError(f"a video needs T >= 1 frames of at least 16x16, got {t} frames of {w}x{h}")


def _mean_applicable(components: dict[str, float]) -> float:
    """The mean of the applicable (not NaN) components; NaN if none applies."""
    values = [v for v in components.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# --------------------------------------------------------------------------- captions


@dataclass(frozen=True)
class SynthCaption:
    """What a caption of the synthetic grammar says; direction and speed are "none" for a still shape."""

    shape: str
    colour: str
    background_colour: str
    texture: str  # a synth.TEXTURES key, e.g. "stripes"
    direction: str
    speed: str


def _alternatives(words: object) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))  # longest first


def parse_caption(caption: str) -> SynthCaption:
    """The inverse of `synth.caption_for`; ValueError naming the caption if it is not of the grammar."""
    textures = {adjective: texture for texture, adjective in synth.TEXTURES.items()}
    pattern = (
        rf"an? (?P<colour>{_alternatives(synth.COLOURS)}) (?P<shape>{_alternatives(synth.SHAPES)}) "
        rf"(?:stays still|moves (?P<speed>{_alternatives(synth.SPEEDS)}) "
        rf"(?P<direction>{_alternatives(synth.DIRECTIONS)})) "
        rf"on an? (?P<background>{_alternatives(synth.BACKGROUND_COLOURS)}) "
        rf"(?P<texture>{_alternatives(textures)}) background"
    )
    match = re.fullmatch(pattern, caption)
    if match is not None:
        parts = SynthCaption(
            shape=match["shape"],
            colour=match["colour"],
            background_colour=match["background"],
            texture=textures[match["texture"]],
            direction=match["direction"] or "none",
            speed=match["speed"] or "none",
        )
        background = f"{parts.background_colour} {parts.texture}"
        if synth.caption_for(parts.shape, parts.colour, background, parts.direction, parts.speed) == caption:
            return parts  # the articles agree too
    raise ValueError(f"not a caption of the synthetic grammar: {caption!r}")


# --------------------------------------------------------------------------- colours


def _distances(pixels: np.ndarray, names: list[str], gains: tuple[float, float]) -> np.ndarray:
    """Distance [N, C] of the N pixels [..., 3] to each named palette colour at its nearest gain in the range.

    A gain that would take a channel past 255 is capped there (the drawing clips; the few brightest shaded
    pixels of a yellow, white or orange shape are then up to ~30 levels off their colour's line).
    """
    p = pixels.reshape(-1, 3).astype(np.float32)  # any [..., 3]
    palette = np.asarray([synth.COLOURS[n] for n in names], np.float32)  # [C, 3]
    norm2 = (palette * palette).sum(1)
    top = np.minimum(gains[1], 255.0 / palette.max(1))
    dot = p @ palette.T  # [N, C]
    gain = np.clip(dot / norm2, gains[0], top)  # the nearest point on each colour's gain segment
    d2 = (p * p).sum(1, keepdims=True) - 2 * gain * dot + gain * gain * norm2
    return np.sqrt(np.maximum(d2, 0))


# --------------------------------------------------------------------------- components


def temporal_flickering(video: np.ndarray) -> float:
    """VBench's temporal flickering: (255 - mean absolute difference of consecutive frames) / 255; NaN for one frame."""
    # As `cal_score` in VBench's vbench/temporal_flickering.py (Vchitect/VBench): the per-pair MAE over all pixels
    # and channels, averaged over the pairs. VBench applies it to static-scene prompts; here a moving shape lowers
    # it slightly (its leading and trailing edges change between frames).
    if len(video) < 2:
        return float("nan")
    frames = video.astype(np.float32)
    mae = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    return float((255.0 - mae.mean()) / 255.0)


def _border_ring(height: int, width: int) -> np.ndarray:
    """Mask [H, W] of the frame's border ring."""
    b = max(MIN_BORDER_PX, round(BORDER_FRAC * min(height, width)))
    ring = np.ones((height, width), bool)
    ring[b:-b, b:-b] = False
    return ring


def _background(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the background colour its border ring votes for (plurality of its pixels' nearest colours, an index
    into synth.BACKGROUND_COLOURS) [T], and the mask of the pixels that are not near that colour [T, H, W]."""
    t, h, w, _ = video.shape
    names = list(synth.BACKGROUND_COLOURS)
    distance = _distances(video, names, BACKGROUND_GAINS).reshape(t, h * w, len(names))
    ring = _border_ring(h, w).reshape(-1)
    labels = np.asarray([np.bincount(d[ring].argmin(1), minlength=len(names)).argmax() for d in distance])
    foreground = np.take_along_axis(distance, labels[:, None, None], axis=2)[..., 0] > BACKGROUND_TOLERANCE
    return labels, foreground.reshape(t, h, w)


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a [H, W] mask (all False when the mask is empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        return np.zeros_like(mask, dtype=bool)
    return labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def _shape_pixels(video: np.ndarray, foreground: np.ndarray, colour: str) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the largest blob [T, H, W] of foreground pixels of the shape colour, and whether the shape is
    seen [T]: that blob has about a shape's area. A blob, not a pixel count, so that the scattered pixels of a
    noisy or textured frame that happen to be near the colour do not count as a shape."""
    t, h, w, _ = video.shape
    names = list(synth.COLOURS)
    is_colour = (_distances(video, names, SHAPE_GAINS).argmin(1) == names.index(colour)).reshape(t, h, w)
    mask = np.stack([_largest_blob(frame) for frame in foreground & is_colour])
    count = mask.sum(axis=(1, 2))
    side = min(h, w)
    lo = SHAPE_MIN_AREA * np.pi * (SHAPE_RADIUS_FRAC[0] * side) ** 2
    hi = SHAPE_MAX_AREA * np.pi * (SHAPE_RADIUS_FRAC[1] * side) ** 2
    return mask, (count >= lo) & (count <= hi)


def _motion_score(mask: np.ndarray, seen: np.ndarray, direction: str) -> float:
    """1 if the shape's centroid moves in `direction` (or stays still for "none"), else 0; NaN for one frame."""
    t, h, w = mask.shape
    if t < 2:
        return float("nan")
    if seen.sum() < max(2, MIN_TRACKED_FRAC * t):
        return 0.0
    side = min(h, w)
    centroids = []
    for frame_mask in mask[seen]:
        m = cv2.moments(frame_mask.astype(np.uint8), binaryImage=True)
        centroids.append((m["m10"] / m["m00"], m["m01"] / m["m00"]))
    path = np.asarray(centroids)
    if direction == "none":
        spread = np.linalg.norm(path - path.mean(0), axis=1).max()
        return float(spread <= STILL_RADIUS * side)
    travel = path[-1] - path[0]
    length = float(np.linalg.norm(travel))
    unit = np.asarray(synth.DIRECTIONS[direction], np.float64)
    cosine = float(travel @ unit) / (length * float(np.linalg.norm(unit))) if length > 0 else 0.0
    return float(length >= MIN_TRAVEL * side and cosine >= MIN_COSINE)


# --------------------------------------------------------------------------- the synthetic-domain reward


@register_reward("synthetic_grammar")
class SyntheticGrammarReward(Reward):
    """Automatic, deterministic CPU reward for videos of `mugv.data.synth`'s domain against its caption grammar.

    background: share of frames whose border ring votes for the caption's background colour (see `_background`).
    shape_colour: share of frames where a blob of the caption's shape colour of about a shape's area is seen
        among the pixels that are not the frame's detected background, whatever the caption says of it
        (see `_shape_pixels`).
    motion: 1/0, the shape's centroid path agrees with the direction or stays still (speed is not scored);
        NaN for one frame. Only frames where the shape is seen count, so a wrong colour also fails motion.
    flicker: VBench's temporal flickering; NaN for one frame.
    """

    components: ClassVar[tuple[str, ...]] = ("background", "shape_colour", "motion", "flicker")

    def score(self, video: np.ndarray, caption: str) -> dict[str, float]:
        """The four components and their mean as "reward" (see the class docstring)."""
        _check_video(video)
        parts = parse_caption(caption)
        labels, foreground = _background(video)
        mask, seen = _shape_pixels(video, foreground, parts.colour)
        scores = {
            "background": float(np.mean(labels == list(synth.BACKGROUND_COLOURS).index(parts.background_colour))),
            "shape_colour": float(seen.mean()),
            "motion": _motion_score(mask, seen, parts.direction),
            "flicker": temporal_flickering(video),
        }
        return {**scores, "reward": _mean_applicable(scores)}
