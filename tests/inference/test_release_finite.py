"""A model with a NaN or an inf anywhere is neither exported as a release nor registered: one line names the tensor."""

import pytest
import torch
from safetensors.torch import save_file

from mugv.inference.release import NonFiniteWeightsError, check_release_finite, export_release
from mugv.models.dit.config import get_preset
from mugv.models.dit.model import MUGDiT
from mugv.models.dit.spec import local_block_spec
from mugv.models.text.config import TextEncoderConfig
from mugv.training.checkpoint import CheckpointConfig, Checkpointer
from mugv.training.config import PretrainConfig
from mugv.training.ema import EMA


def _checkpoint(root, poison_ema: bool):
    torch.manual_seed(0)
    model = MUGDiT(get_preset("tiny"), local_block_spec())
    ema = EMA(model, lambda: MUGDiT(get_preset("tiny"), local_block_spec(), perform_initialization=False), 0.9)
    if poison_ema:
        with torch.no_grad():
            next(iter(ema.model.parameters())).view(-1)[3] = float("nan")
    common = {"stage": "images", "config": PretrainConfig().model_dump(mode="json")}
    return Checkpointer(root, CheckpointConfig(), "data", run_id="run").save(1, model, None, ema, common)


@pytest.mark.usefixtures("process_group")
def test_nan_in_the_ema_weights_refuses_the_release(tmp_path):
    checkpoint = _checkpoint(tmp_path / "ck", poison_ema=True)
    out = tmp_path / "release"
    with pytest.raises(NonFiniteWeightsError, match=r"tensor \S+ holds 1 non-finite") as err:
        export_release(checkpoint, tmp_path / "vae", tmp_path / "latents", TextEncoderConfig(), out)
    assert "\n" not in str(err.value) and "EMA" in str(err.value)
    assert not out.exists()


def _release(path, dit_value: float, vae_value: float):
    (path / "dit").mkdir(parents=True)
    (path / "vae").mkdir()
    save_file({"blocks.0.w": torch.tensor([1.0, dit_value])}, str(path / "dit" / "model.safetensors"))
    save_file({"decoder.w": torch.tensor([vae_value]), "steps": torch.tensor([3])}, str(path / "vae" / "vae.safetensors"))
    return path


@pytest.mark.parametrize("dit_value, vae_value, named", [
    (float("nan"), 0.0, "blocks.0.w"),
    (0.0, float("inf"), "decoder.w"),
])
def test_a_release_with_a_non_finite_tensor_is_not_registered(tmp_path, dit_value, vae_value, named):
    release = _release(tmp_path / "release", dit_value, vae_value)
    with pytest.raises(NonFiniteWeightsError, match=named):
        check_release_finite(release)


def test_a_finite_release_passes(tmp_path):
    check_release_finite(_release(tmp_path / "release", 0.5, 2.0))
