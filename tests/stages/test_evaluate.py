"""The evaluate stage: held-out prompts sampled and scored, flow loss and VAE numbers reported, model version tagged."""

import json
import math

import pytest

from mugv import tracking
from mugv.data.config import SynthConfig
from mugv.data.synth import heldout_prompts
from mugv.data.video_io import read_frames
from mugv.diffusion.config import SamplerConfig
from mugv.eval.stats import mean_and_se
from mugv.inference.release import export_release
from mugv.models.text.model import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from mugv.stages import evaluate
from mugv.training.bucket_sampler import BatchingConfig
from mugv.training.config import CurriculumStage, HeldoutConfig, PretrainConfig
from mugv.training.dit_trainer import run_pretrain
from tests.support.latent_set import TEXT_LEN, make_latent_set


@pytest.fixture
def release(tmp_path):
    """A release of a tiny DiT trained 2 steps on a synthetic latent set, with an untrained tiny VAE."""
    latents = make_latent_set(tmp_path / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    cfg = PretrainConfig(peak_flops=1e10, heldout={"samples": 0}, stages=[
        CurriculumStage(name="s", steps=2, batching=BatchingConfig(tokens_per_batch=150))])
    result = run_pretrain(latents, "s", None, tmp_path / "run", cfg, progress=False)
    out = export_release(result["checkpoint"], tmp_path / "vae", latents, TextEncoderConfig(max_length=TEXT_LEN),
                         tmp_path / "release")
    return out, latents


@pytest.mark.slow
def test_evaluate_writes_metrics_plots_grid_and_tags_the_version(release, local_tracking, tmp_path):
    tracker = local_tracking
    release_dir, latents = release
    prompts = tmp_path / "heldout.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in heldout_prompts(SynthConfig())[:2]))
    with tracking.start_stage_run("pretrain@s", tracker, params={}) as run:
        version = tracking.register_checkpoint(run, release_dir, tracker.registered_model, cfg=tracker,
                                               tags={"mugv.release_sha": tracking.folder_fingerprint(release_dir)})
    cfg = evaluate.Config(seeds=2, frames=9, height=32, width=48, grid_scale=1)
    metrics_path = tmp_path / "metrics" / "eval.json"
    report = evaluate.run(release_dir, prompts, latents, None, tmp_path / "eval", cfg, tracker,
                          sampler=SamplerConfig(steps=2), heldout=HeldoutConfig(samples=2, timesteps=[300.0, 700.0]),
                          seed=0, progress=False, metrics_path=metrics_path)

    assert report["samples"] == 4 and report["tagged_versions"] == [int(version)]
    for name in ("background", "shape_colour", "motion", "flicker", "reward"):
        for scored in (name, f"shuffled_{name}"):  # and the chance level: against another prompt's caption
            assert 0.0 <= report["reward"][scored]["mean"] <= 1.0 and report["reward"][scored]["se"] >= 0.0
    assert set(report["flow_loss"]) == {"t300", "t700", "mean"} and math.isfinite(report["flow_loss"]["mean"])
    committed = json.loads(metrics_path.read_text())
    assert committed["samples"] == 4 and "reward_mean" in committed and "flow_loss_t300" in committed
    assert all(isinstance(v, (int, float)) for v in committed.values())  # numbers only: dvc metrics diff
    assert read_frames(tmp_path / "eval" / evaluate.GRID).shape == (9, 2 * 32, 2 * 48, 3)  # prompts x seeds
    assert len(list((tmp_path / "eval" / evaluate.SAMPLES).glob("*.mp4"))) == 4
    assert (tmp_path / "eval" / evaluate.COMPONENTS).read_text().startswith("component,mean,se")

    tags = tracking._mlflow(tracker).MlflowClient().get_model_version(tracker.registered_model, version).tags
    assert float(tags["eval.reward_mean"]) == pytest.approx(committed["reward_mean"], rel=1e-3)
    assert tags["eval.run_id"]


def test_standard_error_of_the_mean():
    mean, se = mean_and_se([1.0, 2.0, 3.0, float("nan")])
    assert mean == 2.0 and se == pytest.approx(1.0 / math.sqrt(3))
    assert mean_and_se([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_and_se([]))
