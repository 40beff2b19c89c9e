"""DiTConfig.parameter_split (the arithmetic `mugv plan` uses) equals the meta-device count of the real MUGDiT."""

import pytest
import torch

from mugv.models.dit.config import PRESETS, get_preset
from mugv.models.dit.model import MUGDiT, tensor_parallel_dims
from mugv.models.dit.parallel_tokens import running_parallel_dims
from mugv.models.dit.spec import local_block_spec


def meta_parameter_split(config) -> tuple[int, int]:
    """(TP-split, replicated) parameters of the model built on the meta device."""
    with torch.device("meta"):
        model = MUGDiT(config, local_block_spec(), parallel=running_parallel_dims(), perform_initialization=False)
    sharded = tensor_parallel_dims(model)
    split = sum(p.numel() for name, p in model.named_parameters() if name in sharded)
    return split, sum(p.numel() for p in model.parameters()) - split


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_analytic_split_equals_the_meta_model(preset):
    config = get_preset(preset)
    assert config.parameter_split() == meta_parameter_split(config)
    assert config.parameter_count == sum(meta_parameter_split(config))


@pytest.mark.parametrize("overrides", [{"qk_norm": False}, {"use_start_end_tokens": False}, {"mlp_ratio": 2.0}])
def test_analytic_split_follows_the_optional_parts(overrides):
    config = get_preset("tiny", **overrides)
    assert config.parameter_split() == meta_parameter_split(config)
