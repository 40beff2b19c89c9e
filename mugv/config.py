"""params.yaml as `Params`: the stages' sections plus the shared ones, validated before any work starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from mugv.diffusion.config import DiffusionConfig
from mugv.registry.promotion import PromotionConfig
from mugv.section import Section
from mugv.tracking import TrackingConfig
from mugv.stages import encode as encode_stage
from mugv.stages import evaluate as evaluate_stage
from mugv.stages import ingest as ingest_stage
from mugv.stages import preference_data as preference_data_stage
from mugv.stages import preference_opt as preference_opt_stage
from mugv.stages import pretrain as pretrain_stage
from mugv.stages import qc as qc_stage
from mugv.stages import sft as sft_stage
from mugv.stages import synth as synth_stage
from mugv.stages import train_vae as train_vae_stage

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- project


class ProjectConfig(Section):
    """Settings shared by every stage."""

    seed: int = 0
    tracking: TrackingConfig = TrackingConfig()


# --------------------------------------------------------------------------- orchestration


class GpuSubmitConfig(Section):
    """Where the training stages run: in process (no deployment) or submitted to a GPU deployment."""

    deployment: str = Field("", description="'<flow>/<deployment>' the training stages are submitted to; '' = in process")
    nodes: int = Field(1, ge=1, description="nodes (pods) of each training job, one torchrun agent each")
    gpus_per_node: int = Field(8, ge=1, description="torchrun --nproc-per-node")
    image: str = Field("", description="container image of the job; '' = the work pool's default")
    timeout_s: float = Field(7 * 24 * 3600.0, gt=0, description="how long the pipeline waits for a submitted stage")


class PipelineConfig(Section):
    """How the Prefect flow runs the DVC stages."""

    retries: int = Field(1, ge=0, description="Prefect retries of a failed stage")
    retry_delay_s: float = Field(5.0, ge=0)
    stages: list[str] = Field(default=[], description="run only these stages (and what they need); [] = all")
    stage_timeout_s: float | None = Field(
        86400.0, gt=0, description="a stage (or DVC pull/push) running longer is killed and fails; null = no limit"
    )
    lock_wait_s: float = Field(
        0.0, ge=0, description="how long a run waits while another run holds the checkout; then it refuses"
    )
    remote: str | None = Field(None, description="DVC remote to pull from and push to; null = DVC's default remote")
    sync_remote: bool = Field(True, description="pull before the stages and push after when a remote is set")
    gpu: GpuSubmitConfig = GpuSubmitConfig()


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
    preference_data: preference_data_stage.Config = preference_data_stage.Config()
    promotion: PromotionConfig = PromotionConfig()
    sft: sft_stage.Config = sft_stage.Config()
    dpo: preference_opt_stage.DPOConfig = preference_opt_stage.DPOConfig()
    kto: preference_opt_stage.KTOConfig = preference_opt_stage.KTOConfig()


    @field_validator("pretrain")
    @classmethod
    def _known_dit_preset(cls, pretrain: pretrain_stage.Config) -> pretrain_stage.Config:
        """pretrain.model names a preset and pretrain.model_overrides fit it: checked here, not after training set-up."""
        from mugv.models.dit.config import PRESETS, get_preset

        if pretrain.model not in PRESETS:
            raise ValueError(f"model: unknown DiT preset {pretrain.model!r}; presets: {', '.join(PRESETS)}")
        try:
            get_preset(pretrain.model, **pretrain.model_overrides)
        except (ValidationError, TypeError) as err:
            problems = err.errors() if isinstance(err, ValidationError) else [{"loc": (), "msg": str(err)}]
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'model_overrides'}: {e['msg']}" for e in problems)
            raise ValueError(f"model_overrides do not make a valid {pretrain.model!r} DiT ({detail})") from None
        return pretrain


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


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing anchors and aliases (`&a`, `*a`): params never need them, and nested aliases
    expand exponentially (a "billion laughs" file). Refused at the first one, before anything is expanded."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"anchors and aliases are not allowed in params (&{event.anchor} / *{event.anchor})",
                event.start_mark)
        return super().compose_node(parent, index)


def read_params_yaml(path: str | Path) -> Any:
    """The YAML of a params file (safe, no anchors/aliases); ParamsError naming file, line and column otherwise."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            loader = _NoAliasLoader(f)
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ParamsError(f"params file {path} is not valid YAML{where}: {' '.join(str(problem).split())}") from None


def missing_sections(raw: dict[str, Any], model: type[Section] = Params, prefix: str = "") -> list[str]:
    """Dotted names of the sections of `model` (fields typed as a Section, at any depth) that `raw` leaves out."""
    missing = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if not (isinstance(section, type) and issubclass(section, Section)):
            continue
        if name not in raw:
            missing.append(prefix + name)
        elif isinstance(raw[name], dict):
            missing += missing_sections(raw[name], section, f"{prefix}{name}.")
    return missing


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (safe YAML without aliases); a missing file means all defaults.

    A file that lacks a whole section (top-level or nested, e.g. `ingest.limits`) gets that section's defaults, with
    one one-line warning naming every such section."""
    path = Path(path)
    if not path.exists():
        return Params()
    raw = read_params_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"invalid params: {path} must hold a mapping at the top level")
    params = parse_params(raw)
    missing = missing_sections(raw or {}, Params)
    if missing:
        log.warning("params file %s has no %s section%s: using the code defaults", path,
                    ", ".join(missing), "s" if len(missing) > 1 else "")
    return params
