"""CLI start-up and generate wall times as ratios to `python -c "import torch"`, measured side by side.

    .venv/bin/python bench/cli.py                 # builds a tiny release first (a 2-step pretrain, about 15 s)
    .venv/bin/python bench/cli.py --release DIR   # time generate on an existing release folder

Each command runs `--runs` times in a fresh process (median wall time). Targets: `mugv --help` and
`mugv plan 1B` at most 1.5x the torch import; `mugv generate --steps 2` (17 frames, 128x96) at most 3x.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"mugv --help": 1.5, "mugv plan 1B": 1.5, "mugv generate --steps 2": 3.0}


def build_release(root: Path) -> Path:
    """A release of a tiny DiT (2 training steps on a synthetic latent set, tiny VAE, MiniLM): its folder."""
    sys.path.insert(0, str(ROOT))
    from mugv.inference.release import export_release
    from mugv.models.text.model import TextEncoderConfig
    from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
    from mugv.training.bucket_sampler import BatchingConfig
    from mugv.training.config import CurriculumStage, PretrainConfig
    from mugv.training.dit_trainer import run_pretrain
    from tests.support.latent_set import TEXT_LEN, make_latent_set

    latents = make_latent_set(root / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), root / "vae")
    cfg = PretrainConfig(peak_flops=1e10, heldout={"samples": 0}, stages=[
        CurriculumStage(name="s", steps=2, batching=BatchingConfig(tokens_per_batch=150))])
    run_pretrain(latents, "s", None, root / "run", cfg, progress=False)
    return export_release(root / "run", root / "vae", latents, TextEncoderConfig(max_length=TEXT_LEN), root / "release")


def wall_time(command: list[str], runs: int) -> float:
    """Median wall seconds of `command` over `runs` fresh processes (each must succeed)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command (median)")
    parser.add_argument("--release", type=Path, help="release folder for generate (default: build a tiny one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mugv-bench-cli-") as tmp:
        release = args.release or build_release(Path(tmp))
        mugv = [sys.executable, "-m", "mugv.cli"]
        commands = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "mugv --help": [*mugv, "--help"],
            "mugv plan 1B": [*mugv, "plan", "1B"],
            "mugv generate --steps 2": [*mugv, "generate", str(release), "a red ball moves right", "--steps", "2",
                                        "--frames", "17", "--height", "96", "--width", "128",
                                        "--out", str(Path(tmp) / "sample.mp4")],
        }
        # interleaved rounds, so a busy machine slows every command alike
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                samples[name].append(wall_time(command, 1))
    seconds = {name: statistics.median(values) for name, values in samples.items()}
    torch_s = seconds["python -c 'import torch'"]
    print(f"{'command':28} {'median s':>9} {'x torch':>8} {'target':>7}  (runs: {args.runs})")
    for name, value in seconds.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:.1f}x {'ok' if value / torch_s <= target else 'MISSED'}"
        print(f"{name:28} {value:9.2f} {value / torch_s:8.2f} {verdict:>7}")


if __name__ == "__main__":
    main()
