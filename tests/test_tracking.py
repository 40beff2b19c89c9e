"""MLflow tracking: a stage run on the default SQLite store, joining a flow's nested run, failures marked."""

from pathlib import Path

import pytest

from mugv import tracking


@pytest.fixture
def cfg(local_tracking):
    return local_tracking


def test_default_uri_is_sqlite_in_project(cfg, tmp_path):
    assert tracking.resolve_uri(cfg) == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"


def test_stage_run_logs_params_metrics_artifacts(cfg, tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# ok\n")
    with tracking.start_stage_run("qc", cfg, params={"qc": {"profile": "synthetic", "x": [1, 2]}}) as run:
        run.log_metrics({"kept": 7, "rejected": 2})
        run.log_artifact(report, "qc")
    r = tracking.get_run(run.run_id, cfg)
    assert r.info.status == "FINISHED"
    assert r.data.params["qc.profile"] == "synthetic"
    assert r.data.params["qc.x"] == "[1, 2]"
    assert r.data.metrics == {"kept": 7.0, "rejected": 2.0}
    assert r.data.tags["mugv.stage"] == "qc"
    assert tracking.list_artifacts(run.run_id, "qc", cfg) == ["qc/report.md"]
    assert (tmp_path / "mlruns.db").exists()


def test_failed_stage_is_marked_failed(cfg):
    with pytest.raises(ValueError):
        with tracking.start_stage_run("ingest", cfg) as run:
            raise ValueError("boom")
    assert tracking.get_run(run.run_id, cfg).info.status == "FAILED"


def test_stage_joins_nested_run_of_pipeline(cfg, monkeypatch):
    with tracking.pipeline_run("pipeline", cfg) as parent:
        child = tracking.child_run(parent.run_id, "synth", cfg, tags={"mugv.dvc_cached": False})
    monkeypatch.setenv("MLFLOW_RUN_ID", child)
    with tracking.start_stage_run("synth", cfg) as run:
        run.log_metrics({"videos": 3})
    tracking.finish_run(child, "FINISHED", cfg, {"dvc.out.data/synth": "abc"})
    r = tracking.get_run(child, cfg)
    assert run.run_id == child
    assert r.data.tags["mlflow.parentRunId"] == parent.run_id
    assert r.data.tags["dvc.out.data/synth"] == "abc"
    assert r.data.metrics["videos"] == 3.0
    assert r.info.status == "FINISHED"


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": "[1, 2]", "d": None}


def test_register_checkpoint_moves_alias_and_resolves(cfg, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights-1")
    (ckpt / "config.json").write_text("{}")
    with tracking.start_stage_run("pretrain@images", cfg) as run:
        v1 = tracking.register_checkpoint(run, ckpt, "dit", tags={"mugv.stage": "images"}, cfg=cfg)
    (ckpt / "model.safetensors").write_bytes(b"weights-2")
    with tracking.start_stage_run("pretrain@video", cfg) as run2:
        v2 = tracking.register_checkpoint(run2, ckpt, "dit", tags={"mugv.stage": "video"}, cfg=cfg)
    assert (v1, v2) == ("1", "2")
    mv = tracking.alias_version("dit", "candidate", cfg)
    assert str(mv.version) == "2" and mv.tags["mugv.stage"] == "video" and mv.run_id == run2.run_id
    assert tracking.alias_version("dit", "champion", cfg) is None
    local = tracking.resolve_model_ref("models:/dit@candidate", cfg)
    assert (local / "model.safetensors").read_bytes() == b"weights-2"
    assert tracking.resolve_model_ref("models:/dit/1", cfg).joinpath("model.safetensors").read_bytes() == b"weights-1"
    assert tracking.resolve_model_ref(ckpt, cfg) == ckpt
    tracking.set_alias("dit", "champion", "1", cfg)
    assert str(tracking.alias_version("dit", "champion", cfg).version) == "1"


def test_nan_and_unused_metrics_are_not_logged(cfg):
    with tracking.start_stage_run("train_vae", cfg) as run:
        run.log_metrics({"train.loss": 0.5, "train.perceptual": float("nan"), "train.disc": None, "inf": float("inf")})
    assert tracking.get_run(run.run_id, cfg).data.metrics == {"train.loss": 0.5}


def test_dirty_tree_is_tagged(cfg, tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("a")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    with tracking.start_stage_run("clean", cfg) as clean:
        pass
    (tmp_path / "a.txt").write_text("changed")
    with tracking.start_stage_run("dirty", cfg) as dirty:
        pass
    assert tracking.get_run(clean.run_id, cfg).data.tags["mugv.git_dirty"] == "false"
    assert tracking.get_run(dirty.run_id, cfg).data.tags["mugv.git_dirty"] == "true"


def _register(cfg, tmp_path, name: str, payload: bytes, description: str | None = None) -> str:
    ckpt = tmp_path / f"ckpt-{name}"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "model.safetensors").write_bytes(payload)
    with tracking.start_stage_run("pretrain@images", cfg) as run:
        return tracking.register_checkpoint(run, ckpt, name, cfg=cfg, description=description)


def test_model_version_has_description(cfg, tmp_path):
    from mlflow import MlflowClient

    version = _register(cfg, tmp_path, "dit", b"w", description="pretrain@images: 60 steps")
    assert MlflowClient().get_model_version("dit", version).description == "pretrain@images: 60 steps"


def test_model_ref_is_downloaded_once_and_leaves_no_temp_folders(cfg, tmp_path, monkeypatch):
    import tempfile

    import mlflow

    _register(cfg, tmp_path, "dit", b"weights")
    downloads = []
    real = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: downloads.append(kw) or real(**kw))
    temp_before = set(Path(tempfile.gettempdir()).glob("mugv-*"))
    first = tracking.resolve_model_ref("models:/dit@candidate", cfg)
    second = tracking.resolve_model_ref("models:/dit/1", cfg)
    assert first == second and (first / "model.safetensors").read_bytes() == b"weights"
    assert len(downloads) == 1
    assert first.is_relative_to(tmp_path / "cache" / "models" / "dit")
    assert set(Path(tempfile.gettempdir()).glob("mugv-*")) == temp_before
    assert not any((tmp_path / "cache" / "models" / ".partial").iterdir())


def test_model_cache_evicts_least_recently_used(cfg, tmp_path, monkeypatch):
    import os
    import time

    for name in ("a", "b", "c"):
        _register(cfg, tmp_path, name, name.encode() * 400_000)  # 400 kB each
    monkeypatch.setenv("MUGV_MODEL_CACHE_GB", "0.001")  # 1 MB: two entries fit, not three
    a = tracking.resolve_model_ref("models:/a/1", cfg)
    b = tracking.resolve_model_ref("models:/b/1", cfg)
    marker_a = next(p for p in (a, *a.parents) if (p / tracking.CACHE_ENTRY_FILE).exists()) / tracking.CACHE_ENTRY_FILE
    os.utime(marker_a, (time.time() - 60, time.time() - 60))  # a used before b
    tracking.resolve_model_ref("models:/b/1", cfg)  # b used again: a stays the least recent
    c = tracking.resolve_model_ref("models:/c/1", cfg)
    assert not a.exists() and b.exists() and c.exists()
    monkeypatch.setenv("MUGV_MODEL_CACHE_GB", "0.0001")  # smaller than one entry: the one in use stays
    killed = tmp_path / "cache" / "models" / ".partial" / "killed"
    killed.mkdir()
    os.utime(killed, (time.time() - 2 * tracking.STALE_DOWNLOAD_S,) * 2)
    assert tracking.resolve_model_ref("models:/a/1", cfg).exists()
    assert not b.exists() and not c.exists() and not killed.exists()


@pytest.mark.slow
def test_pretrain_stage_logs_params_yaml_names_and_describes_its_version(cfg, tmp_path):
    from mlflow import MlflowClient

    from mugv.config import Params
    from mugv.models.text.model import TextEncoderConfig
    from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
    from mugv.stages import pretrain
    from mugv.training.bucket_sampler import BatchingConfig
    from mugv.training.config import CurriculumStage
    from tests.support.latent_set import TEXT_LEN, make_latent_set

    latents = make_latent_set(tmp_path / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    stage_cfg = pretrain.Config(peak_flops=1e10, heldout={"samples": 2}, sample_prompts=["a red ball"], stages=[
        CurriculumStage(name="s", steps=2, batching=BatchingConfig(tokens_per_batch=150))])
    params = Params()
    text = TextEncoderConfig(max_length=TEXT_LEN)
    result = pretrain.run(latents, tmp_path / "run", stage_cfg, cfg, stage="s", vae=tmp_path / "vae",
                          flow=params.diffusion.training, sampler=params.diffusion.sampler.model_copy(update={"steps": 2}),
                          text=text, progress=False)
    version = MlflowClient().get_model_version(cfg.registered_model, str(result["registered_version"]))
    assert version.description.startswith("pretrain@s: 2 steps on ") and "held-out loss " in version.description
    logged = tracking.get_run(version.run_id, cfg).data.params
    yaml_names = set(tracking.flatten(params.model_dump(mode="json")))
    yaml_names |= {f"pretrain.stages.0.{k}" for k in tracking.flatten(stage_cfg.stages[0].model_dump(mode="json"))}
    assert set(logged) <= yaml_names, sorted(set(logged) - yaml_names)
    assert "diffusion.training.image_loss_weight" in logged and "pretrain.stages.0.steps" in logged
    assert not any(name.startswith("pretrain.flow") for name in logged)


@pytest.mark.slow
def test_train_vae_stage_logs_losses_while_training_and_no_nan(cfg, tmp_path, monkeypatch):
    import math

    import mlflow
    import pandas as pd

    from mugv.data.video_io import write_video
    from mugv.stages import train_vae
    from mugv.training import vae_trainer
    from tests.training.test_vae_train import moving_square_clip, small_cfg

    clips, qc = tmp_path / "clips", tmp_path / "qc"
    clips.mkdir(), qc.mkdir()
    rows = []
    for i in range(3):
        write_video(clips / f"c{i}.mp4", moving_square_clip(20, 32, 48, seed=i), fps=8)
        rows.append({"clip_id": f"c{i}", "path": f"c{i}.mp4", "fps": 8.0, "width": 48, "height": 32,
                     "num_frames": 20, "keep": True, "reason": ""})
    pd.DataFrame(rows).to_parquet(qc / "qc.parquet")
    seen_during_training, run_ids = [], set()
    real_train_step = vae_trainer.Run.train_step

    def train_step(run, step_in_phase):  # how many loss points the stage's MLflow run holds as each step starts
        run_id = mlflow.active_run().info.run_id
        run_ids.add(run_id)
        seen_during_training.append(len(mlflow.MlflowClient().get_metric_history(run_id, "train.loss")))
        return real_train_step(run, step_in_phase)

    monkeypatch.setattr(vae_trainer.Run, "train_step", train_step)
    monkeypatch.setattr(vae_trainer, "LOG_EVERY", 2)
    train_vae.run(clips, qc, tmp_path / "vae", small_cfg(), cfg, progress=False)
    assert seen_during_training == [0, 0, 1, 1, 2, 2]  # window means every 2 steps, while training runs
    metrics = tracking.get_run(run_ids.pop(), cfg).data.metrics
    assert "train.loss" in metrics and not {"train.perceptual", "train.adversarial", "train.disc"} & set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
