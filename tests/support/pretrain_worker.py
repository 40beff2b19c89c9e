"""Run pretraining stages from a JSON spec, in a subprocess or under torchrun (for the resume and parallel tests)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from mugv.training.config import PretrainConfig
from mugv.training.dit_trainer import Trainer, run_pretrain


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec.get("threads", 1))
    pause = spec.get("step_pause_s", 0.0)
    if pause:  # slows each step down (outside the math) so a test can kill the run between checkpoints
        step = Trainer.train_step
        Trainer.train_step = lambda self, batches: (time.sleep(pause), step(self, batches))[1]
    for run in spec["runs"]:
        cfg = PretrainConfig.model_validate(run["config"])
        init_from = Path(run["init_from"]) if run.get("init_from") else None
        run_pretrain(Path(run["latents"]), run["stage"], init_from, Path(run["out"]), cfg, progress=False)


if __name__ == "__main__":
    main(sys.argv[1])
