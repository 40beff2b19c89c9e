"""One module per dvc.yaml stage: its params section `Config`, its output names and `run()` doing every step."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
from collections.abc import Iterator, Mapping
from pathlib import Path
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


METRICS_DIR = Path("metrics")  # the stages' key numbers, committed with dvc.lock (`dvc metrics diff` compares them)
SIGNIFICANT_DIGITS = 6


def key_number(value: Any) -> int | float:
    """A value of a committed metrics file: an int, or a float rounded to SIGNIFICANT_DIGITS (booleans as 0/1)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return float(f"{float(value):.{SIGNIFICANT_DIGITS}g}")
    raise TypeError(f"a metrics file holds finite numbers only, not {value!r}")


def write_key_metrics(path: str | Path | None, metrics: Mapping[str, Any]) -> None:
    """Write a stage's key numbers (a flat or nested mapping of numbers) to `path` as sorted JSON; None: skip.

    These files are DVC metrics committed to git, so they hold numbers that a rerun of the same stage on
    the same inputs reproduces: counts, losses, scores. Never timings (they go to MLflow and the console).
    A number that was not measured (None, NaN: e.g. no held-out set) is left out."""
    if path is None:
        return

    def measured(value: Any) -> bool:
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    def rounded(tree: Mapping[str, Any]) -> dict:
        return {k: rounded(v) if isinstance(v, Mapping) else key_number(v) for k, v in tree.items() if measured(v)}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps(rounded(metrics), indent=2, sort_keys=True) + "\n")
    staged.replace(path)
