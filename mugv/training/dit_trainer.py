"""Curriculum pretraining of MUGDiT with rectified flow: the Trainer and the stage entry point run_pretrain."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mugv import storage
from mugv.latents.heldout import heldout_sample_ids, seed_of
from mugv.latents.shards import LatentDataset
from mugv.diffusion.config import FlowTrainingConfig
from mugv.diffusion.loss import flow_matching_loss, per_sample_mse, sample_weights, velocity_channels, drop_captions
from mugv.diffusion.schedule import add_noise, sample_timesteps, shift_ratio_for_latent
from mugv.models.dit.model import MUGDiT
from mugv.models.dit.config import ParallelDims, get_preset
from mugv.models.dit.convert import CONFIG_FILE, converted_format, load_converted_into
from mugv.models.dit.spec import default_block_spec
from mugv.training.batches import Batch, BatchReader
from mugv.training.checkpoint import META, Checkpointer, dataset_fingerprint, load_checkpoint, resolve_checkpoint, run_identity
from mugv.training.config import PretrainConfig
from mugv.training.ema import EMA
from mugv.training.guard import StepGuard
from mugv.planning.flops import dit_flops
from mugv.progress import LineProgress, heartbeat, stage_progress
from mugv.training.metrics import LogFn, MetricsHistory, measure_matmul_flops, memory_gib
from mugv.training.optimizer import build_optimizer
from mugv.training.distributed import init_parallel
from mugv.training.bucket_sampler import BucketBatchSampler, StepBatches
from mugv.training.lr import LRSchedule


class Trainer:
    """One curriculum stage: `Trainer(cfg, stage, latents_dir, out_dir).train()`.

    Builds parallel state, model, optimizer, EMA, lr schedule, sampler and checkpointer; resumes
    from `out_dir/checkpoints/latest` if it exists, else starts from `init_from` (the previous
    stage's checkpoint, or the weights of a converted DiT folder or release) or from scratch.
    """

    def __init__(self, cfg: PretrainConfig, stage: str, latents_dir: Path, out_dir: Path,
                 init_from: Path | None = None, log: LogFn | None = None, progress: bool = True,
                 flow: FlowTrainingConfig | None = None, include: set[str] | None = None) -> None:
        self.cfg, self.stage = cfg, cfg.stage(stage)
        self.flow = flow or FlowTrainingConfig()  # params diffusion.training
        self.out_dir, self.init_from, self.progress = Path(out_dir), init_from, progress
        self.include = include
        self.dit = get_preset(cfg.model, **{**cfg.model_overrides, "class_dropout_prob": 0.0})
        world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
        dp = cfg.parallel.data_parallel_size(self.dit, world)
        init_parallel(cfg.parallel.tp, cfg.parallel.pp, seed=cfg.seed, cp=cfg.parallel.cp)
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        self.is_main = dist.get_rank() == 0

        torch.manual_seed(cfg.seed)
        self.model = self.build_model(perform_initialization=True).train()
        self.prepare_model()
        self.optimizer = build_optimizer(self.model, cfg.optimizer, self.device)
        self.ema = EMA(self.model, self.build_model, cfg.ema.decay) if cfg.ema.enabled else None
        self.schedule = LRSchedule(self.optimizer, self.stage.lr, self.stage.steps)

        self.dataset = LatentDataset(latents_dir, cache_mb=cfg.data_cache_mb)
        self.reader = BatchReader(self.dataset, self.device)
        self.sample_ids = self.dataset.index["sample_id"].tolist()
        heldout = heldout_sample_ids(self.sample_ids, cfg.heldout.samples, cfg.seed)
        self.heldout_rows = [self.sample_ids.index(sid) for sid in heldout]
        # `include`: train on these samples only (SFT's curated subset); the held-out ones never
        excluded = set(heldout) | (set(self.sample_ids) - set(include) if include is not None else set())
        self.sampler = self.build_sampler(dp, excluded)
        mirror = f"{cfg.checkpoint.mirror.rstrip('/')}/{self.stage.name}" if cfg.checkpoint.mirror else None
        self.checkpointer = Checkpointer(self.out_dir / "checkpoints", cfg.checkpoint, dataset_fingerprint(latents_dir),
                                         mirror, run_id=self.run_id())
        self.history = MetricsHistory(self.out_dir, log) if self.is_main else None
        # the optimizer has applied the gradients when their norm is known: a non-finite step stops the run
        self.guard = StepGuard(on_nan="stop", max_bad_steps=1)
        self.peak_flops = cfg.peak_flops or measure_matmul_flops(self.device, self.compute_dtype)
        self.step = 0

    def prepare_model(self) -> None:
        """Hook run on the freshly built model before the optimizer sees its parameters (post-training adds LoRA)."""

    def build_sampler(self, dp: int, excluded: set[str]):
        """The stream of step batches: single-bucket micro-batches of the latent set, `excluded` sample ids left out."""
        return BucketBatchSampler(
            self.dataset.index, self.stage.batching, self.cfg.seed, parallel_state.get_data_parallel_rank(), dp,
            self.cfg.micro_batches, exclude=excluded, patch_size=self.dit.patch_size,
            start_end_tokens=self.dit.start_end_tokens,
        )

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device.type == "cuda" and self.cfg.bf16 else torch.float32

    def build_model(self, perform_initialization: bool = False) -> MUGDiT:
        parallel = self.cfg.parallel
        layout = ParallelDims(tp=parallel.tp, cp=parallel.cp, sequence_parallel=parallel.sequence_parallel)
        model = MUGDiT(self.dit, default_block_spec(), parallel=layout,
                       perform_initialization=perform_initialization, recompute=parallel.recompute)
        return model.to(self.device)

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        with heartbeat(f"pretrain {self.stage.name}: loading the starting weights, held-out loss",
                       enabled=self.is_main and not self.progress):
            self.load_or_init()
            if self.step == 0:
                self.record({"heldout_loss": self.heldout_loss()})
        window: list[tuple[float, float, StepBatches, float]] = []
        with self.progress_bar() as bar:
            task = bar.add_task(self.stage.name, total=self.stage.steps, completed=self.step, loss=float("nan"))
            while self.step < self.stage.steps:
                started = time.perf_counter()
                batches = self.sampler.next_step()
                loss, grad_norm = self.train_step(batches)
                self.step += 1
                window.append((loss, grad_norm, batches, time.perf_counter() - started))
                last = self.step == self.stage.steps
                if self.step % self.cfg.log_every == 0 or last:
                    self.record(self.window_metrics(window))
                    window = []
                if self.step % self.cfg.heldout.every == 0 or last:
                    self.record({"heldout_loss": self.heldout_loss()})
                if self.step % self.cfg.checkpoint.every == 0 or last:
                    self.save()
                bar.update(task, completed=self.step, loss=loss)
        return self.summary()

    def train_step(self, batches: StepBatches) -> tuple[float, float]:
        """Forward/backward every local micro-batch, then reduce, clip, update, lr step, EMA; stop on non-finite."""
        self.optimizer.zero_grad()
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(batches.local):
            with self.optimizer.accumulating(last=i == len(batches.local) - 1):
                loss = self.loss(self.reader.read(micro.rows), micro.index, batches.global_samples)
                loss.backward()
            total += loss.detach()
        grad_norm = self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if parallel_state.get_data_parallel_world_size() > 1:
            dist.all_reduce(total, group=parallel_state.get_data_parallel_group())
        self.guard.finite_step(self.step, total, grad_norm)
        return float(total), grad_norm

    def loss(self, batch: Batch, micro_index: int, global_samples: int) -> torch.Tensor:
        """This micro-batch's share of the step loss: sum of weighted per-sample losses / global samples."""
        noise, t, y, mask = self.noise_and_conditioning(batch, micro_index)
        with self.autocast():
            out = self.model(add_noise(batch.x0, noise, t), t, y, mask, fps=batch.fps)
        weights = sample_weights(batch.is_image, self.flow.image_loss_weight)
        return flow_matching_loss(out, batch.x0, noise, weights=weights) * batch.size / global_samples

    def noise_and_conditioning(self, batch: Batch, micro_index: int):
        """Noise, timestep and caption dropout of each sample, from a generator seeded by (seed, micro-batch,
        sample id): identical on every TP rank and independent of the DP layout."""
        flow = self.flow
        ratio = (shift_ratio_for_latent(*batch.x0.shape[2:], base_resolution=flow.shift_base_pixels)
                 if flow.resolution_shift else 1.0)
        noises, timesteps, ys, masks = [], [], [], []
        for i, row in enumerate(batch.rows):
            g = torch.Generator().manual_seed(seed_of(self.cfg.seed, micro_index, self.sample_ids[row]))
            timesteps.append(sample_timesteps(1, ratio, g, flow.timestep_loc, flow.timestep_scale))
            noises.append(torch.randn(batch.x0.shape[1:], generator=g))
            y, mask, _ = drop_captions(batch.y[i : i + 1], batch.mask[i : i + 1], self.reader.null_y,
                                       flow.caption_dropout, g, self.reader.null_mask)
            ys.append(y)
            masks.append(mask)
        to = dict(device=self.device)
        return torch.stack(noises).to(**to), torch.cat(timesteps).to(**to), torch.cat(ys), torch.cat(masks)

    @torch.no_grad()
    def heldout_loss(self) -> float:
        """Mean velocity MSE of the held-out samples at the fixed timesteps, fixed noise, real captions."""
        if not self.heldout_rows:
            return float("nan")
        self.model.eval()
        t = torch.tensor(self.cfg.heldout.timesteps, device=self.device)
        losses = []
        for row in self.heldout_rows:
            batch = self.reader.read([row])
            g = torch.Generator().manual_seed(seed_of(self.cfg.seed, "heldout", self.sample_ids[row]))
            noise = torch.randn(batch.x0.shape[1:], generator=g).to(self.device).expand(len(t), *batch.x0.shape[1:])
            x0 = batch.x0.expand_as(noise)
            with self.autocast():
                out = self.model(add_noise(x0, noise, t), t, batch.y.expand(len(t), -1, -1, -1),
                                 batch.mask.expand(len(t), -1), fps=batch.fps.expand(len(t)))
            losses.append(per_sample_mse(velocity_channels(out, x0.shape[1]), x0 - noise).mean())
        self.model.train()
        return float(torch.stack(losses).mean())

    # ------------------------------------------------------------------ state

    def run_id(self) -> str:
        """What a checkpoint must have been written with to be resumed: the params (less the checkpoint
        section's own knobs), the flow settings and the checkpoint this stage starts from."""
        start = start_identity(self.init_from)
        trainer_fields = set(PretrainConfig.model_fields) - {"checkpoint", "stages"}
        subset = {} if self.include is None else {"subset": sorted(self.include)}
        return run_identity(stage=self.stage.model_dump(mode="json"),
                            params=self.cfg.model_dump(mode="json", include=trainer_fields),
                            flow=self.flow.model_dump(mode="json"), start=start, **subset)

    def load_or_init(self) -> None:
        latest = self.checkpointer.resumable()
        if latest is not None:
            common = load_checkpoint(latest, self.model, self.optimizer, self.ema)
            if common["stage"] != self.stage.name:
                raise ValueError(f"{self.out_dir} holds checkpoints of stage {common['stage']!r}, not {self.stage.name!r}")
            self.step = int(common["step"])
            self.sampler.load_state_dict(common["sampler"], strict=not self.cfg.checkpoint.allow_data_change)
            self.schedule.load_state_dict(common["schedule"])
            if self.history is not None:
                self.history.truncate_after(self.step)
        else:
            if self.history is not None:
                self.history.truncate_after(-1)
            converted = converted_start(self.init_from)
            if converted is not None:  # weights only: the optimizer starts fresh, the EMA at the weights
                load_converted_into(self.model, converted)
                if self.ema is not None:
                    self.ema.model.load_state_dict(self.model.state_dict())
                self.schedule.apply()
            elif self.init_from is not None:
                load_checkpoint(resolve_checkpoint(self.init_from), self.model, self.optimizer, self.ema,
                                weights_only=True)
                self.schedule.apply()

    def save(self) -> Path:
        common = {"stage": self.stage.name, "sampler": self.sampler.state_dict(),
                  "schedule": self.schedule.state_dict(), "config": self.cfg.model_dump(mode="json")}
        return self.checkpointer.save(self.step, self.model, self.optimizer, self.ema, common)

    # ------------------------------------------------------------------ metrics

    def window_metrics(self, window: list[tuple[float, float, StepBatches, float]]) -> dict:
        seconds = sum(w[3] for w in window)
        text_len = self.reader.null_y.shape[0]
        flops = sum(
            dit_flops(self.dit, m.tokens // len(m.rows), text_len).training() * len(m.rows)
            for _, _, b, _ in window for m in b.all
        )
        tokens = sum(b.global_tokens for _, _, b, _ in window)
        return {
            "loss": sum(w[0] for w in window) / len(window),
            "grad_norm": window[-1][1],
            "lr": self.schedule.lr_at(self.step - 1),  # the lr of the last step taken
            "tokens_per_s": tokens / seconds,
            "samples_per_s": sum(b.global_samples for _, _, b, _ in window) / seconds,
            "mfu": flops / seconds / (self.peak_flops * dist.get_world_size()),
            "padding_waste": 1 - tokens / sum(len(b.all) * b.tokens_per_batch for _, _, b, _ in window),
            "memory_gib": memory_gib(self.device),
        }

    def record(self, metrics: dict) -> None:
        if self.history is not None:
            self.history.write(metrics, self.step)

    def progress_bar(self) -> Progress | LineProgress:
        """A rich bar on rank 0, or with progress off a plain line every few seconds (step, loss, ETA); silent on other ranks."""
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())
        if not self.is_main:
            return Progress(*columns, disable=True)
        return stage_progress(*columns, enabled=self.progress, label="pretrain")

    def logged(self) -> tuple[list[dict], list[float]]:
        """Rank 0's metrics history: the training windows (rows with a loss) and the held-out losses, in order."""
        rows = [json.loads(line) for line in self.history.path.read_text().splitlines()]
        return [r for r in rows if "loss" in r], [r["heldout_loss"] for r in rows if "heldout_loss" in r]

    def summary(self) -> dict:
        """Final metrics of the stage from the history (the stage writes rank 0's as its metrics file)."""
        checkpoint = self.checkpointer.latest()
        if not self.is_main:
            return {"checkpoint": str(checkpoint)}
        train, heldout = self.logged()
        out = {
            "stage": self.stage.name, "steps": self.step,
            "loss_first": train[0]["loss"], "loss_last": train[-1]["loss"],
            "heldout_loss_start": heldout[0], "heldout_loss_end": heldout[-1],
            "tokens_per_s": sum(r["tokens_per_s"] for r in train) / len(train),
            "mfu": sum(r["mfu"] for r in train) / len(train),
            "padding_waste": sum(r["padding_waste"] for r in train) / len(train),
            "peak_flops": self.peak_flops, "checkpoint": str(checkpoint),
        }
        return out


def converted_start(init_from: Path | None) -> Path | None:
    """The converted DiT folder `init_from` names (`mugv convert --to mugv|megatron`, or a release's `dit/`), else None."""
    if init_from is None:
        return None
    for folder in (Path(init_from), Path(init_from) / "dit"):
        if converted_format(folder) is not None:
            return folder
    return None


def start_identity(init_from: Path | None) -> dict | None:
    """What a run starts from, as part of its run identity: a converted folder's config and its files' sha256 (not
    their times: the same release exported again is the same start, and the checkpoints, a DVC output, do not change
    with the clock), a checkpoint's step, data and run, or None for a fresh start."""
    converted = converted_start(init_from)
    if converted is not None:
        return {"converted": (converted / CONFIG_FILE).read_text(),
                "files": sorted((f.relative_to(converted).as_posix(), storage.sha256(f))
                                for f in converted.rglob("*") if f.is_file())}
    if init_from is not None:
        start = json.loads((resolve_checkpoint(init_from) / META).read_text())
        return {k: start.get(k) for k in ("step", "dataset_hash", "run")}
    return None


def run_pretrain(latents_dir: Path, stage: str, init_from: Path | None, out_dir: Path, cfg: PretrainConfig,
                 progress: bool = True, log: LogFn | None = None, flow: FlowTrainingConfig | None = None,
                 include: set[str] | None = None) -> dict:
    """The pretrain stage: train curriculum `stage` on `latents_dir` into `out_dir` (resuming if it holds a
    checkpoint), starting from `init_from` (the previous stage's out dir or checkpoint, or a converted folder). Returns the final
    metrics and the checkpoint path. `include`: train on these sample ids only (None: all but the held-out ones)."""
    with heartbeat(f"pretrain {stage}: building the model, reading the data set",
                   enabled=not progress and int(os.environ.get("RANK", "0")) == 0):
        trainer = Trainer(cfg, stage, Path(latents_dir), Path(out_dir), Path(init_from) if init_from else None,
                          log, progress, flow=flow, include=include)
    return trainer.train()
