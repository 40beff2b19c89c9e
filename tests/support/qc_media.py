"""Test media for the qc tests: textured frames, a small clip set with known verdicts, tiny LAION weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mugv.data.config import QCThresholds
from mugv.data.aesthetic import laion_mlp
from mugv.data.video_io import write_video

H, W, T, FPS = 96, 128, 12, 12
STEP = 3  # pan speed of the clip set, pixels per frame


def texture(h: int = H, w: int = W, seed: int = 0, cell: int = 4) -> np.ndarray:
    """A colourful, smooth-edged random texture (RGB uint8) that optical flow can track."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // cell, w // cell, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (3, 3), 0)


def pan(seed: int, step: int = STEP) -> list[np.ndarray]:
    """T frames of a colourful texture panned horizontally `step` px per frame."""
    rng = np.random.default_rng(seed)
    width = W + step * T
    small = rng.integers(0, 256, (H // 3, width // 3 + 1, 3), dtype=np.uint8)
    big = cv2.resize(small, (3 * small.shape[1], 3 * small.shape[0]), interpolation=cv2.INTER_CUBIC)
    return [big[:H, step * t : step * t + W] for t in range(T)]


def washed_out(frame: np.ndarray) -> np.ndarray:
    """Grey, low contrast, over-exposed: still sharp enough, but a poor heuristic aesthetic."""
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) // 3 + 150
    return np.repeat(luma[..., None], 3, axis=-1)


# thresholds under which CLIPS get the verdicts listed there (heuristic aesthetic scorer)
THRESHOLDS = QCThresholds(
    sharpness_min=50, sharpness_max=1e5, aesthetic_min=5.0, motion_min=0.5, motion_max=20,
    brightness_min=80, dedup_hamming=6,
)

# clip_id -> (frames, expected reject_reason (None = kept)); source order is clip_id order
CLIPS = {
    "c00_good": (lambda: pan(0), None),
    "c01_good": (lambda: pan(1), None),
    "c02_static": (lambda: pan(2, step=0), "motion"),
    "c03_blurred": (lambda: [cv2.GaussianBlur(f, (0, 0), 3) for f in pan(3)], "sharpness"),
    "c04_dim": (lambda: [(f * 0.55).astype(np.uint8) for f in pan(4)], "brightness"),
    "c05_washed_out": (lambda: [washed_out(f) for f in pan(5)], "aesthetic"),
    "c06_near_dup": (lambda: [np.clip(f.astype(int) + 5, 0, 255).astype(np.uint8) for f in pan(0)], "duplicate_of:c00_good"),
    "c07_good": (lambda: pan(7), None),
}
BROKEN = "c08_broken"


def expected_reasons() -> dict[str, str | None]:
    """clip_id -> expected reject_reason, the unreadable clip as plain 'unreadable'."""
    return {k: v for k, (_, v) in CLIPS.items()} | {BROKEN: "unreadable"}


def make_clip_set(root: Path, captions: bool = True, only: list[str] | None = None) -> pd.DataFrame:
    """Write CLIPS (or the `only` ones) as H.264 files under root/clips, plus an unreadable
    clip, and root/clips.parquet in the ingest contract."""
    (root / "clips").mkdir(parents=True)
    rows = []
    for clip_id, (make, _) in CLIPS.items():
        if only is not None and clip_id not in only:
            continue
        rel = f"clips/{clip_id}.mp4"
        n = write_video(root / rel, make(), fps=FPS)
        rows.append({"clip_id": clip_id, "path": rel, "num_frames": n})
    (root / "clips" / f"{BROKEN}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    rows.append({"clip_id": BROKEN, "path": f"clips/{BROKEN}.mp4", "num_frames": T})
    for r in rows:
        r.update(
            source_uri=f"videos/{r['clip_id']}.mp4", sha256=hashlib.sha256(r["clip_id"].encode()).hexdigest(),
            clip_sha256=hashlib.sha256((root / r["path"]).read_bytes()).hexdigest(),
            start_frame=0, end_frame=T, fps=float(FPS), width=W, height=H, duration_s=T / FPS,
            caption=f"a texture moves ({r['clip_id']})" if captions else None,
        )
    df = pd.DataFrame(rows)
    df.to_parquet(root / "clips.parquet", index=False)
    return df


def tiny_laion_folder(root: Path, projection_dim: int = 16, mlp_dim: int | None = None):
    """A LAION weights folder with a tiny random CLIP vision tower and a random MLP; returns the MLP."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=projection_dim,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip"
    )
    mlp = laion_mlp(mlp_dim or projection_dim, hidden=(24, 12, 8, 4))
    save_file({f"layers.{k}": v.contiguous() for k, v in mlp.state_dict().items()}, root / "aesthetic_mlp.safetensors")
    return mlp
