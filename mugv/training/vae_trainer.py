"""The train-vae stage: two-phase VAE training on kept clips, NaN/collapse guard, resumable checkpoints, recon metrics."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from mugv import storage
from mugv.eval.vae import evaluate_vae
from mugv.models.vae import VideoVAE, get_vae_preset, load_vae, save_vae
from mugv.models.vae.discriminator import PatchDiscriminator3D, hinge_discriminator_loss, hinge_generator_loss
from mugv.models.vae.model import kl_to_standard_normal
from mugv.models.vae.perceptual import PerceptualLoss
from mugv.training.config import LRScheduleConfig, VAETrainConfig
from mugv.training.checkpoint_dir import CheckpointDir, step_name
from mugv.training.guard import StepGuard, TrainingDiverged
from mugv.training.lr import LRSchedule
from mugv.progress import heartbeat, stage_progress
from mugv.training.metrics import LogFn, MetricsHistory, window_means
from mugv.training.vae_data import Clip, ClipSampler, MapSampler, clips_fingerprint, kept_clips, split_holdout

__all__ = ["TrainingDiverged", "VAETrainConfig", "train_vae"]

log = logging.getLogger(__name__)

PHASES = ("spatial", "temporal")
LOSS_COLUMNS = ("step", "phase", "loss", "l1", "latent_l1", "kl", "perceptual", "adversarial", "disc", "grad_norm", "status")
STATE = "state.json"  # written last: marks a complete checkpoint
LOG_EVERY = 20  # steps per `log` call: the means of the window's losses (the csv keeps every step)
DIVERGED_HINT = "see Open-Sora-Plan#265/#569: lower lr, raise kl_weight, check the input range [-1, 1]"


def lr_schedule_config(cfg: VAETrainConfig) -> LRScheduleConfig:
    """The schedule of each phase: warm-up to `lr`, then cosine down to `lr * min_lr_ratio` at the phase's end."""
    return LRScheduleConfig(kind="cosine", peak=cfg.lr, warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio)


def _phase_of(cfg: VAETrainConfig, step: int) -> tuple[str, int, int]:
    """(phase, step within phase, steps of the phase) of a global step."""
    if step < cfg.spatial_steps:
        return "spatial", step, cfg.spatial_steps
    return "temporal", step - cfg.spatial_steps, cfg.temporal_steps


def _steps_of(cfg: VAETrainConfig, phase: str) -> int:
    return cfg.spatial_steps if phase == "spatial" else cfg.temporal_steps


def _set_trainable(vae: VideoVAE, phase: str, joint: bool) -> list[torch.nn.Parameter]:
    vae.requires_grad_(False)
    if phase == "spatial" or joint:
        vae.spatial_vae.requires_grad_(True)
        module = vae.spatial_vae.module
        for unused in (module.encoder.conv_norm_out, module.encoder.conv_out, module.decoder.conv_in):
            unused.requires_grad_(False)
    if phase == "temporal":
        vae.temporal_vae.requires_grad_(True)
    return [p for p in vae.parameters() if p.requires_grad]


