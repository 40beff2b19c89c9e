"""The DiT of a pretraining checkpoint (torch_dist) or a converted folder, loaded for inference: generation, the release export."""

from __future__ import annotations

from pathlib import Path

from megatron.core import dist_checkpointing

from mugv.models.dit.config import get_preset
from mugv.models.dit.convert import converted_format, load_converted
from mugv.models.dit.model import MUGDiT
from mugv.models.dit.spec import default_block_spec
from mugv.training.checkpoint import resolve_checkpoint, verify_checkpoint
from mugv.training.config import PretrainConfig
from mugv.training.distributed import init_parallel


def load_dit(checkpoint: Path, use_ema: bool = True) -> MUGDiT:
    """The DiT of a pretraining checkpoint (its EMA weights when it has them), or of a folder `mugv convert`
    wrote (`--to mugv` or `--to megatron`), in eval mode."""
    if converted_format(checkpoint) is not None:
        init_parallel()
        return load_converted(checkpoint)
    path = resolve_checkpoint(checkpoint)
    init_parallel()
    verify_checkpoint(path)  # before its common.pt and .metadata are unpickled
    saved = dist_checkpointing.load_common_state_dict(str(path))["common"]["config"]
    # checkpoints written before the stage config split also hold `flow` and `sample_prompts`
    cfg = PretrainConfig.model_validate({k: v for k, v in saved.items() if k in PretrainConfig.model_fields})
    model = MUGDiT(get_preset(cfg.model, **cfg.model_overrides), default_block_spec(), perform_initialization=False)
    prefix = "ema." if use_ema and cfg.ema.enabled else "model."
    loaded = dist_checkpointing.load({"weights": model.sharded_state_dict(prefix=prefix)}, str(path))["weights"]
    model.load_state_dict({key[len(prefix):]: value for key, value in loaded.items()})
    return model.eval()
