"""Run the pretrain stage (training, then rank 0's release, samples and metrics) under torchrun, for the DP=2 test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mugv.config import Params
from mugv.models.text.model import TextEncoderConfig
from mugv.stages import pretrain


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    params = Params()
    result = pretrain.run(Path(spec["latents"]), Path(spec["out"]), pretrain.Config.model_validate(spec["config"]),
                          None, stage=spec["stage"], vae=Path(spec["vae"]), flow=params.diffusion.training,
                          sampler=params.diffusion.sampler.model_copy(update={"steps": 2}),
                          text=TextEncoderConfig(max_length=spec["text_len"]), progress=False,
                          metrics_path=Path(spec["metrics"]))
    if result is not None:  # rank 0
        Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