class Run:
    """One training run's state: model, phase optimizer, discriminator, samplers, RNG, history."""

    def __init__(self, cfg: VAETrainConfig, train_clips: list[Clip], out_dir: Path):
        self.cfg, self.out_dir = cfg, out_dir
        self.data_hash = clips_fingerprint(train_clips)
        torch.manual_seed(cfg.seed)
        self.vae = VideoVAE(get_vae_preset(cfg.preset))
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.images = ClipSampler(train_clips, 1, cfg.crop, self.data_rng, cfg.cache_mb)
        self.videos = ClipSampler(train_clips, cfg.clip_frames, cfg.temporal_crop, self.data_rng, cfg.cache_mb)
        spatial = self.vae.cfg.spatial_factor
        map_crop = (cfg.temporal_crop[0] // spatial, cfg.temporal_crop[1] // spatial)
        self.maps = MapSampler(train_clips, cfg.clip_frames, map_crop, self.data_rng, self._encode_map, cfg.cache_mb)
        self.disc = None
        if cfg.discriminator.enabled:
            d = cfg.discriminator
            self.disc = PatchDiscriminator3D(d.channels, d.layers)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=d.lr, betas=(0.5, 0.9))
        self.perceptual = PerceptualLoss(cfg.perceptual_weights) if cfg.perceptual_weight > 0 else None
        self.guard = StepGuard(cfg.on_nan, cfg.max_bad_steps, hint=DIVERGED_HINT)
        self.folders = CheckpointDir(out_dir / "ckpt", cfg.keep_checkpoints, STATE)
        self.history: list[dict] = []
        self.step = 0
        self.phase = ""
        self.params: list[torch.nn.Parameter] = []
        self.opt: torch.optim.Optimizer | None = None
        self.schedule: LRSchedule | None = None

    # ------------------------------------------------------------------ phases
    def enter_phase(self, phase: str) -> None:
        self.phase = phase
        self.params = _set_trainable(self.vae, phase, self.cfg.joint)
        self.opt = torch.optim.Adam(self.params, lr=self.cfg.lr, betas=(0.9, 0.99))
        steps = max(_steps_of(self.cfg, phase), 1)
        self.schedule = LRSchedule(self.opt, lr_schedule_config(self.cfg), steps, warmup_peak_first=True)

    def _encode_map(self, video: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.spatial_vae.encode(video[None])[0]

    @property
    def uses_cached_maps(self) -> bool:
        """Temporal phase on cached spatial maps: spatial stage frozen and no loss needs pixels."""
        cfg = self.cfg
        return (self.phase == "temporal" and not cfg.joint and cfg.temporal_l1_weight == 0
                and self.perceptual is None and self.disc is None)

    def sample_batch(self) -> torch.Tensor:
        """Spatial phase: frames [N, 3, 1, H, W]; temporal phase: clips [B, 3, T, H, W] or their maps."""
        if self.phase == "spatial":
            return self.images.batch(self.cfg.spatial_batch_frames)
        return (self.maps if self.uses_cached_maps else self.videos).batch(self.cfg.batch_size)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """(total loss, reconstruction, its target, parts) for one batch in the current phase."""
        cfg, vae = self.cfg, self.vae
        parts: dict[str, float] = {}
        if self.phase == "spatial":
            recon, target = vae.spatial_vae.decode(vae.spatial_vae.encode(x)), x
            loss = cfg.l1_weight * (l1 := F.l1_loss(recon, x))
            parts["l1"] = float(l1.detach())
        else:
            cached = self.uses_cached_maps
            with torch.set_grad_enabled(cfg.joint):
                x_z = x if cached else vae.spatial_vae.encode(x)
            mean, logvar = vae.encode_spatial_map(x_z)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            x_z_rec = vae.decode_spatial_map(z, num_frames=x.shape[2])
            latent_l1 = F.l1_loss(x_z_rec, x_z.detach())
            pixel_values = 3 * x.shape[2] * x.shape[3] * x.shape[4] * (64 if cached else 1)
            kl = kl_to_standard_normal(mean, logvar).mean() / pixel_values
            loss = cfg.latent_l1_weight * latent_l1 + cfg.kl_weight * kl
            parts.update(latent_l1=float(latent_l1.detach()), kl=float(kl.detach()))
            if cached:
                recon, target = x_z_rec, x_z
            else:
                recon, target = vae.spatial_vae.decode(x_z_rec), x
                loss = loss + cfg.temporal_l1_weight * (l1 := F.l1_loss(recon, x))
                parts["l1"] = float(l1.detach())
        if self.perceptual is not None:
            frames = lambda v: v.transpose(1, 2).flatten(0, 1)  # noqa: E731
            perceptual = self.perceptual(frames(recon), frames(x))
            loss = loss + cfg.perceptual_weight * perceptual
            parts["perceptual"] = float(perceptual.detach())
        if self.disc is not None and self.step >= cfg.discriminator.start_step:
            adversarial = hinge_generator_loss(self.disc(recon))
            loss = loss + cfg.discriminator.weight * adversarial
            parts["adversarial"] = float(adversarial.detach())
        return loss, recon, target, parts

    def train_step(self, step_in_phase: int) -> None:
        self.schedule.set_step(step_in_phase)
        x = self.sample_batch()
        loss, recon, target, parts = self.losses(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        status = "ok"
        if self.guard.finite_step(self.step, loss.detach(), grad_norm):
            self.opt.step()
            self.guard.check_collapse(self.step, recon, target)
            if self.disc is not None and self.step >= self.cfg.discriminator.start_step:
                disc_loss = hinge_discriminator_loss(self.disc(x), self.disc(recon.detach()))
                self.disc_opt.zero_grad(set_to_none=True)
                disc_loss.backward()
                self.disc_opt.step()
                parts["disc"] = float(disc_loss.detach())
        else:
            self.opt.zero_grad(set_to_none=True)
            status = "skipped"
        self.history.append(
            {"step": self.step, "phase": self.phase, "loss": float(loss.detach()), "grad_norm": float(grad_norm), "status": status, **parts}
        )
        self.step += 1

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        tmp = self.folders.staging(self.step)
        save_file({k: v.contiguous() for k, v in self.vae.state_dict().items()}, str(tmp / "model.safetensors"))
        optim = {"vae": self.opt.state_dict()}
        if self.disc is not None:
            save_file(self.disc.state_dict(), str(tmp / "disc.safetensors"))
            optim["disc"] = self.disc_opt.state_dict()
        torch.save(optim, tmp / "optim.pt")
        torch.save({"torch": torch.get_rng_state(), "data": self.data_rng.get_state()}, tmp / "rng.pt")
        state = {
            "step": self.step,
            "phase": self.phase,
            "config": self._run_config(),
            "history": self.history,
            "guard": self.guard.state_dict(),
        }
        storage.write_text(tmp / STATE, json.dumps(state), durable=True)
        name = step_name(self.step)
        final = self.folders.publish(tmp, name)
        self.folders.rotate(keep_name=name)
        return final

    def _run_config(self) -> dict:
        """What a checkpoint must have been written with to be resumed: the train config, the model sizes
        and the training clips (their checkpoints persist under `dvc repro`: changed kept clips are a new run)."""
        return {"train": self.cfg.model_dump(mode="json"), "model": self.vae.cfg.model_dump(mode="json"),
                "data": self.data_hash}

    def resume(self) -> int | None:
        """Load the checkpoint out_dir/ckpt/latest names; return its step.

        None when there is none, or when it was written with another train or model config (then the stale
        checkpoints are removed and training starts afresh).
        """
        path = self.folders.latest()
        if path is None:
            self.folders.clear()  # no pointer: nothing resumable (e.g. checkpoints of an older layout)
            return None
        state = json.loads((path / STATE).read_text())
        if state["config"] != self._run_config():
            # changed params or preset sizes (e.g. an edited params.yaml under `dvc repro`, or a preset
            # that toggles a weight-free option such as temporal_shortcut) mean a new run, not a resume
            log.warning("%s was written with a different train or model config: starting a new run and replacing %s",
                        path, self.folders.root)
            self.folders.clear()
            return None
        self.vae.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        self.step, self.history = state["step"], state["history"]
        self.guard.load_state_dict(state["guard"])
        phase = _phase_of(self.cfg, self.step)[0] if self.step < self.total_steps else state["phase"]
        self.enter_phase(phase)
        optim = torch.load(path / "optim.pt", weights_only=True)
        if state["phase"] == phase:
            self.opt.load_state_dict(optim["vae"])
        if self.disc is not None:
            self.disc.load_state_dict(load_file(str(path / "disc.safetensors")), strict=True)
            self.disc_opt.load_state_dict(optim["disc"])
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        self.data_rng.set_state(rng["data"])
        return self.step

    @property
    def total_steps(self) -> int:
        return self.cfg.spatial_steps + self.cfg.temporal_steps

    # ------------------------------------------------------------------ loop
    def train(self, progress: bool, log: LogFn | None = None) -> None:
        """Train to the last step: a progress bar (or, with `progress` off, a plain line every few seconds),
        and every LOG_EVERY steps the window's mean losses to `log(metrics, step)` (e.g. the MLflow run)."""
        columns = (TextColumn("train-vae {task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn())
        window: list[dict] = []
        with stage_progress(*columns, enabled=progress) as bar:
            task = bar.add_task("train-vae", total=self.total_steps, completed=self.step, phase="", loss=float("nan"))
            while self.step < self.total_steps:
                phase, in_phase, _ = _phase_of(self.cfg, self.step)
                if phase != self.phase:
                    self.enter_phase(phase)
                self.vae.train()
                self.train_step(in_phase)
                window.append(self.history[-1])
                if log is not None and (self.step % LOG_EVERY == 0 or self.step == self.total_steps):
                    log(window_means(window), window[-1]["step"])
                    window = []
                bar.update(task, advance=1, phase=phase, loss=self.history[-1]["loss"])
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                    self.save_checkpoint()


# ---------------------------------------------------------------------- outputs


def _write_history(history: list[dict], out_dir: Path) -> Path:
    """The loss history as out_dir/plots/loss.csv (LOSS_COLUMNS; dvc plots x: step, y: loss)."""
    writer = MetricsHistory(out_dir, plots={"loss.csv": LOSS_COLUMNS}, jsonl=False)
    writer.start()
    for row in history:
        writer.write(row, row["step"])
    return writer.plots / "loss.csv"


def train_vae(clips_dir: Path, qc_dir: Path, out_dir: Path, cfg: VAETrainConfig, progress: bool = True,
              log: LogFn | None = None) -> dict:
    """Train (or, with cfg.checkpoint, adopt) a VideoVAE on kept clips; write weights, metrics, plots, samples.

    Resumes from the newest checkpoint in out_dir/ckpt. `log(metrics, step)` gets the mean losses every
    LOG_EVERY steps while training runs. Returns a report: metrics and output paths.
    """
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_vae(Path(clips_dir), Path(qc_dir), Path(out_dir), cfg, progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _train_vae(clips_dir: Path, qc_dir: Path, out_dir: Path, cfg: VAETrainConfig, progress: bool,
               log: LogFn | None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = kept_clips(clips_dir, qc_dir)
    train_clips, held_out = split_holdout(clips, cfg.holdout, cfg.seed)
    started = time.perf_counter()
    resumed_from = None
    if cfg.checkpoint:
        vae = load_vae(cfg.checkpoint)
        if vae.compression != (8, 8, 8):
            raise ValueError(f"checkpoint {cfg.checkpoint} compresses {vae.compression}, not (8, 8, 8)")
        history, guard = [], StepGuard(cfg.on_nan, cfg.max_bad_steps, hint=DIVERGED_HINT)
    else:
        with heartbeat(f"train-vae: {len(train_clips)} training clips, {len(held_out)} held out: building the model",
                       enabled=not progress):
            run = Run(cfg, train_clips, out_dir)
            resumed_from = run.resume()
        run.train(progress, log)
        vae, history, guard = run.vae, run.history, run.guard
    train_seconds = time.perf_counter() - started
    weights, config = save_vae(vae, out_dir)
    history_path = _write_history(history, out_dir)
    with heartbeat(f"train-vae: evaluating on {len(held_out)} held-out clips", enabled=not progress):
        metrics = evaluate_vae(vae, held_out, cfg.eval_frames, cfg.samples, out_dir / "samples")
    final = {p: [h["loss"] for h in history if h["phase"] == p and h["status"] == "ok"] for p in PHASES}
    return {
        "trained": cfg.checkpoint is None,
        "preset": vae.cfg.model_dump(mode="json") if cfg.checkpoint else cfg.preset,
        "train_clips": len(train_clips),
        "held_out_clips": [c.clip_id for c in held_out],
        "steps": len(history),
        "resumed_from_step": resumed_from,
        "skipped_steps": guard.skipped,
        "guard_events": guard.events,
        "train_seconds": train_seconds,
        "final_loss": {p: (sum(v[-10:]) / len(v[-10:]) if v else None) for p, v in final.items()},
        "metrics": {**metrics["mean"], "delta_psnr_db": metrics["delta_psnr_db"],
                    "delta_psnr_db_se": metrics["delta_psnr_db_se"], "delta_ssim": metrics["delta_ssim"],
                    "delta_psnr_db_same_count": metrics["delta_psnr_db_same_count"]},
        "recon": metrics,  # the held-out evaluation in full (the stage writes it as its metrics file)
        "paths": {"weights": weights, "config": config,
                  "loss_history": str(history_path), "samples": metrics["samples"], "checkpoints": str(out_dir / "ckpt")},
    }
