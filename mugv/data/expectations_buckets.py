"""Great Expectations gate run before encoding: does the bucket config actually fit the data set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from mugv.latents.config import BucketCheckConfig


class BucketCheckError(ValueError):
    """The bucket config does not fit the data; the message names each failed expectation."""


@dataclass
class BucketCheckResult:
    """Outcome of the gate: overall success and one plain-language line per failed expectation."""

    success: bool
    failures: list[str] = field(default_factory=list)
    checked: int = 0


def _quiet_context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, context


def check_buckets(
    buckets: pd.DataFrame, clips: pd.DataFrame, samples: pd.DataFrame, cfg: BucketCheckConfig
) -> BucketCheckResult:
    """Validate the three tables of a bucket plan with Great Expectations.

    buckets: one row per configured bucket, columns `bucket` (name) and `resolvable` (bool).
    clips: one row per kept clip, columns `clip_id`, `bucket` (video bucket name or None), `reason`.
    samples: one row per planned sample (video and image), column `bucket`.
    """
    gx, context = _quiet_context()
    source = context.data_sources.add_pandas("bucket_plan")
    per_bucket = samples.groupby("bucket").size().rename("samples").reset_index()
    assigned = clips[clips["bucket"].notna()]
    share = cfg.max_unassigned_share

    plan = {
        "buckets": (
            buckets,
            [gx.expectations.ExpectColumnValuesToBeInSet(column="resolvable", value_set=[True])],
        ),
        "clips": (
            clips,
            [gx.expectations.ExpectColumnValuesToNotBeNull(column="bucket", mostly=1.0 - share)],
        ),
        "assigned_clips": (
            assigned,
            [gx.expectations.ExpectTableRowCountToBeBetween(min_value=cfg.min_assigned)],
        ),
        "bucket_fill": (
            per_bucket,
            [gx.expectations.ExpectColumnValuesToBeBetween(column="samples", min_value=cfg.min_per_bucket)],
        ),
    }
    explain = {
        "buckets": lambda: "buckets not resolvable (sides must be multiples of the spatial multiple, "
        "video frame counts k*temporal_stride+1): "
        + ", ".join(buckets.loc[~buckets["resolvable"].astype(bool), "bucket"]),
        "clips": lambda: (
            f"{clips['bucket'].isna().mean():.0%} of {len(clips)} kept clips fit no bucket "
            f"(max_unassigned_share {share:.0%}); reasons: "
            + "; ".join(f"{r} x{n}" for r, n in clips.loc[clips["bucket"].isna(), "reason"].value_counts().items())
        ),
        "assigned_clips": lambda: f"only {len(assigned)} clips assigned to a video bucket (min_assigned {cfg.min_assigned})",
        "bucket_fill": lambda: f"buckets with fewer than min_per_bucket={cfg.min_per_bucket} samples: "
        + ", ".join(f"{b} ({n})" for b, n in per_bucket[per_bucket["samples"] < cfg.min_per_bucket].values),
    }

    result = BucketCheckResult(success=True)
    for name, (frame, expectations) in plan.items():
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        suite = gx.ExpectationSuite(name=f"bucket_plan.{name}")
        for expectation in expectations:
            suite.add_expectation(expectation)
        outcome = batch.validate(suite)
        result.checked += len(outcome.results)
        if not outcome.success:
            result.success = False
            result.failures.append(explain[name]())
    return result


def require_buckets(
    buckets: pd.DataFrame, clips: pd.DataFrame, samples: pd.DataFrame, cfg: BucketCheckConfig
) -> BucketCheckResult:
    """check_buckets, raising BucketCheckError naming every problem when the plan fails."""
    result = check_buckets(buckets, clips, samples, cfg)
    if not result.success:
        raise BucketCheckError(
            "bucket config does not fit the data (nothing was encoded):\n  - " + "\n  - ".join(result.failures)
        )
    return result
