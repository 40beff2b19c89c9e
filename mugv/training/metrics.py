"""Training metrics: measured matmul peak for MFU, memory in use, and the metrics history of both trainers (jsonl, csv)."""

from __future__ import annotations

import csv
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

LogFn = Callable[[dict, int], None]


def measure_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                         seconds: float = 0.2, repeats: int = 5) -> float:
    """Achieved FLOP/s of a square matmul on `device` in `dtype`, best of `repeats` timed windows.

    This is the practical peak MFU is measured against; the best window discounts moments when
    other processes share the device.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        _sync(device)
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_gib(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory, or the CPU process's max resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def window_means(rows: list[dict]) -> dict[str, float]:
    """Per key, the mean of the finite numbers the rows hold (`step` and text left out; a key no row has a
    number for, e.g. an unused loss, is left out)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(key, []).append(float(value))
    return {key: sum(v) / len(v) for key, v in values.items()}


DIT_PLOTS = {"loss.csv": ("step", "loss"), "heldout.csv": ("step", "heldout_loss")}


class MetricsHistory:
    """The metrics history of both trainers: rows to `out_dir/metrics.jsonl` and curves to `out_dir/plots/*.csv`.

    `plots` maps a csv name to its columns, `step` first: a row goes to that csv when it has any
    of the other columns (e.g. `loss`); columns a row lacks stay empty, keys the csv lacks are left out.
    `jsonl=False` writes the csv files only. `log` (e.g. an MLflow run's log_metrics) gets every
    row too. Only rank 0 should write.
    """

    def __init__(self, out_dir: Path, log: LogFn | None = None,
                 plots: dict[str, tuple[str, ...]] = DIT_PLOTS, jsonl: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.plots = out_dir / "plots"
        self.plots.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.columns = plots
        self.jsonl = jsonl

    def _csv(self, name: str, row: dict) -> None:
        path = self.plots / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns[name], extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def write(self, metrics: dict, step: int) -> None:
        row = {"step": step, **metrics}
        if self.jsonl:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        for name in self.columns:
            if self._on_curve(name, row):
                self._csv(name, row)
        if self.log is not None:
            self.log(metrics, step)

    def start(self) -> None:
        """A fresh history: the jsonl file removed, every csv reduced to its header."""
        if self.jsonl:
            self.path.unlink(missing_ok=True)
        for name in self.columns:
            self._rewrite_csv(name, [])

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: a resumed run redoes those steps; -1 clears the history.

        Every csv is written again from the jsonl, so a csv that is gone comes back whole: DVC removes a stage's
        plots before it reruns the stage, while the checkpoints persist and the run resumes from them."""
        if not self.jsonl:
            raise ValueError("truncate_after needs the jsonl history (the VAE writes its table whole)")
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
        rows = [json.loads(line) for line in kept]
        for name in self.columns:
            self._rewrite_csv(name, [row for row in rows if self._on_curve(name, row)])

    def _on_curve(self, name: str, row: dict) -> bool:
        """Whether `row` goes to csv `name`: it has one of the csv's columns besides `step`."""
        return any(column in row for column in self.columns[name][1:])

    def _rewrite_csv(self, name: str, rows: list[dict]) -> None:
        with open(self.plots / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns[name], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
