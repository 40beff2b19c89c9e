"""A release's DiT loads as the plain-PyTorch reference (no Megatron), with the Megatron model's outputs."""

import subprocess
import sys

import pytest
import torch

from mugv.inference.release import load_plain_dit
from mugv.models.dit.config import get_preset
from mugv.models.dit.convert import save_mugv
from mugv.models.dit.model import build_model
from mugv.models.dit.spec import local_block_spec


@pytest.mark.usefixtures("process_group")
@torch.no_grad()
def test_plain_dit_of_a_mugv_folder_matches_the_megatron_model(tmp_path):
    torch.manual_seed(0)
    ours = build_model(get_preset("tiny"), local_block_spec()).eval()
    save_mugv(ours, tmp_path / "dit")
    plain = load_plain_dit(tmp_path / "dit")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, ours.dit_config.in_channels, 3, 4, 6, generator=g)
    y = torch.randn(2, 1, 7, ours.dit_config.caption_channels, generator=g)
    inputs = dict(mask=torch.ones(2, 7, dtype=torch.bool), fps=torch.tensor([12.0, 12.0]),
                  x_mask=torch.tensor([[False, True, True]] * 2))
    timestep = torch.tensor([200.0, 800.0])
    torch.testing.assert_close(plain(x, timestep, y, **inputs), ours(x, timestep, y, **inputs), rtol=1e-5, atol=1e-5)


def test_generating_from_a_release_imports_no_megatron():
    code = ("import sys, mugv.inference.generate, mugv.inference.release; "
            "sys.exit('megatron.core' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
