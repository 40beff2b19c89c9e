"""train_vae: outputs, metrics, NaN/collapse guard, resume from checkpoint, loss goes down; metric helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from mugv.data.video_io import probe, write_video
from mugv.eval.reconstruction import psnr, ssim, trilinear_baseline
from mugv.models.vae import load_vae
from mugv.models.vae.config import PRESETS
from mugv.models.vae.perceptual import PerceptualLoss, _vgg16_features
from mugv.training import vae_trainer
from mugv.training.vae_data import Clip, eval_video
from mugv.training.guard import StepGuard, TrainingDiverged
from mugv.stages import train_vae as train_vae_stage
from mugv.training.vae_trainer import VAETrainConfig, train_vae


def moving_square_clip(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 / width, yy * 255 / height, np.full_like(xx, rng.integers(40, 200))], -1)
    colour = rng.integers(0, 255, 3)
    out = []
    for t in range(frames):
        img = background.copy()
        x0, y0 = (4 + 2 * t) % (width - 10), (3 + t) % (height - 10)
        img[y0 : y0 + 10, x0 : x0 + 10] = colour
        out.append(img.astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vae_data")
    clips_dir, qc_dir = root / "clips", root / "qc"
    clips_dir.mkdir()
    qc_dir.mkdir()
    rows = []
    for i in range(5):
        frames = moving_square_clip(20, 32, 48, seed=i)
        write_video(clips_dir / f"c{i}.mp4", frames, fps=8)
        rows.append({"clip_id": f"c{i}", "path": f"c{i}.mp4", "fps": 8.0, "width": 48, "height": 32,
                     "num_frames": 20, "keep": i != 4, "reason": ""})
    pd.DataFrame(rows).to_parquet(qc_dir / "qc.parquet")
    return clips_dir, qc_dir


def small_cfg(**overrides) -> VAETrainConfig:
    base = dict(spatial_steps=3, temporal_steps=3, crop=(32, 32), temporal_crop=(32, 32), clip_frames=9,
                spatial_batch_frames=4, batch_size=1, holdout=1, eval_frames=9, checkpoint_every=2, samples=1,
                warmup_steps=1)
    return VAETrainConfig(**{**base, **overrides})


def test_train_writes_weights_metrics_plots_samples(dataset, tmp_path):
    cfg = small_cfg(discriminator={"enabled": True, "start_step": 4, "channels": 8, "layers": 2})
    report = train_vae_stage.run(*dataset, tmp_path, cfg, progress=False,
                                 metrics_path=tmp_path / "key_metrics.json")  # the stage writes both files
    assert report["trained"] and report["steps"] == 6 and report["skipped_steps"] == 0
    assert report["train_clips"] == 3 and len(report["held_out_clips"]) == 1  # c4 is not kept
    key = json.loads((tmp_path / "key_metrics.json").read_text())
    assert (key["steps"], key["train_clips"], key["held_out_clips"]) == (6, 3, 1)
    assert set(key["final_loss"]) == {"spatial", "temporal"} and "train_seconds" not in key
    metrics = json.loads((tmp_path / "recon_report.json").read_text())
    assert len(metrics["per_clip"]) == 1
    clip = metrics["per_clip"][0]
    assert clip["vae_values_kept"] == pytest.approx(8 * clip["baseline_values_kept"])
    assert np.isfinite([clip["vae_psnr"], clip["baseline_psnr"], clip["vae_ssim"]]).all()
    assert report["metrics"]["delta_psnr_db"] == pytest.approx(clip["vae_psnr"] - clip["baseline_psnr"])
    history = pd.read_csv(tmp_path / "plots" / "loss.csv")
    assert list(history["phase"]) == ["spatial"] * 3 + ["temporal"] * 3
    assert history["adversarial"].notna().sum() == 2 and history["disc"].notna().sum() == 2
    sample = probe(report["paths"]["samples"][0])
    assert (sample.width, sample.height, sample.num_frames) == (3 * 48, 32, 9)  # original | recon | baseline
    vae = load_vae(tmp_path)
    assert vae.compression == (8, 8, 8)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step_*")) == ["step_0000004", "step_0000006"]


def test_checkpoint_choice_skips_training(dataset, tmp_path):
    train_vae(*dataset, tmp_path / "trained", small_cfg(spatial_steps=1, temporal_steps=1), progress=False)
    report = train_vae_stage.run(*dataset, tmp_path / "adopted", small_cfg(checkpoint=str(tmp_path / "trained")),
                                 progress=False)
    assert not report["trained"] and report["steps"] == 0
    a, b = load_file(str(tmp_path / "trained" / "vae.safetensors")), load_file(report["paths"]["weights"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "adopted" / "recon_report.json").exists()


def _poison_at(monkeypatch, steps: set[int]):
    real = vae_trainer.Run.sample_batch

    def sample_batch(self):
        x = real(self)
        return torch.full_like(x, float("nan")) if self.step in steps else x

    monkeypatch.setattr(vae_trainer.Run, "sample_batch", sample_batch)


def test_nan_step_is_skipped_and_counted(dataset, tmp_path, monkeypatch):
    _poison_at(monkeypatch, {2})
    report = train_vae(*dataset, tmp_path, small_cfg(), progress=False)
    assert report["skipped_steps"] == 1 and "step 2: non-finite loss" in report["guard_events"][0]
    weights = load_file(report["paths"]["weights"])
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert pd.read_csv(tmp_path / "plots" / "loss.csv")["status"].tolist().count("skipped") == 1


def test_nan_stops_when_asked_or_when_it_persists(dataset, tmp_path, monkeypatch):
    _poison_at(monkeypatch, {1})
    with pytest.raises(TrainingDiverged, match="step 1: non-finite loss.*on_nan=stop"):
        train_vae(*dataset, tmp_path / "stop", small_cfg(on_nan="stop"), progress=False)
    _poison_at(monkeypatch, {0, 1, 2, 3})
    with pytest.raises(TrainingDiverged, match="3 bad step"):
        train_vae(*dataset, tmp_path / "persist", small_cfg(max_bad_steps=3), progress=False)


def test_collapsed_reconstruction_is_reported():
    guard = StepGuard(on_nan="skip", max_bad_steps=2)
    target = torch.rand(1, 3, 4, 8, 8)
    guard.check_collapse(0, torch.zeros_like(target), target)
    assert guard.collapsed == 1 and "decoder collapsed" in guard.events[0]
    guard.check_collapse(1, target, target)  # a healthy step resets the streak
    guard.check_collapse(2, torch.zeros_like(target), target)
    with pytest.raises(TrainingDiverged, match="decoder collapsed"):
        guard.check_collapse(3, torch.zeros_like(target), target)


def test_killed_run_resumes_from_last_checkpoint(dataset, tmp_path, monkeypatch):
    cfg = small_cfg(spatial_steps=3, temporal_steps=4, checkpoint_every=2)
    train_vae(*dataset, tmp_path / "whole", cfg, progress=False)

    real = vae_trainer.Run.train_step

    def killed_at_step_5(self, *args):
        if self.step == 5:
            raise KeyboardInterrupt
        real(self, *args)

    monkeypatch.setattr(vae_trainer.Run, "train_step", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_vae(*dataset, tmp_path / "killed", cfg, progress=False)
    monkeypatch.setattr(vae_trainer.Run, "train_step", real)
    report = train_vae(*dataset, tmp_path / "killed", cfg, progress=False)
    assert report["resumed_from_step"] == 4 and report["steps"] == 7
    whole = load_file(str(tmp_path / "whole" / "vae.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "vae.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # changed params (an edited params.yaml under dvc repro): a new run replaces the stale checkpoints
    changed = train_vae(*dataset, tmp_path / "killed", small_cfg(lr=1e-4), progress=False)
    assert changed["resumed_from_step"] is None and changed["steps"] == 6
    states = [json.loads((p / "state.json").read_text()) for p in (tmp_path / "killed" / "ckpt").glob("step_*")]
    assert states and all(state["config"]["train"]["lr"] == 1e-4 for state in states)
    # same params, other model sizes (a weight-free option, so the state dict would still load): a new run too
    toggled_preset = {**PRESETS["tiny"], "temporal_shortcut": not PRESETS["tiny"].get("temporal_shortcut", False)}
    monkeypatch.setitem(PRESETS, "tiny", toggled_preset)
    toggled = train_vae(*dataset, tmp_path / "killed", small_cfg(lr=1e-4), progress=False)
    assert toggled["resumed_from_step"] is None and toggled["steps"] == 6
    monkeypatch.undo()


def test_changed_training_clips_start_a_new_run(dataset, tmp_path):
    """Checkpoints persist under dvc repro: a rerun after qc kept other clips must not resume the old run."""
    clips_dir, qc_dir = dataset
    cfg = small_cfg()
    train_vae(clips_dir, qc_dir, tmp_path / "vae", cfg, progress=False)
    again = train_vae(clips_dir, qc_dir, tmp_path / "vae", cfg, progress=False)
    assert again["resumed_from_step"] == 6  # the same run: resumed at its end, nothing retrained
    other_qc = tmp_path / "qc"
    other_qc.mkdir()
    table = pd.read_parquet(qc_dir / "qc.parquet")
    table.loc[table["clip_id"] == "c4", "keep"] = True
    table.to_parquet(other_qc / "qc.parquet")
    changed = train_vae(clips_dir, other_qc, tmp_path / "vae", cfg, progress=False)
    assert changed["resumed_from_step"] is None and changed["steps"] == 6


@pytest.mark.parametrize("joint", [False, True])
def test_temporal_phase_freezes_the_spatial_stage_unless_joint(dataset, tmp_path, joint):
    cfg = small_cfg(spatial_steps=2, temporal_steps=2, checkpoint_every=2, joint=joint, temporal_l1_weight=float(joint))
    train_vae(*dataset, tmp_path, cfg, progress=False)
    after_spatial = load_file(str(tmp_path / "ckpt" / "step_0000002" / "model.safetensors"))
    final = load_file(str(tmp_path / "vae.safetensors"))
    spatial = [k for k in final if k.startswith("spatial_vae.")]
    changed = {k for k in spatial if not torch.equal(after_spatial[k], final[k])}
    assert bool(changed) == joint
    assert any(not torch.equal(after_spatial[k], final[k]) for k in final if k.startswith("temporal_vae."))


@pytest.mark.slow
def test_loss_decreases(dataset, tmp_path):
    cfg = small_cfg(spatial_steps=40, temporal_steps=30, checkpoint_every=100, lr=3e-3, warmup_steps=5)
    train_vae(*dataset, tmp_path, cfg, progress=False)
    history = pd.read_csv(tmp_path / "plots" / "loss.csv")
    for phase in ("spatial", "temporal"):
        losses = history[history["phase"] == phase]["loss"].to_numpy()
        assert losses[-8:].mean() < 0.7 * losses[:8].mean(), phase


def test_psnr_ssim_and_baseline():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 9, 32, 32, generator=g) * 2 - 1
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert psnr(x, x) == float("inf") and ssim(x, x) == pytest.approx(1.0)
    assert 15 < psnr(noisy, x) < 30 and ssim(noisy, x) < ssim(x * 0.99, x) < 1.0
    base = trilinear_baseline(x, (8, 8, 8))
    assert base.shape == x.shape
    flat = torch.full_like(x, 0.3)
    torch.testing.assert_close(trilinear_baseline(flat, (8, 8, 8)), flat)


def test_perceptual_loss_from_local_weights(tmp_path):
    torch.manual_seed(0)
    weights = {f"features.{k}": v for k, v in _vgg16_features().state_dict().items()}
    save_file(weights, str(tmp_path / "vgg16.safetensors"))
    loss = PerceptualLoss(tmp_path / "vgg16.safetensors")
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(a, a).item() == 0 and loss(a, b).item() > 0
    with pytest.raises(ValueError, match="perceptual_weights"):
        VAETrainConfig(perceptual_weight=0.1)
    with pytest.raises(ValueError, match="temporal_l1_weight"):
        VAETrainConfig(joint=True)


def test_map_windows_of_clips_of_different_sizes_batch_together(tmp_path):
    """A temporal crop larger than some clips' maps is clamped to the smallest map: batches stack."""
    from mugv.training.vae_data import Clip, MapSampler

    clips = []
    for i, (h, w) in enumerate(((32, 48), (48, 32))):
        write_video(tmp_path / f"c{i}.mp4", moving_square_clip(12, h, w, seed=i), fps=8)
        clips.append(Clip(f"c{i}", tmp_path / f"c{i}.mp4", 8.0, w, h, 12))
    pool = lambda video: torch.nn.functional.avg_pool3d(video, (1, 8, 8))  # noqa: E731  [3, T, H/8, W/8]
    sampler = MapSampler(clips, 9, (16, 16), torch.Generator().manual_seed(0), pool)
    assert sampler.crop == (4, 4)
    assert sampler.batch(6).shape == (6, 3, 9, 4, 4)


