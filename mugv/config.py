"""params.yaml as `Params`: the stages' sections plus the shared ones, validated before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from mugv.diffusion.config import DiffusionConfig
from mugv.registry.promotion import PromotionConfig
from mugv.section import Section
from mugv.tracking import TrackingConfig
from mugv.stages import encode as encode_stage
from mugv.stages import evaluate as evaluate_stage
from mugv.stages import ingest as ingest_stage
from mugv.stages import pretrain as pretrain_stage
from mugv.stages import qc as qc_stage
from mugv.stages import synth as synth_stage
from mugv.stages import train_vae as train_vae_stage


# --------------------------------------------------------------------------- project


class ProjectConfig(Section):
    """Settings shared by every stage."""

    seed: int = 0
    tracking: TrackingConfig = TrackingConfig()


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
    synth: synth_stage.Config = synth_stage.Config()
    ingest: ingest_stage.Config = ingest_stage.Config()
    qc: qc_stage.Config = qc_stage.Config()
    train_vae: train_vae_stage.Config = train_vae_stage.Config()
    encode: encode_stage.Config = encode_stage.Config()
    diffusion: DiffusionConfig = Field(
        default_factory=DiffusionConfig, description="rectified flow: read by pretrain (training, sampler) and encode"
    )
    pretrain: pretrain_stage.Config = pretrain_stage.Config()
    evaluate: evaluate_stage.Config = evaluate_stage.Config()
    promotion: PromotionConfig = PromotionConfig()


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
