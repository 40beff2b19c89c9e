"""Progress of a stage's long loops: a rich bar on a terminal, plain progress lines every few seconds with bars off."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

PROGRESS_EVERY_ENV = "MUGV_PROGRESS_EVERY_S"
DEFAULT_PROGRESS_EVERY_S = 10.0  # well under the 30 s a `make run` stage may stay silent


def progress_every_s() -> float:
    """Seconds between progress lines: `$MUGV_PROGRESS_EVERY_S`, default DEFAULT_PROGRESS_EVERY_S."""
    return float(os.environ.get(PROGRESS_EVERY_ENV) or DEFAULT_PROGRESS_EVERY_S)


def format_duration(seconds: float) -> str:
    """`h:mm:ss` or `m:ss`."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class LineTask:
    """One task of a LineProgress: what rich keeps per task, plus when its last line was printed."""

    description: str
    total: float | None
    completed: float = 0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    completed_at_start: float = 0
    last_line: float = 0.0
    finished: bool = False


def _format_field(name: str, value: Any) -> str | None:
    if isinstance(value, float):
        return None if math.isnan(value) else f"{name} {value:.4f}"
    if value is None or value == "":
        return None
    return f"{name} {value}"


class LineProgress:
    """Stands in for `rich.progress.Progress` with bars off (`--quiet`): the same add_task / update / advance,
    printed as one plain line per task every `every_s` seconds and when the task completes:
    `train-vae: 120/3200 (4%) phase spatial, loss 0.0412, elapsed 0:41, ETA 17:32`.

    It only reads the numbers it is given and the clock: no RNG, no effect on the work.
    """

    def __init__(self, every_s: float | None = None, label: str = "", stream: TextIO | None = None):
        self.every_s = progress_every_s() if every_s is None else every_s
        self.label = label
        self.stream = stream
        self.tasks: list[LineTask] = []
        self.lock = threading.Lock()  # worker threads may advance a task (ingest hashes on a thread pool)

    def __enter__(self) -> LineProgress:
        self._stop = threading.Event()
        self._ticker = None
        if self.every_s > 0:  # a line also while one slow item runs (a long step, a big clip)
            self._ticker = threading.Thread(target=self._tick, name="progress-lines", daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            with self.lock:
                now = time.monotonic()
                for task in self.tasks:
                    if not task.finished and now - task.last_line >= self.every_s:
                        self.print_line(task, now)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if exc[0] is None:
            for task in self.tasks:
                if not task.finished and task.completed > task.completed_at_start:
                    self.print_line(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        now = time.monotonic()
        self.tasks.append(LineTask(description, total, completed, dict(fields), started=now,
                                   completed_at_start=completed, last_line=now))
        return len(self.tasks) - 1

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        with self.lock:
            self._update(self.tasks[task_id], total, completed, advance, description, fields)

    def _update(self, task: LineTask, total: float | None, completed: float | None, advance: float | None,
                description: str | None, fields: dict[str, Any]) -> None:
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        task.fields.update(fields)
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if (done and not task.finished) or now - task.last_line >= self.every_s:
            task.finished = done
            self.print_line(task, now)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def line(self, task: LineTask, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = now - task.started
        parts = [f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")]
        if task.total:
            parts[0] += f" ({100 * task.completed / task.total:.0f}%)"
        details = [text for name, value in task.fields.items() if (text := _format_field(name, value))]
        details.append(f"elapsed {format_duration(elapsed)}")
        done_here = task.completed - task.completed_at_start
        if task.total and 0 < done_here and task.completed < task.total:
            details.append(f"ETA {format_duration(elapsed / done_here * (task.total - task.completed))}")
        name = f"{self.label} {task.description}" if self.label and task.description != self.label else task.description
        return f"{name}: {parts[0]} " + ", ".join(details)

    def print_line(self, task: LineTask, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        task.last_line = now
        print(self.line(task, now), file=self.stream or sys.stderr, flush=True)


def stage_progress(*columns: Any, enabled: bool, label: str = "", every_s: float | None = None, **kwargs: Any):
    """A rich progress bar with `columns` when `enabled`, else a LineProgress printing plain lines
    (`label` before each task's description)."""
    if enabled:
        from rich.progress import Progress

        return Progress(*columns, **kwargs)
    return LineProgress(every_s, label)


def progress_line(message: str) -> None:
    """One plain line for a step that has no loop to count (e.g. an evaluation), flushed at once."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def heartbeat(message: str, enabled: bool = True, every_s: float | None = None) -> Iterator[None]:
    """Print `message` now and `message (elapsed m:ss)` every few seconds until the block ends (a step with
    no loop to count, e.g. an evaluation); nothing when not `enabled` (a progress bar shows instead)."""
    if not enabled:
        yield
        return
    every_s = progress_every_s() if every_s is None else every_s
    started, stop = time.monotonic(), threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            progress_line(f"{message} (elapsed {format_duration(time.monotonic() - started)})")

    progress_line(message)
    thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True) if every_s > 0 else None
    if thread is not None:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()
