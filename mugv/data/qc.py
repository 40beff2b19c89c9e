"""QC decisions: the MUG-V filters and pHash dedup over scored clips, and the score plots.

Decision rule (one `reject_reason` per clip, the FIRST failing check in this order):
`unreadable: <why>` (the clip did not decode), then the MUG-V order
sharpness -> aesthetic -> motion, then brightness, then `duplicate_of:<clip_id>`.
`failed_filters` lists every failing score filter, so a dark clip that is also unsharp shows both.

Dedup keeps the first occurrence in source order, like ingest does for exact duplicates: clips
are visited by (source_uri, start_frame, clip_id); a clip that passed every score filter is a
duplicate when the mean Hamming distance of its keyframe pHashes to an earlier KEPT clip is
<= `dedup_hamming` (the closest such clip is named). Rejected clips never suppress others, and
a clip's decision never depends on clips after it in that order. qc.parquet stays in clip_id order.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from mugv.data.config import QCThresholds
from mugv.data.expectations import SCORE_COLUMNS, import_gx
from mugv.data.quality import parse_phash, phash_distances
from mugv.storage import atomic_path

# reject_reason precedence: a too-dark clip also fails sharpness and aesthetic, so brightness
# (the root cause) comes first; then the MUG-V filters in the paper's order; then dedup.
FILTER_ORDER = ("brightness", "sharpness", "aesthetic", "motion", "duplicate")
REASON_KEYS = ("unreadable", *FILTER_ORDER)
PLOT_MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.15, "top": 0.9}


# --------------------------------------------------------------------------- decisions


def failed_filters(scores: dict, th: QCThresholds) -> list[str]:
    """Every score filter a clip fails, in FILTER_ORDER (NaN fails every filter)."""
    passes = {
        "sharpness": th.sharpness_min <= scores["sharpness"] <= th.sharpness_max,
        "aesthetic": scores["aesthetic"] >= th.aesthetic_min,
        "motion": th.motion_min <= scores["motion"] <= th.motion_max,
        "brightness": scores["brightness"] >= th.brightness_min,
    }
    return [name for name in FILTER_ORDER if not passes.get(name, True)]


DEDUP_ORDER = ("source_uri", "start_frame", "clip_id")


def decide(table: pd.DataFrame, th: QCThresholds, keyframes: int) -> pd.DataFrame:
    """Add `keep`, `reject_reason`, `failed_filters` to a scored table (rules in the module doc)."""
    table = table.reset_index(drop=True)
    rows = table.to_dict("records")
    keep: list[bool] = [False] * len(rows)
    reasons: list[str | None] = [None] * len(rows)
    failed_all: list[list[str]] = [[] for _ in rows]
    kept_ids: list[str] = []
    kept_hashes = np.zeros((len(rows), keyframes), dtype=np.uint64)
    for i in table.sort_values([c for c in DEDUP_ORDER if c in table.columns], kind="stable").index:
        row = rows[i]
        error = row["error"] if isinstance(row["error"], str) else None  # None or NaN when readable
        failed = [] if error else failed_filters(row, th)
        reason = error or (failed[0] if failed else None)
        if reason is None:
            hashes = parse_phash(row["phash"], keyframes)
            if kept_ids:
                dist = phash_distances(hashes, kept_hashes[: len(kept_ids)])
                nearest = int(np.argmin(dist))
                if dist[nearest] <= th.dedup_hamming:
                    reason = f"duplicate_of:{kept_ids[nearest]}"
            if reason is None:
                kept_hashes[len(kept_ids)] = hashes
                kept_ids.append(row["clip_id"])
        keep[i], reasons[i], failed_all[i] = reason is None, reason, failed
    return table.assign(keep=keep, reject_reason=reasons, failed_filters=failed_all)


def reason_key(reason: str) -> str:
    """'duplicate_of:c7' -> 'duplicate', 'unreadable: ...' -> 'unreadable', filters as they are."""
    if reason.startswith("duplicate_of:"):
        return "duplicate"
    if reason.startswith("unreadable"):
        return "unreadable"
    return reason


def count_reasons(decided: pd.DataFrame) -> dict[str, int]:
    counts = Counter(reason_key(r) for r in decided["reject_reason"].dropna())
    return {k: int(counts.get(k, 0)) for k in REASON_KEYS}


# --------------------------------------------------------------------------- outputs


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _limits(th: QCThresholds) -> dict[str, list[float]]:
    return {
        "sharpness": [th.sharpness_min, th.sharpness_max],
        "aesthetic": [th.aesthetic_min],
        "motion": [th.motion_min, th.motion_max],
        "brightness": [th.brightness_min],
    }


def histogram_edges(values: np.ndarray, limits: list[float], bins: int, log: bool) -> np.ndarray:
    """Bin edges spanning the finite values and the thresholds (geometric when `log`)."""
    span = np.concatenate([values, [x for x in limits if math.isfinite(x)]])
    if log:
        span = span[span > 0]
    if not len(span):
        return np.linspace(0.0, 1.0, bins + 1)
    lo, hi = float(span.min()), float(span.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)


def write_plots(decided: pd.DataFrame, th: QCThresholds, plots_dir: Path, bins: int = 20) -> list[Path]:
    """`scores.csv` (one row per clip), `hist_<score>.csv` (bin, count) for dvc plots, and a
    `<score>.png` histogram per score with its threshold lines (for MLflow). Sharpness (the
    variance of the Laplacian spans decades) is binned on a log scale."""
    from matplotlib.figure import Figure

    written = [plots_dir / "scores.csv"]
    _write_csv(decided[["clip_id", *SCORE_COLUMNS, "keep"]], written[0])
    for score, limits in _limits(th).items():
        log = score == "sharpness"
        values = decided[score].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        edges = histogram_edges(values, limits, bins, log)
        counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
        hist = pd.DataFrame({"bin": [f"{a:.4g}-{b:.4g}" for a, b in zip(edges[:-1], edges[1:])], "count": counts})
        _write_csv(hist, plots_dir / f"hist_{score}.csv")
        fig = Figure(figsize=(5, 3.2))
        fig.subplots_adjust(**PLOT_MARGINS)  # fixed margins: tight_layout cost ~0.5 s a figure
        ax = fig.subplots()
        ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges, color="tab:blue", alpha=0.8)
        for limit in filter(math.isfinite, limits):
            ax.axvline(limit, color="tab:red", linestyle="--", label=f"threshold {limit:g}")
        if log:
            ax.set_xscale("log")
        ax.set(title=f"{score} ({len(values)} clips)", xlabel=score, ylabel="clips")
        ax.legend(fontsize=8)
        with atomic_path(plots_dir / f"{score}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        written += [plots_dir / f"hist_{score}.csv", plots_dir / f"{score}.png"]
    return written


# --------------------------------------------------------------------------- background imports


def _import_reporting() -> None:
    import_gx()
    import matplotlib.figure  # noqa: F401


def start_reporting_imports() -> threading.Thread:
    """Import GX and matplotlib in a background thread (seconds of fixed cost, mostly GX) so
    that it overlaps the scoring; join it before validating."""
    thread = threading.Thread(target=_import_reporting, name="qc-imports", daemon=True)
    thread.start()
    return thread
