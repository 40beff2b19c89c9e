"""Aesthetic scorers on a 0-10 scale: the LAION predictor on CLIP embeddings, or a named heuristic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import cv2
import numpy as np

CLIP_SUBDIR = "clip"
MLP_FILE = "aesthetic_mlp.safetensors"
LAION_HIDDEN = (1024, 128, 64, 16)


@runtime_checkable
class AestheticScorer(Protocol):
    """Scores RGB uint8 frames [H, W, 3]: one float per frame, higher is more pleasing."""

    def score(self, frames: Sequence[np.ndarray]) -> list[float]: ...


def colourfulness(frame: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M: ~0 for grey, ~33 moderate, ~59 quite, > 100 extreme."""
    r, g, b = (frame[..., i].astype(np.float64) for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


class HeuristicAestheticScorer:
    """A HEURISTIC stand-in for an aesthetic model, not a learned predictor of human preference.

    It rates image-statistics that correlate with "looks fine" and nothing else (no content,
    no composition). Each term is in [0, 1]:

    - exposure: 1 at mean luma 127.5, falling linearly to 0 at black or white;
    - contrast: luma standard deviation / 64, capped at 1;
    - colourfulness: Hasler-Suesstrunk M / 100, capped at 1;
    - sharpness: log10(1 + variance of the Laplacian) / 3, capped at 1 (1000 -> 1).

    score = 10 * (0.3 exposure + 0.25 contrast + 0.2 colourfulness + 0.25 sharpness), in [0, 10].
    Use it where no LAION weights are available (CPU default, tests); its scale is not the
    LAION scale, so thresholds are set per profile.
    """

    weights = {"exposure": 0.3, "contrast": 0.25, "colourfulness": 0.2, "sharpness": 0.25}

    def terms(self, frame: np.ndarray) -> dict[str, float]:
        luma = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        lap_var = float(cv2.Laplacian(luma, cv2.CV_64F).var())
        return {
            "exposure": float(np.clip(1.0 - abs(luma.mean() - 127.5) / 127.5, 0.0, 1.0)),
            "contrast": float(min(luma.std() / 64.0, 1.0)),
            "colourfulness": min(colourfulness(frame) / 100.0, 1.0),
            "sharpness": float(min(np.log10(1.0 + lap_var) / 3.0, 1.0)),
        }

    def score(self, frames: Sequence[np.ndarray]) -> list[float]:
        out = []
        for frame in frames:
            t = self.terms(frame)
            out.append(10.0 * sum(self.weights[k] * t[k] for k in self.weights))
        return out


def laion_mlp(embed_dim: int, hidden: Sequence[int] = LAION_HIDDEN):
    """The LAION improved-aesthetic-predictor head (an nn.Sequential) with its original indices.

    Modules 0, 2, 4, 6, 7 are Linear (1, 3, 5 are Dropout), so the released
    `sac+logos+ava1-l14-linearMSE` state dict, saved as safetensors, loads once its `layers.`
    key prefix is stripped (`LaionAestheticScorer` does that).
    """
    from torch import nn

    h1, h2, h3, h4 = hidden
    return nn.Sequential(
        nn.Linear(embed_dim, h1), nn.Dropout(0.2),
        nn.Linear(h1, h2), nn.Dropout(0.2),
        nn.Linear(h2, h3), nn.Dropout(0.1),
        nn.Linear(h3, h4), nn.Linear(h4, 1),
    )


def laion_weight_files(weights_dir: str | Path | None) -> tuple[Path, Path]:
    """(CLIP folder, MLP file) of a LAION weights folder; FileNotFoundError naming what is missing."""
    if not weights_dir:
        raise ValueError("qc.aesthetic_scorer 'laion' needs qc.aesthetic_weights (a local folder)")
    root = Path(weights_dir)
    clip_dir, mlp_file = root / CLIP_SUBDIR, root / MLP_FILE
    for need in (clip_dir, mlp_file):
        if not need.exists():
            raise FileNotFoundError(f"LAION aesthetic weights: missing {need}")
    return clip_dir, mlp_file


class LaionAestheticScorer:
    """LAION aesthetic predictor: L2-normalised CLIP image embedding -> MLP -> score (~1-10).

    `weights_dir` holds a transformers `CLIPVisionModelWithProjection` folder (with its image
    processor config) under `clip/` and the MLP as `aesthetic_mlp.safetensors` (keys
    `layers.{0,2,4,6,7}.{weight,bias}`; sizes are read from the file). Loads local files only.
    """

    def __init__(self, weights_dir: str | Path | None, batch_size: int = 16, device: str = "cpu"):
        import torch
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        clip_dir, mlp_file = laion_weight_files(weights_dir)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.processor = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_dir, local_files_only=True)
        self.clip.eval().to(self.device)
        state = load_file(mlp_file)
        hidden = tuple(state[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6))
        embed_dim = state["layers.0.weight"].shape[1]
        if embed_dim != self.clip.config.projection_dim:
            raise ValueError(
                f"aesthetic MLP expects {embed_dim}-d embeddings, CLIP projects to {self.clip.config.projection_dim}"
            )
        self.mlp = laion_mlp(embed_dim, hidden)
        self.mlp.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()}, strict=True)
        self.mlp.eval().to(self.device)

    def score(self, frames: Sequence[np.ndarray]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                batch = self.processor(images=list(frames[i : i + self.batch_size]), return_tensors="pt")
                emb = self.clip(pixel_values=batch["pixel_values"].to(self.device)).image_embeds
                emb = emb / emb.norm(dim=-1, keepdim=True)
                out.extend(self.mlp(emb).squeeze(-1).float().cpu().tolist())
        return out


def build_aesthetic_scorer(kind: Literal["heuristic", "laion"], weights_dir: str | None) -> AestheticScorer:
    """The scorer `QCConfig.aesthetic_scorer` names; `laion` needs `aesthetic_weights`."""
    if kind == "heuristic":
        return HeuristicAestheticScorer()
    if kind == "laion":
        return LaionAestheticScorer(weights_dir)
    raise ValueError(f"unknown aesthetic scorer {kind!r}")
