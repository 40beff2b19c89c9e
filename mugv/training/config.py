"""Typed configs of the trainers, free of torch: LR, optimizer, EMA, checkpoints, layout, curriculum, VAE phases."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mugv.section import Section
from mugv.models.dit.config import DiTConfig


class LRScheduleConfig(Section):
    """Peak learning rate, warm-up steps and the shape after warm-up."""

    kind: Literal["cosine", "constant"] = "cosine"
    peak: float = Field(1e-4, gt=0, description="learning rate at the end of warm-up")
    warmup_steps: int = Field(0, ge=0)
    min_ratio: float = Field(0.1, ge=0, le=1, description="cosine: final lr as a fraction of peak")


class OptimizerConfig(Section):
    """AdamW hyper-parameters and gradient clipping (the lr comes from the stage's schedule)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    clip_grad: float = Field(1.0, gt=0, description="max global L2 norm of the gradients")
    distributed: bool = Field(
        True, description="GPU: Megatron DDP + distributed optimizer (Adam moments sharded over DP); CPU: torch AdamW"
    )
    bucket_size: int | None = Field(None, ge=1, description="elements per gradient-reduce bucket; None = Megatron's default")


class EMAConfig(Section):
    """EMA on/off and its decay (MUG-V: 0.9999)."""

    enabled: bool = True
    decay: float = Field(0.9999, ge=0.0, lt=1.0)


class CheckpointConfig(Section):
    """How often to save, how many to keep, and whether a resume may continue on a changed data set."""

    every: int = Field(100, ge=1, description="save every this many steps (and at the end of the stage)")
    keep: int = Field(2, ge=1, description="keep the newest this many checkpoints")
    allow_data_change: bool = Field(
        False, description="resume even though the latent data set differs from the checkpoint's"
    )
    mirror: str | None = Field(
        None,
        description="s3:// prefix (or folder) every complete checkpoint is copied to; a run with no local "
        "checkpoint resumes from the mirror's latest (node pools whose disks do not outlive the job)",
    )


class BatchingConfig(Section):
    """Which buckets a curriculum stage trains on, its token budget per micro-batch and its image/video mix."""

    buckets: list[str] = Field(default=["*"], min_length=1, description="fnmatch patterns over bucket names")
    tokens_per_batch: int = Field(gt=0, description="token budget of one micro-batch (one bucket per batch)")
    image_fraction: float | None = Field(
        None, ge=0, le=1, description="share of micro-batches drawn from image buckets; None = as the data falls"
    )


class ParallelConfig(Section):
    """Parallel sizes; data parallel is what is left of the world size (or checked against `dp`)."""

    tp: int = Field(1, ge=1, description="tensor parallel")
    pp: int = Field(1, ge=1, description="pipeline parallel")
    cp: int = Field(1, ge=1, description="context parallel (each sample's tokens must split evenly)")
    dp: int | None = Field(None, ge=1, description="data parallel; None = world_size / (tp * pp * cp)")
    sequence_parallel: bool = False
    recompute: bool = Field(
        False, description="full activation recomputation per block: keeps only block inputs (see `mugv plan`)"
    )

    def data_parallel_size(self, model: DiTConfig, world_size: int) -> int:
        """Validate the layout against the model and the world; return the DP size, or raise saying why."""
        problems = []
        if self.pp > 1:
            problems.append(f"pp={self.pp}: MUGDiT has no pipeline-parallel split yet; use pp=1")
        for what, size in (("num_heads", model.num_heads), ("hidden_size", model.hidden_size),
                           ("mlp hidden size", model.mlp_hidden_size)):
            if size % self.tp:
                problems.append(f"{what} {size} is not divisible by tp={self.tp}")
        model_parallel = self.tp * self.pp * self.cp
        if world_size % model_parallel:
            problems.append(f"world size {world_size} is not divisible by tp*pp*cp={model_parallel}")
        dp = world_size // model_parallel
        if self.dp is not None and self.dp != dp:
            problems.append(f"dp={self.dp} but world size {world_size} / (tp*pp*cp={model_parallel}) = {dp}")
        if problems:
            raise ValueError("invalid parallel layout: " + "; ".join(problems))
        return dp


class HeldoutConfig(Section):
    """Held-out loss: a few samples never trained on, evaluated at fixed timesteps with fixed noise."""

    samples: int = Field(4, ge=0, description="held-out samples (0 = no held-out loss)")
    timesteps: list[float] = Field(default=[100.0, 300.0, 500.0, 700.0, 900.0], min_length=1)
    every: int = Field(50, ge=1, description="evaluate every this many steps (and at start and end)")


class CurriculumStage(Section):
    """One curriculum stage: which buckets, how many tokens a micro-batch, how many steps, which lr."""

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    steps: int = Field(gt=0)
    batching: BatchingConfig
    lr: LRScheduleConfig = LRScheduleConfig()


def default_stages() -> list[CurriculumStage]:
    """Images -> short video -> longer video; sized for the tiny preset on the default latents on CPU."""
    return [
        CurriculumStage(
            name="images", steps=750,
            batching=BatchingConfig(buckets=["*_f1"], tokens_per_batch=1200),
            lr=LRScheduleConfig(kind="cosine", peak=1e-3, warmup_steps=10, min_ratio=0.3),
        ),
        CurriculumStage(
            name="short_video", steps=100,
            batching=BatchingConfig(buckets=["*_f1", "*_f9"], tokens_per_batch=1200, image_fraction=0.25),
            lr=LRScheduleConfig(kind="cosine", peak=5e-4, warmup_steps=5, min_ratio=0.3),
        ),
        CurriculumStage(
            name="long_video", steps=100,
            batching=BatchingConfig(buckets=["*_f1", "*_f9", "*_f17", "*_f33"], tokens_per_batch=2400, image_fraction=0.1),
            lr=LRScheduleConfig(kind="cosine", peak=3e-4, warmup_steps=5, min_ratio=0.1),
        ),
    ]


class PretrainConfig(Section):
    """What the DiT trainer reads: model, optimizer, EMA, checkpoints, layout and the curriculum stages."""

    model: str = Field("tiny", description="DiT preset name (mugv.models.dit.config)")
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="DiTConfig fields to replace")
    optimizer: OptimizerConfig = OptimizerConfig()
    ema: EMAConfig = EMAConfig(decay=0.99)
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    micro_batches: int = Field(1, ge=1, description="micro-batches per DP rank per step (gradient accumulation)")
    data_cache_mb: float = Field(
        1024.0, ge=0, description="read latent samples kept in memory per rank (LRU); 0 = read every sample from its shard"
    )
    log_every: int = Field(10, ge=1)
    seed: int = 0
    bf16: bool = Field(True, description="bf16 autocast (GPU only; CPU always trains in fp32)")
    peak_flops: float | None = Field(
        None, gt=0, description="peak FLOP/s of one device for MFU; None = a matmul measured at start"
    )
    stages: list[CurriculumStage] = Field(default_factory=default_stages, min_length=1)

    @model_validator(mode="after")
    def _unique_stage_names(self) -> "PretrainConfig":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    def stage(self, name: str) -> CurriculumStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no curriculum stage {name!r}; stages: {[s.name for s in self.stages]}")

    def previous_stage(self, name: str) -> CurriculumStage | None:
        """The stage before `name` in the curriculum (whose checkpoint `name` starts from)."""
        names = [s.name for s in self.stages]
        position = names.index(self.stage(name).name)
        return self.stages[position - 1] if position else None


