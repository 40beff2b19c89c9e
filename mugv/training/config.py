"""Typed config of curriculum pretraining: the run (PretrainConfig) and its stages (CurriculumStage)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mugv.section import Section
from mugv.diffusion.config import FlowTrainingConfig
from mugv.models.dit.config import DiTConfig
from mugv.training.lr import LRScheduleConfig


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

    every: int = Field(50, ge=1, description="save every this many steps (and at the end of the stage)")
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
    every: int = Field(25, ge=1, description="evaluate every this many steps (and at start and end)")


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
            name="images", steps=60,
            batching=BatchingConfig(buckets=["*_f1"], tokens_per_batch=1200),
            lr=LRScheduleConfig(kind="cosine", peak=1e-3, warmup_steps=10, min_ratio=0.3),
        ),
        CurriculumStage(
            name="short_video", steps=60,
            batching=BatchingConfig(buckets=["*_f1", "*_f9"], tokens_per_batch=1200, image_fraction=0.25),
            lr=LRScheduleConfig(kind="cosine", peak=5e-4, warmup_steps=5, min_ratio=0.3),
        ),
        CurriculumStage(
            name="long_video", steps=60,
            batching=BatchingConfig(buckets=["*_f1", "*_f9", "*_f17"], tokens_per_batch=2400, image_fraction=0.1),
            lr=LRScheduleConfig(kind="cosine", peak=3e-4, warmup_steps=5, min_ratio=0.1),
        ),
    ]


class PretrainConfig(Section):
    """Everything `mugv pretrain` reads (the `pretrain:` section of params.yaml)."""

    model: str = Field("tiny", description="DiT preset name (mugv.models.dit.config)")
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="DiTConfig fields to replace")
    optimizer: OptimizerConfig = OptimizerConfig()
    ema: EMAConfig = EMAConfig(decay=0.99)
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()
    heldout: HeldoutConfig = HeldoutConfig()
    micro_batches: int = Field(1, ge=1, description="micro-batches per DP rank per step (gradient accumulation)")
    flow: FlowTrainingConfig = Field(
        default_factory=FlowTrainingConfig,
        description="timesteps, image weight, caption dropout (the CLI passes params.diffusion.training)",
    )
    log_every: int = Field(5, ge=1)
    seed: int = 0
    bf16: bool = Field(True, description="bf16 autocast (GPU only; CPU always trains in fp32)")
    peak_flops: float | None = Field(
        None, gt=0, description="peak FLOP/s of one device for MFU; None = a matmul measured at start"
    )
    stages: list[CurriculumStage] = Field(default_factory=default_stages, min_length=1)
    sample_prompts: list[str] = Field(
        default=[
            "a red circle moves quickly from left to right on a blue striped background",
            "a yellow square moves slowly from top to bottom on a green noisy background",
        ],
        description="fixed prompts rendered after every stage (videos logged to MLflow)",
    )

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
