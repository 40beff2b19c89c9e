"""Stage modules: each owns its params section and output names, and `run()` does every step of its stage."""

import importlib
import json

import pytest

from mugv.config import Params
from mugv.models.text.model import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from mugv.training.bucket_sampler import BatchingConfig
from mugv.training.config import CurriculumStage
from tests.support.latent_set import TEXT_LEN, make_latent_set

STAGES = ("synth", "ingest", "qc", "train_vae", "encode", "pretrain")


@pytest.mark.parametrize("name", STAGES)
def test_each_params_section_is_its_stage_modules_config(name):
    stage = importlib.import_module(f"mugv.stages.{name}")
    assert Params.model_fields[name].annotation is stage.Config
    assert callable(stage.run) and stage.__doc__ and "\n" not in stage.__doc__.strip()


@pytest.mark.slow
def test_pretrain_stage_trains_releases_and_renders_samples(tmp_path):
    from mugv.stages import pretrain

    latents = make_latent_set(tmp_path / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    cfg = pretrain.Config(peak_flops=1e10, heldout={"samples": 0}, sample_prompts=["a red ball"], stages=[
        CurriculumStage(name="s", steps=2, batching=BatchingConfig(tokens_per_batch=150))])
    params = Params()
    out = tmp_path / "run"
    result = pretrain.run(latents, out, cfg, None, stage="s", vae=tmp_path / "vae", flow=params.diffusion.training,
                          sampler=params.diffusion.sampler.model_copy(update={"steps": 2}),
                          text=TextEncoderConfig(max_length=TEXT_LEN), progress=False,
                          metrics_path=tmp_path / "key_metrics.json")
    assert result["samples"] == 1 and "registered_version" not in result  # no tracker: nothing registered
    assert (out / pretrain.SAMPLES / "prompt_00.mp4").exists()
    assert (out / pretrain.RELEASE).is_dir() and (out / pretrain.CHECKPOINTS).is_dir()
    assert json.loads((out / pretrain.SUMMARY).read_text())["checkpoint"] == result["checkpoint"]
    key = json.loads((tmp_path / "key_metrics.json").read_text())
    assert set(key) <= set(pretrain.KEY_NUMBERS) and key["steps"] == 2  # no timings, no paths (no held-out set here)


def test_stage_output_names_are_the_files_their_libraries_write():
    from mugv.data import encode as encoder
    from mugv.stages import encode, pretrain
    from mugv.training import checkpoint, dit_trainer

    assert checkpoint.CHECKPOINTS == pretrain.CHECKPOINTS
    assert (encoder.ENCODE_REPORT, encoder.BUCKET_FILL) == (encode.REPORT, encode.FILL)



@pytest.mark.slow
def test_pretrain_stage_under_torchrun_dp2_releases_from_rank_0_alone(tmp_path):
    """Both ranks train; rank 0 then exports, renders and writes metrics after the job's group is gone."""
    import socket
    import sys

    from mugv.stages import pretrain
    from tests.support.subprocesses import run_in_own_session

    latents = make_latent_set(tmp_path / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    cfg = pretrain.Config(peak_flops=1e10, heldout={"samples": 0}, sample_prompts=["a red ball"],
                          parallel={"dp": 2}, stages=[
                              CurriculumStage(name="s", steps=2, batching=BatchingConfig(tokens_per_batch=150))])
    spec = {"latents": str(latents), "out": str(tmp_path / "run"), "config": cfg.model_dump(mode="json"),
            "stage": "s", "vae": str(tmp_path / "vae"), "text_len": TEXT_LEN,
            "metrics": str(tmp_path / "key_metrics.json"), "result": str(tmp_path / "result.json")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "tests/support/pretrain_stage_worker.py", str(tmp_path / "spec.json")]
    code, log = run_in_own_session(cmd, tmp_path / "log.txt", timeout=300)
    assert code == 0, log[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    out = tmp_path / "run"
    assert result["samples"] == 1 and (out / pretrain.SAMPLES / "prompt_00.mp4").exists()
    assert (out / pretrain.RELEASE).is_dir()
    assert json.loads((tmp_path / "key_metrics.json").read_text())["steps"] == 2
