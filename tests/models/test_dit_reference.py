"""The Megatron-Core MUGDiT and the plain-PyTorch reference agree on the same weights and inputs."""

import pytest
import torch

from mugv.models.dit.config import get_preset
from mugv.models.dit.convert import official_to_mugv, to_official
from mugv.models.dit.model import build_model
from mugv.models.dit.reference import ReferenceMUGDiT
from mugv.models.dit.spec import local_block_spec


pytestmark = pytest.mark.usefixtures("process_group")


@pytest.mark.parametrize("grid", [(3, 6, 10), (2, 5, 7)])
@torch.no_grad()
def test_reference_matches_the_megatron_model_on_the_tiny_preset(grid):
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    ours = build_model(cfg, local_block_spec()).eval()
    reference = ReferenceMUGDiT(cfg).eval()
    # the weights travel through the official-checkpoint converter, both ways
    reference.load_state_dict(official_to_mugv(to_official(ours), cfg), strict=True)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_channels, *grid, generator=g)
    timestep = torch.tensor([100.0, 700.0])
    y = torch.randn(2, 1, 9, cfg.caption_channels, generator=g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    fps = torch.tensor([12.0, 24.0])
    expected = ours(x, timestep, y, mask, fps=fps)
    actual = reference(x, timestep, y, mask, fps=fps)
    assert actual.shape == expected.shape == (2, cfg.out_channels, *grid)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_reference_matches_the_megatron_model_with_clean_conditioning_frames():
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    ours = build_model(cfg, local_block_spec()).eval()
    reference = ReferenceMUGDiT(cfg).eval()
    reference.load_state_dict(official_to_mugv(to_official(ours), cfg), strict=True)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, cfg.in_channels, 3, 6, 10, generator=g)
    timestep = torch.tensor([300.0, 900.0])
    y = torch.randn(2, 1, 9, cfg.caption_channels, generator=g)
    x_mask = torch.tensor([[False, True, True], [False, False, True]])  # image-to-video: clean first frames
    expected = ours(x, timestep, y, x_mask=x_mask)
    actual = reference(x, timestep, y, x_mask=x_mask)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reference(x, timestep, y), actual)
