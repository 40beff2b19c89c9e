"""The VAE evaluation: held-out PSNR/SSIM of a VideoVAE against trilinear baselines, and side-by-side samples."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mugv.data.video_io import write_video
from mugv.eval.reconstruction import psnr, ssim, trilinear_baseline
from mugv.eval.stats import standard_error
from mugv.models.vae import VideoVAE
from mugv.training.vae_data import Clip, eval_video, to_uint8

__all__ = ["evaluate_vae"]


def evaluate_vae(vae: VideoVAE, clips: list[Clip], eval_frames: int, samples: int, samples_dir: Path) -> dict:
    """Per-clip PSNR/SSIM of the VAE and of trilinear baselines on held-out clips; side-by-side mp4s.

    Each clip is evaluated on its longest 8k+1-frame prefix up to `eval_frames`; the first `samples`
    clips are also written as original | reconstruction | baseline videos into `samples_dir`.
    """
    from mugv.atomic import staged_dir

    vae.eval()
    with staged_dir(samples_dir, carry=False) as staging:  # published whole: a killed run leaves the old set
        per_clip, sample_paths = _evaluate_clips(vae, clips, eval_frames, samples, staging, samples_dir)
    return _summary(vae, per_clip, sample_paths)


def _same_count(vae: VideoVAE) -> int:
    """The per-axis factor that keeps as many numbers (3 channels) as the VAE's latents do."""
    return round((vae.latent_channels / 3) ** (1 / 3))


def _evaluate_clips(vae: VideoVAE, clips: list[Clip], eval_frames: int, samples: int, staging: Path,
                    samples_dir: Path) -> tuple[list[dict], list[str]]:
    """Per-clip metrics; the first `samples` clips' side-by-side mp4s written into `staging` (listed by their
    paths under `samples_dir`, where they are published)."""
    t_c, h_c, w_c = vae.compression
    same_count = _same_count(vae)
    per_clip, sample_paths = [], []
    for i, clip in enumerate(clips):
        x = eval_video(clip, eval_frames)
        with torch.no_grad():
            recon = vae(x[None], sample=False)[0][0].clamp(-1, 1)
        base = trilinear_baseline(x, (t_c, h_c, w_c))
        base_same = trilinear_baseline(x, (t_c // same_count, h_c // same_count, w_c // same_count))
        t, h, w = x.shape[1:]
        kept = vae.latent_channels * vae.latent_frames(t) * (h // h_c) * (w // w_c)
        per_clip.append({
            "clip_id": clip.clip_id, "frames": t, "height": h, "width": w,
            "vae_psnr": psnr(recon, x), "vae_ssim": ssim(recon, x),
            "baseline_psnr": psnr(base, x), "baseline_ssim": ssim(base, x),
            "baseline_same_count_psnr": psnr(base_same, x), "baseline_same_count_ssim": ssim(base_same, x),
            "vae_values_kept": kept / x.numel(),
            "baseline_values_kept": 3 * math.ceil(t / t_c) * math.ceil(h / h_c) * math.ceil(w / w_c) / x.numel(),
        })
        if i < samples:
            name = f"{clip.clip_id}.mp4"
            write_video(staging / name, to_uint8(torch.cat([x, recon, base], dim=3)), fps=clip.fps)
            sample_paths.append(str(samples_dir / name))
    return per_clip, sample_paths


def _summary(vae: VideoVAE, per_clip: list[dict], sample_paths: list[str]) -> dict:
    """Means over clips, the VAE's margins over the baselines (with the standard error), and the sample paths."""
    same_count = _same_count(vae)
    mean = lambda key: sum(c[key] for c in per_clip) / len(per_clip)  # noqa: E731
    keys = [k for k in per_clip[0] if k.endswith(("_psnr", "_ssim", "_kept"))]
    means = {k: mean(k) for k in keys}
    deltas = [c["vae_psnr"] - c["baseline_psnr"] for c in per_clip]
    return {
        "per_clip": per_clip,
        "mean": means,
        "delta_psnr_db": means["vae_psnr"] - means["baseline_psnr"],
        "delta_psnr_db_se": standard_error(deltas),  # of the mean per-clip margin: is it above noise?
        "delta_ssim": means["vae_ssim"] - means["baseline_ssim"],
        "delta_psnr_db_same_count": means["vae_psnr"] - means["baseline_same_count_psnr"],
        "baseline": f"box-average down by {vae.compression} (3 channels), trilinear up",
        "baseline_same_count": f"box-average down by {same_count}x fewer per axis, 3 channels: as many values as the VAE keeps",
        "samples": sample_paths,
    }
