"""A tiny latent data set in the encode stage's format (shards + latents.parquet + stats + null text), for training tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from mugv.latents.shards import INDEX, STATS, TEXT_NULL, ChannelStats, ShardWriter, save_text_null

CHANNELS = 24
TEXT_DIM = 384
TEXT_LEN = 16

# bucket name -> (kind, latent (T, H, W), samples)
DEFAULT_BUCKETS = {
    "64p_48x64_f1": ("image", (1, 6, 8), 12),
    "64p_64x64_f1": ("image", (1, 8, 8), 8),
    "64p_48x64_f9": ("video", (2, 6, 8), 8),
    "64p_48x64_f17": ("video", (3, 6, 8), 6),
}


def _latent(g: torch.Generator, t: int, h: int, w: int, theme: int) -> torch.Tensor:
    """A smooth, learnable latent: a theme-specific pattern per channel plus a little noise."""
    ys = torch.linspace(0, 3.14, h)[:, None]
    xs = torch.linspace(0, 3.14, w)[None, :]
    channel = torch.arange(CHANNELS, dtype=torch.float32)[:, None, None, None]
    frame = torch.arange(t, dtype=torch.float32)[None, :, None, None]
    pattern = torch.sin((theme + 1) * ys + 0.3 * channel + 0.2 * frame) * torch.cos((theme + 2) * xs - 0.1 * channel)
    return pattern.expand(CHANNELS, t, h, w) + 0.1 * torch.randn(CHANNELS, t, h, w, generator=g)


def make_latent_set(root: Path, buckets: dict | None = None, seed: int = 0, themes: int = 3) -> Path:
    """Write a latent data set under `root` and return it; captions (and their features) follow each theme."""
    buckets = buckets or DEFAULT_BUCKETS
    g = torch.Generator().manual_seed(seed)
    theme_text = torch.randn(themes, TEXT_LEN, TEXT_DIM, generator=g)
    writer = ShardWriter(root, max_shard_bytes=64 << 10)
    stats = ChannelStats()
    rows = []
    for bucket, (kind, (t, h, w), count) in buckets.items():
        for i in range(count):
            theme = (i + len(rows)) % themes
            sid = f"{bucket}-{i:03d}"
            latent = _latent(g, t, h, w, theme)
            stats.update(latent)
            text_len = 8 + theme
            mask = torch.zeros(TEXT_LEN, dtype=torch.int8)
            mask[:text_len] = 1
            shard = writer.add(sid, {"latent": latent, "text": theme_text[theme, :text_len].clone(), "text_mask": mask})
            rows.append(dict(
                sample_id=sid, clip_id=f"clip-{i:03d}", kind=kind, bucket=bucket, height=h * 8, width=w * 8,
                num_frames=1 if kind == "image" else (t - 1) * 8 + 1, latent_t=t, latent_h=h, latent_w=w,
                shard=shard, caption=f"theme {theme}", fps=12.0, frame_start=0, frame_end=(t - 1) * 8 + 1,
                text_len=text_len,
            ))
    shards = {info.name: info.sha256 for info in writer.close()}
    index = pd.DataFrame(rows)
    index["shard_sha256"] = index["shard"].map(shards)
    index.to_parquet(root / INDEX, index=False)
    stats.finalize().save(root / STATS)
    null_mask = torch.zeros(TEXT_LEN, dtype=torch.int8)
    null_mask[:2] = 1
    save_text_null(root / TEXT_NULL, {
        "null.text": torch.zeros(2, TEXT_DIM), "null.text_mask": null_mask,
        "negative.text": torch.randn(4, TEXT_DIM, generator=g), "negative.text_mask": null_mask.clone().fill_(0)
        .index_fill_(0, torch.arange(4), 1),
    }, {"negative_prompt": "bad"})
    return root
