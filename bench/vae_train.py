"""Benchmark: train the default VAE on the default synthetic videos; print held-out PSNR/SSIM vs the trilinear baseline.

Usage: python bench/vae_train.py [WORKDIR] [key=value ...]   (keys: VAETrainConfig fields, JSON values)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

from mugv.stages import qc, synth
from mugv.data.video_io import probe
from mugv.training.vae_trainer import VAETrainConfig, train_vae


def synthetic_qc(work: Path) -> tuple[Path, Path]:
    """Default synth videos as clips; keep the ones synth marks 'good' (stand-in for ingest + qc)."""
    synth_dir = work / "synth"
    if not (synth_dir / synth.TRUTH).exists():
        synth.run(synth_dir, synth.Config(), progress=False)
    rows = []
    for line in (synth_dir / synth.TRUTH).read_text().splitlines():
        truth = json.loads(line)
        info = probe(synth_dir / truth["file"])
        rows.append({"clip_id": Path(truth["file"]).stem, "path": truth["file"], "fps": info.fps, "width": info.width,
                     "height": info.height, "num_frames": info.num_frames, "keep": truth["kind"] == "good"})
    qc_dir = work / "qc"
    qc_dir.mkdir(exist_ok=True)
    pd.DataFrame(rows).to_parquet(qc_dir / qc.QC_TABLE)
    return synth_dir, qc_dir


def main() -> None:
    args = sys.argv[1:]
    work = Path(args.pop(0)) if args and "=" not in args[0] else Path(tempfile.mkdtemp(prefix="vae-bench-"))
    overrides = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args)}
    clips_dir, qc_dir = synthetic_qc(work)
    report = train_vae(clips_dir, qc_dir, work / "vae", VAETrainConfig(**overrides), progress=True)
    m = report["metrics"]
    print(f"train clips {report['train_clips']}, held out {report['held_out_clips']}, steps {report['steps']}, "
          f"train {report['train_seconds']:.0f} s, skipped {report['skipped_steps']}")
    print(f"VAE            PSNR {m['vae_psnr']:.2f} dB  SSIM {m['vae_ssim']:.4f}  values kept {m['vae_values_kept']:.4f}")
    print(f"trilinear 8x   PSNR {m['baseline_psnr']:.2f} dB  SSIM {m['baseline_ssim']:.4f}  values kept {m['baseline_values_kept']:.4f}")
    print(f"trilinear 4x   PSNR {m['baseline_same_count_psnr']:.2f} dB  SSIM {m['baseline_same_count_ssim']:.4f}  (as many values as the VAE)")
    print(f"VAE - trilinear 8x: {m['delta_psnr_db']:+.2f} dB, SSIM {m['delta_ssim']:+.4f}; "
          f"VAE - trilinear 4x: {m['delta_psnr_db_same_count']:+.2f} dB")
    print(f"final loss {report['final_loss']}")


if __name__ == "__main__":
    main()
