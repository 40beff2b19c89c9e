"""A release registered as a pyfunc model: `mlflow.pyfunc.load_model("models:/...@champion").predict` writes videos,
and `resolve_model_ref` of the same version still gives the release folder."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mugv import tracking
from mugv.data.video_io import read_frames
from mugv.inference.release import MANIFEST, is_release
from mugv.latents.shards import STATS, TEXT_NULL
from mugv.models.dit.config import get_preset
from mugv.models.dit.reference import ReferenceMUGDiT
from mugv.models.text.config import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from mugv.registry.promotion import PromotionConfig, promote
from mugv.registry.pyfunc_model import decode_image, log_release_model
from tests.support.latent_set import TEXT_LEN, make_latent_set


def make_release(root):
    """A release folder of an untrained tiny DiT and tiny VAE (plain PyTorch: no Megatron, no training)."""
    torch.manual_seed(0)
    latents = make_latent_set(root / "latents-set")
    release = root / "release"
    dit = ReferenceMUGDiT(get_preset("tiny"))
    (release / "dit").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(release / "dit" / "model.safetensors"))
    (release / "dit" / "config.json").write_text(dit.cfg.model_dump_json())
    save_vae(VideoVAE(get_vae_preset("tiny")), release / "vae")
    (release / "latents").mkdir()
    for name in (STATS, TEXT_NULL):
        (release / "latents" / name).write_bytes((latents / name).read_bytes())
    (release / MANIFEST).write_text(json.dumps({"text_encoder": TextEncoderConfig(max_length=TEXT_LEN).model_dump(
        mode="json"), "time_shift": None}))
    return release


def _png(height: int, width: int) -> str:
    import cv2

    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return base64.b64encode(encoded.tobytes()).decode()


@pytest.mark.slow
def test_champion_loads_as_pyfunc_and_renders_videos(local_tracking, tmp_path):
    import mlflow
    import pandas as pd

    tracker = local_tracking
    release = make_release(tmp_path)
    with tracking.start_stage_run("pretrain@s", tracker) as run:
        version = log_release_model(run, release, tracker.registered_model, cfg=tracker,
                                    tags={"mugv.release_sha": tracking.folder_fingerprint(release)})
    mv = tracking.alias_version(tracker.registered_model, "candidate", tracker)
    assert str(mv.version) == version and mv.tags["mugv.run_id"] == run.run_id
    tracking.tag_model_version(mv, {"eval.reward_mean": "0.5"}, tracker)
    assert promote(PromotionConfig(), tracker, tracker.registered_model).outcome == "promoted"

    # the same version is still a release folder for generate and evaluate
    local = tracking.resolve_model_ref(f"models:/{tracker.registered_model}@candidate", tracker)
    assert is_release(local) and tracking.folder_fingerprint(local) == tracking.folder_fingerprint(release)
    assert [int(v.version) for v in tracking.model_versions_of(release, tracker)] == [int(version)]

    model = mlflow.pyfunc.load_model(f"models:/{tracker.registered_model}@champion")
    assert [c.name for c in model.metadata.signature.inputs.inputs][:2] == ["prompt", "image"]
    rows = pd.DataFrame([
        {"prompt": "a red circle moves left", "frames": 9, "height": 32, "width": 48, "seed": 1, "steps": 2},
        {"prompt": "a red circle moves left", "image": _png(40, 40), "frames": 1, "height": 16, "width": 32,
         "seed": 2, "steps": 2},
    ])
    out = model.predict(rows, params={"output_dir": str(tmp_path / "videos"), "fps": 8.0})
    assert list(out["frames"]) == [9, 1] and list(out["seed"]) == [1, 2]
    first, second = (read_frames(path) for path in out["video"])
    assert first.shape == (9, 32, 48, 3) and first.dtype == np.uint8
    assert second.shape == (1, 16, 32, 3)
    assert all(str(tmp_path / "videos") in path for path in out["video"])


def test_image_is_decoded_to_the_frame_size_and_bad_input_is_named():
    image = decode_image(_png(30, 60), 16, 32)
    assert image.shape == (16, 32, 3) and image.dtype == np.uint8
    with pytest.raises(ValueError, match="base64-encoded PNG or JPEG"):
        decode_image(base64.b64encode(b"not an image").decode(), 16, 16)
