"""One module per dvc.yaml stage: its params section `Config`, its output names and `run()` doing every step."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig


class UntrackedRun:
    """Stands in for a tracking run when a stage runs without MLflow (tests, benchmarks): records nothing."""

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path, artifact_path: str | None = None) -> None: ...


@contextlib.contextmanager
def stage_run(name: str, tracker: TrackingConfig | None, params: Mapping[str, Any],
              tags: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """The MLflow run of one stage (`mugv.tracking.start_stage_run`), or an untracked one when `tracker` is None."""
    if tracker is None:
        yield UntrackedRun()
        return
    from mugv import tracking

    with tracking.start_stage_run(name, tracker, params=params, tags=tags) as run:
        yield run


def as_dict(report: Any) -> dict:
    """A stage report (pydantic model, dataclass or mapping) as a plain dict."""
    if report is None:
        return {}
    if hasattr(report, "model_dump"):
        return report.model_dump(mode="json")
    if dataclasses.is_dataclass(report):
        return dataclasses.asdict(report)
    if isinstance(report, Mapping):
        return dict(report)
    raise TypeError(f"cannot turn {type(report).__name__} into a dict")


def numeric_leaves(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten the int/float leaves of a nested mapping into MLflow metric names."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace(":", "_").replace(" ", "_")
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)):
            out[key] = float(v)
        elif isinstance(v, Mapping):
            out.update(numeric_leaves(v, key + "."))
    return out