class VAEDiscriminatorConfig(Section):
    """Optional 3D PatchGAN with hinge loss, switched on from `start_step` (global step)."""

    enabled: bool = False
    start_step: int = Field(0, ge=0)
    weight: float = Field(0.05, ge=0, description="weight of the generator's adversarial term")
    lr: float = Field(2e-4, gt=0)
    channels: int = Field(32, ge=8)
    layers: int = Field(3, ge=1)


class VAETrainConfig(Section):
    """Two phases as MUG-V: the 2D spatial autoencoder, then the temporal one with the spatial stage frozen.

    With the spatial stage frozen and no pixel-space loss in the temporal phase (the default), each
    training clip is encoded to its spatial map once and the temporal stage trains on cached maps:
    an order of magnitude more temporal steps per second on a CPU.

    `checkpoint` set means "use this trained VAE (folder or vae.safetensors) instead of training":
    it is validated, copied to the output and evaluated like a trained one.
    """

    preset: str = "tiny"
    checkpoint: str | None = None
    spatial_steps: int = Field(1000, ge=0)
    temporal_steps: int = Field(600, ge=0)
    joint: bool = Field(False, description="train the spatial stage too during the temporal phase")
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay to lr * this at the end of each phase")
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1, description="clips per temporal-phase step")
    temporal_crop: tuple[int, int] = Field((32, 32), description="temporal-phase crop (H, W) in pixels, multiples of 8")
    spatial_batch_frames: int = Field(16, ge=1, description="frames per spatial-phase step")
    clip_frames: int = Field(17, ge=1, description="frames per training clip; 9 or 17 exercise the image latent")
    crop: tuple[int, int] = Field((32, 32), description="training crop (H, W), multiples of 8")
    eval_frames: int = Field(17, ge=1, description="frames of each held-out clip evaluated")
    l1_weight: float = Field(1.0, ge=0, description="pixel L1 in the spatial phase")
    temporal_l1_weight: float = Field(
        0.0, ge=0, description="pixel L1 (through the spatial decoder) in the temporal phase; 0: spatial-map L1 only"
    )
    latent_l1_weight: float = Field(1.0, ge=0, description="temporal phase: L1 between spatial map and its reconstruction")
    kl_weight: float = Field(1e-6, ge=0, description="KL summed over latents, per pixel value (SD/Open-Sora scale)")
    perceptual_weight: float = Field(0.0, ge=0)
    perceptual_weights: str | None = Field(None, description="local VGG16 weights (torchvision layout) for the perceptual loss")
    discriminator: VAEDiscriminatorConfig = VAEDiscriminatorConfig()
    holdout: int = Field(8, ge=1, description="clips held out for reconstruction metrics")
    samples: int = Field(2, ge=0, description="side-by-side mp4s written (original | recon | baseline)")
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    on_nan: Literal["skip", "stop"] = "skip"
    max_bad_steps: int = Field(5, ge=1, description="consecutive skipped (or collapsed) steps before stopping")
    cache_mb: int = Field(256, ge=1, description="decoded-clip cache")
    threads: int | None = Field(
        1, ge=1, description="torch CPU threads while training (None: torch's default); 1 stays fast on a shared machine"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "VAETrainConfig":
        for crop in (self.crop, self.temporal_crop):
            if crop[0] % 8 or crop[1] % 8 or min(crop) < 8:
                raise ValueError(f"crop {crop} must be multiples of 8")
        if self.joint and self.temporal_l1_weight == 0:
            raise ValueError("joint training needs temporal_l1_weight > 0 (the spatial stage learns from pixels)")
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError("perceptual_weight > 0 needs perceptual_weights (a local VGG16 weights file)")
        return self


LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_q", "linear_kv", "linear_fc1", "linear_fc2")


class LoRAConfig(Section):
    """Low-rank adapters on the DiT's parallel linears (MUG-V post-training: rank 64, alpha 32)."""

    enabled: bool = False
    rank: int = Field(64, ge=1)
    alpha: float = Field(32.0, gt=0, description="the update is scaled by alpha / rank")
    targets: list[Literal["linear_qkv", "linear_proj", "linear_q", "linear_kv", "linear_fc1", "linear_fc2"]] = Field(
        default=list(LORA_TARGETS), min_length=1, description="self-attention qkv/proj, cross-attention q/kv/proj, MLP fc1/fc2"
    )
    dropout: float = Field(0.0, ge=0, lt=1)


class PreferenceOptConfig(Section):
    """One preference-optimisation stage (params `dpo` or `kto`): steps, batch, lr, beta, LoRA, from the SFT model."""

    method: Literal["dpo", "kto"] = "dpo"
    steps: int = Field(100, gt=0)
    batch: int = Field(8, ge=1, description="pairs (dpo) or labelled samples (kto) per optimizer step, all DP ranks")
    lr: LRScheduleConfig = LRScheduleConfig(kind="cosine", peak=2e-5, warmup_steps=5, min_ratio=0.1)
    beta: float = Field(
        500.0, gt=0,
        description="scale of the implicit reward on per-sample velocity MSE with the MEAN over elements "
        "(Diffusion-DPO 5000, flow_grpo Flow-DPO 100 with mean; SimpleTuner 1 with a sum)",
    )
    lambda_desirable: float = Field(1.0, ge=0, description="kto: weight of desirable samples")
    lambda_undesirable: float = Field(1.0, ge=0, description="kto: weight of undesirable samples")
    lora: LoRAConfig = LoRAConfig()
    ema: EMAConfig = EMAConfig(enabled=False, decay=0.99)

    @model_validator(mode="after")
    def _lora_without_ema(self) -> "PreferenceOptConfig":
        if self.lora.enabled and self.ema.enabled:
            raise ValueError("ema with lora is not supported: the EMA copy has no adapters (set ema.enabled false)")
        return self
