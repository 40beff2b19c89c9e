"""The evaluate stage: a release's samples of held-out prompts scored by a reward, its held-out flow loss, its VAE."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from mugv.eval.stats import mean_and_se
from mugv.section import Section
from mugv.stages import METRICS_DIR, stage_run, write_key_metrics

if TYPE_CHECKING:
    from mugv.diffusion.config import SamplerConfig
    from mugv.training.config import HeldoutConfig
    from mugv.tracking import TrackingConfig

NAME = "evaluate"
REPORT = "eval.json"  # everything measured, per prompt and seed included
SAMPLES = "samples"  # p<prompt>_s<seed>.mp4
GRID = "grid.mp4"  # every sample in one video: a row per prompt, a column per seed
SCORES = "plots/scores.csv"  # one row per sample: its reward components
COMPONENTS = "plots/components.csv"  # one row per component: mean and standard error (a bar chart)
FLOW_LOSS = "plots/flow_loss.csv"  # held-out flow loss per timestep (a line)
METRICS = METRICS_DIR / "eval.json"  # the key numbers, committed (dvc.yaml metrics)
TAG_PREFIX = "eval."  # model-version tags: eval.<component>_mean, eval.flow_loss, ...
CONTROL = "shuffled_"  # each sample also scored against another prompt's caption: the chance level of each component


class Config(Section):
    """The `evaluate` section of params.yaml."""

    reward: str = Field("synthetic_grammar", description="a reward registered in mugv.eval.reward")
    prompts: int | None = Field(None, ge=1, description="first N held-out prompts (None: all)")
    seeds: int = Field(4, ge=1, description="samples per prompt, seeds 0..N-1")
    frames: int = Field(17, ge=1, description="1 or 8k+1")
    height: int = Field(64, ge=16, multiple_of=16)
    width: int = Field(64, ge=16, multiple_of=16)
    fps: float = Field(8.0, gt=0)
    grid_scale: int = Field(2, ge=1, description="pixel repeat of each sample in the grid video")


def read_prompts(path: Path, limit: int | None) -> list[dict]:
    """Held-out prompts, one JSON object with a `caption` per line (synth's heldout.jsonl)."""
    prompts = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts[:limit] if limit else prompts


def render_and_score(release: Path, prompts: list[dict], cfg: Config, sampler: SamplerConfig, out_dir: Path,
                     progress: bool) -> list[dict]:
    """Generate every prompt x seed into out_dir/samples and score it: one row per sample."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    from mugv.data.video_io import read_frames, write_video
    from mugv.eval.reward import get_reward
    from mugv.inference.generate import VideoGenerator
    from mugv.progress import stage_progress

    reward = get_reward(cfg.reward)
    generator = VideoGenerator(release)
    rows = []
    columns = (TextColumn(NAME), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    (out_dir / SAMPLES).mkdir(parents=True, exist_ok=True)
    with stage_progress(*columns, enabled=progress, label=NAME) as bar:
        task = bar.add_task("samples", total=len(prompts) * cfg.seeds)
        for p, prompt in enumerate(prompts):
            sampled = generator.sample_seeds(prompt["caption"], list(range(cfg.seeds)), frames=cfg.frames,
                                             height=cfg.height, width=cfg.width, steps=sampler.steps,
                                             cfg=sampler.cfg_scale, fps=cfg.fps)  # a prompt's seeds in one batch
            for seed, sample in enumerate(sampled):
                path = out_dir / SAMPLES / f"p{p:02d}_s{seed}.mp4"
                write_video(path, list(generator.decode(sample.z, cfg.frames)), cfg.fps)
                video = read_frames(path)
                scores = reward.score(video, prompt["caption"])
                # chance level: the same sample scored against another held-out prompt's caption
                other = prompts[(p + len(prompts) // 2) % len(prompts)]["caption"]
                control = {f"{CONTROL}{k}": v for k, v in reward.score(video, other).items()}
                rows.append({"prompt": p, "seed": seed, "caption": prompt["caption"], **scores, **control})
                bar.advance(task)
    return rows


def summarise(rows: list[dict], components: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{component: {"mean", "se", "n"}} over the samples, the overall reward and the chance-level control included."""
    summary = {}
    names = (*components, "reward")
    for name in (*names, *(f"{CONTROL}{n}" for n in names)):
        values = [float(r[name]) for r in rows if name in r]
        mean, se = mean_and_se(values)
        summary[name] = {"mean": mean, "se": se, "n": sum(not math.isnan(v) for v in values)}
    return summary


def write_grid(out_dir: Path, rows: list[dict], seeds: int, scale: int, fps: float) -> Path:
    """One video of every sample: a row per prompt, a column per seed, each pixel repeated `scale` times."""
    import numpy as np

    from mugv.data.video_io import read_frames, write_video

    videos = {(r["prompt"], r["seed"]): read_frames(out_dir / SAMPLES / f"p{r['prompt']:02d}_s{r['seed']}.mp4")
              for r in rows}
    prompts = sorted({p for p, _ in videos})
    frames = min(v.shape[0] for v in videos.values())
    tile = lambda v: v[:frames].repeat(scale, axis=1).repeat(scale, axis=2)  # noqa: E731
    grid = np.concatenate([np.concatenate([tile(videos[(p, s)]) for s in range(seeds)], axis=2) for p in prompts],
                          axis=1)
    path = out_dir / GRID
    write_video(path, list(grid), fps)
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def key_metrics(report: dict) -> dict:
    """The committed numbers: reward mean/se per component, held-out flow loss per timestep, the VAE's margin."""
    metrics = {f"{name}_{stat}": value[stat] for name, value in report["reward"].items() for stat in ("mean", "se")}
    metrics.update({f"flow_loss_{k}": v for k, v in report["flow_loss"].items()})
    metrics.update({f"vae_{k}": v for k, v in report["vae"].items()})
    metrics["samples"] = report["samples"]
    return metrics


def run(
    model: str | Path,
    prompts_file: Path,
    latents_dir: Path,
    vae_report: Path | None,
    out_dir: Path,
    cfg: Config,
    tracker: TrackingConfig | None = None,
    *,
    sampler: SamplerConfig,
    heldout: HeldoutConfig,
    seed: int,
    progress: bool = True,
    metrics_path: Path | None = None,
) -> dict:
    """Evaluate `model` (a release folder or `models:/NAME@ALIAS|/VERSION`): sample the held-out prompts,
    score them, measure the held-out flow loss (`heldout`, `seed`: pretrain's, so the samples were never
    trained on) and carry the VAE's held-out numbers (`vae_report`). Writes out_dir (REPORT, SAMPLES, GRID,
    plots), the key numbers to `metrics_path`, and logs to MLflow, tagging the model version(s) evaluated."""
    from mugv import tracking
    from mugv.eval.flow_loss import heldout_flow_loss
    from mugv.eval.reward import get_reward
    from mugv.inference.release import load_release

    out_dir = Path(out_dir)
    components = get_reward(cfg.reward).components  # an unknown reward fails before any work
    prompts = read_prompts(prompts_file, cfg.prompts)
    release = tracking.resolve_model_ref(model, tracker)
    with stage_run(NAME, tracker, params={NAME: cfg.model_dump(mode="json")},
                   tags={"mugv.model": str(model)}) as tracked:
        rows = render_and_score(release, prompts, cfg, sampler, out_dir, progress)
        dit = load_release(release).dit
        flow = heldout_flow_loss(dit, latents_dir, heldout.samples, seed, heldout.timesteps)
        vae = vae_numbers(vae_report)
        report = {"model": str(model), "reward_name": cfg.reward, "samples": len(rows),
                  "reward": summarise(rows, components), "flow_loss": flow, "vae": vae, "per_sample": rows}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / REPORT).write_text(json.dumps(report, indent=1) + "\n")
        write_csv(out_dir / SCORES, [{k: v for k, v in r.items() if k != "caption"} for r in rows])
        write_csv(out_dir / COMPONENTS, [{"component": k, "mean": v["mean"], "se": v["se"]}
                                         for k, v in report["reward"].items() if not k.startswith(CONTROL)])
        write_csv(out_dir / FLOW_LOSS, [{"timestep": float(k[1:]), "loss": v} for k, v in flow.items() if k != "mean"])
        grid = write_grid(out_dir, rows, cfg.seeds, cfg.grid_scale, cfg.fps)
        metrics = key_metrics(report)
        write_key_metrics(metrics_path, metrics)
        tracked.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
        for path in (out_dir / REPORT, grid, out_dir / "plots"):
            tracked.log_artifact(path, NAME)
        if tracker is not None:
            tags = {f"{TAG_PREFIX}{k}": f"{v:.4g}" for k, v in metrics.items()
                    if (k.endswith("_mean") and not k.startswith(CONTROL)) or k == "flow_loss_mean"}
            versions = tracking.model_versions_of(model, tracker)
            for version in versions:
                tracking.tag_model_version(version, {**tags, f"{TAG_PREFIX}run_id": tracked.run_id}, tracker)
            report["tagged_versions"] = [int(v.version) for v in versions]
    return report


def vae_numbers(path: Path | None) -> dict[str, float]:
    """The VAE's held-out reconstruction numbers from train-vae's `recon_report.json` ({} without one)."""
    if path is None or not Path(path).exists():
        return {}
    report = json.loads(Path(path).read_text())
    numbers = {"psnr": report["mean"]["vae_psnr"], "ssim": report["mean"]["vae_ssim"],
               "baseline_psnr": report["mean"]["baseline_psnr"], "delta_psnr_db": report["delta_psnr_db"],
               "held_out_clips": len(report["per_clip"])}
    if "delta_psnr_db_se" in report:
        numbers["delta_psnr_db_se"] = report["delta_psnr_db_se"]
    return numbers