@pytest.mark.parametrize("frames,expected", [(12, 9), (17, 17), (30, 17), (1, 1)])
def test_eval_video_takes_the_longest_8k_plus_1_prefix(tmp_path, frames, expected):
    path = tmp_path / "c.mp4"
    write_video(path, moving_square_clip(frames, 36, 44, seed=0), fps=8)
    video = eval_video(Clip("c", path, 8.0, 44, 36, frames), max_frames=17)
    assert video.shape == (3, expected, 32, 40)  # centre-cropped to multiples of 8


def test_log_callback_gets_finite_losses_while_training_and_changes_nothing(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vae_trainer, "LOG_EVERY", 2)
    monkeypatch.setenv("MUGV_PROGRESS_EVERY_S", "0")  # a progress line at every step
    calls = []
    train_vae(*dataset, tmp_path / "logged", small_cfg(), progress=False, log=lambda m, step: calls.append((step, m)))
    assert [step for step, _ in calls] == [1, 3, 5]  # every 2 steps, during training
    assert all(set(m) >= {"loss", "grad_norm"} and not set(m) & {"perceptual", "adversarial", "disc", "phase"} for _, m in calls)
    assert all(np.isfinite(list(m.values())).all() for _, m in calls)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train-vae: ")]
    assert lines[0] == "train-vae: 3 training clips, 1 held out: building the model"
    assert lines[1].startswith("train-vae: 1/6 (17%) phase spatial, loss ") and "ETA" in lines[1]
    assert len(lines) >= 6 and "evaluating" in lines[-1]
    # progress lines and the callback change no number: the same weights as a silent run
    train_vae(*dataset, tmp_path / "silent", small_cfg(), progress=True)
    logged, silent = load_file(str(tmp_path / "logged" / "vae.safetensors")), load_file(str(tmp_path / "silent" / "vae.safetensors"))
    assert logged.keys() == silent.keys() and all(torch.equal(logged[k], silent[k]) for k in logged)


def test_held_out_samples_are_published_whole_or_not_at_all(tmp_path, monkeypatch):
    """A run that dies while writing the side-by-side samples leaves the previous samples folder untouched."""
    from mugv.eval import vae as vae_eval
    from mugv.models.vae import VideoVAE, get_vae_preset

    clips = []
    for i in range(3):
        write_video(tmp_path / f"c{i}.mp4", moving_square_clip(9, 32, 32, seed=i), fps=8)
        clips.append(Clip(f"c{i}", tmp_path / f"c{i}.mp4", 8.0, 32, 32, 9))
    vae, samples = VideoVAE(get_vae_preset("tiny")), tmp_path / "samples"
    first = vae_eval.evaluate_vae(vae, clips, 9, 3, samples)
    assert first["samples"] == [str(samples / f"c{i}.mp4") for i in range(3)]
    before = {p.name: p.read_bytes() for p in samples.iterdir()}

    written = []

    def dies_on_the_second(path, *args, **kwargs):
        if written:
            raise KeyboardInterrupt  # killed mid-way
        written.append(path)
        return write_video(path, *args, **kwargs)

    monkeypatch.setattr(vae_eval, "write_video", dies_on_the_second)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.5)  # a different model: different samples, had they been published
    with pytest.raises(KeyboardInterrupt):
        vae_eval.evaluate_vae(vae, clips, 9, 3, samples)
    assert {p.name: p.read_bytes() for p in samples.iterdir()} == before
    assert not list(tmp_path.glob(".samples.*"))  # no staging folder left behind
