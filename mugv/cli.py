"""`mugv <stage>`: one typer command per stage; parse the arguments, validate params, call `stages.<name>.run`."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from mugv.config import ParamsError, load_params
from mugv.stages import as_dict, numeric_leaves

app = typer.Typer(
    name="mugv",
    help="The training pipeline for MUG-V-style video generators. Each command is one pipeline stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)

# Quiet, offline defaults for the libraries every stage touches; a user's own settings win.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def quiet_environment() -> None:
    """Set the quiet, offline defaults of QUIET_ENV where the user has not set them."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


@app.callback()
def main() -> None:
    """Runs before every command: the quiet, offline environment defaults; Megatron's TE/Apex import warnings hidden."""
    from mugv.training.megatron_compat import silence_megatron_import_warnings

    quiet_environment()
    silence_megatron_import_warnings()


ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (validated before any work)")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bars")
MetricsOpt = typer.Option(None, "--metrics", help="where the stage's key numbers go (default: metrics/<stage>.json, "
                          "committed with dvc.lock)")


def _params(path: Path):
    try:
        return load_params(path)
    except ParamsError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None


def _print_counts(title: str, report) -> None:
    """A one-table summary of a stage's numeric results (a report dataclass, model or mapping)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    for k, v in numeric_leaves(as_dict(report)).items():
        table.add_row(k, f"{v:g}")
    console.print(table)


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="folder to write the generated videos into"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Generate the embedded default data set: captioned videos of moving shapes (with cuts, fades, poor videos)."""
    from mugv.stages import synth as stage

    p = _params(params)
    report = stage.run(out_dir, p.synth, p.project.tracking, progress=not quiet, metrics_path=metrics or stage.METRICS)
    _print_counts(stage.NAME, report)


@app.command()
def ingest(
    source: str = typer.Argument(..., help="a folder, an s3://bucket/prefix, or a manifest .csv/.jsonl"),
    out_dir: Path = typer.Argument(..., help="writes clips/, clips.parquet, quarantine.parquet here"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Probe, dedup, scene-split and caption raw videos into one-shot clips; bad input is quarantined."""
    from mugv.stages import ingest as stage

    p = _params(params)
    report = stage.run(source, out_dir, p.ingest, p.project.tracking, progress=not quiet,
                       metrics_path=metrics or stage.METRICS)
    if quiet:  # with progress on, the stage prints its own summary
        _print_counts(stage.NAME, report)


@app.command()
def qc(
    clips_dir: Path = typer.Argument(..., help="output folder of `mugv ingest` (clips.parquet, clips/)"),
    out_dir: Path = typer.Argument(..., help="writes qc.parquet, plots/, ge_report.* here"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Score clips with the MUG-V filters, decide keep/reject, and gate the table with Great Expectations."""
    from mugv.data.expectations import ExpectationsFailed
    from mugv.stages import qc as stage

    p = _params(params)
    try:
        report = stage.run(clips_dir, out_dir, p.qc, p.project.tracking, progress=not quiet,
                           metrics_path=metrics or stage.METRICS)
    except ExpectationsFailed as e:
        console.print(f"[red]data gate failed:[/red] {e}\nreport: {out_dir / stage.GE_REPORT_MD}")
        raise typer.Exit(1) from None
    _print_counts(stage.NAME, report)


@app.command("train-vae")
def train_vae(
    clips_dir: Path = typer.Argument(..., help="output folder of `mugv ingest`"),
    qc_dir: Path = typer.Argument(..., help="output folder of `mugv qc` (qc.parquet: which clips to keep)"),
    out_dir: Path = typer.Argument(..., help="writes vae.safetensors, vae_config.json, recon_report.json, samples/"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Train the MUG-V video VAE (spatial, then temporal) on kept clips, or adopt `train_vae.checkpoint`."""
    from mugv.stages import train_vae as stage

    p = _params(params)
    report = stage.run(clips_dir, qc_dir, out_dir, p.train_vae, p.project.tracking, progress=not quiet,
                       metrics_path=metrics or stage.METRICS)
    _print_counts("train-vae", report)


@app.command()
def encode(
    clips_dir: Path = typer.Argument(..., help="output folder of `mugv ingest`"),
    qc_dir: Path = typer.Argument(..., help="output folder of `mugv qc`"),
    vae_path: Path = typer.Argument(..., help="VAE checkpoint folder (from `mugv train-vae`)"),
    out_dir: Path = typer.Argument(..., help="writes shards/, latents.parquet, latent_stats.json, text_null.safetensors"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Encode kept clips into bucketed, per-channel-standardised VAE latents and caption features."""
    from mugv.data.expectations_buckets import BucketCheckError
    from mugv.stages import encode as stage

    p = _params(params)
    try:
        report = stage.run(clips_dir, qc_dir, vae_path, out_dir, p.encode, p.project.tracking, progress=not quiet,
                           negative_prompt=p.diffusion.sampler.negative_prompt, metrics_path=metrics or stage.METRICS)
    except BucketCheckError as e:
        console.print(f"[red]bucket gate failed:[/red] {e}")
        raise typer.Exit(1) from None
    _print_counts(stage.NAME, report)


@app.command()
def pretrain(
    latents_dir: Path = typer.Argument(..., help="output folder of `mugv encode`"),
    out_dir: Path = typer.Argument(..., help="writes checkpoints/, release/, samples/, metrics of this stage"),
    stage_name: str = typer.Option(..., "--stage", help="curriculum stage name (params pretrain.stages)"),
    init_from: str = typer.Option("", "--init-from", help="previous stage's output folder or checkpoint"),
    vae: Path = typer.Option(Path("models/vae"), "--vae", help="the VAE of the latents (bundled into the release)"),
    register: bool = typer.Option(True, "--register/--no-register", help="register the release in MLflow"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Train one curriculum stage of MUGDiT (in-process, or under torchrun), then release and register it."""
    from mugv.stages import pretrain as stage

    p = _params(params)
    result = stage.run(
        latents_dir, out_dir, p.pretrain, p.project.tracking, stage=stage_name, init_from=init_from, vae=vae,
        flow=p.diffusion.training, sampler=p.diffusion.sampler, text=p.encode.text, register=register,
        progress=not quiet, metrics_path=metrics or stage.metrics_file(stage_name),
    )
    if result is not None:  # None on the other ranks of a torchrun job
        _print_counts(f"{stage.NAME}@{stage_name}", result)


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", help="what the video shows"),
    checkpoint: str = typer.Option(..., "--checkpoint", help="release folder, models:/NAME@ALIAS, or a training checkpoint"),
    out: Path = typer.Option(Path("outputs/sample.mp4"), "--out", help="H.264 mp4 to write"),
    image: Path | None = typer.Option(None, "--image", help="first frame (image-to-video)"),
    frames: int = typer.Option(17, help="frames (8k+1)"),
    height: int = typer.Option(96, help="height in pixels (multiple of 16)"),
    width: int = typer.Option(128, help="width in pixels (multiple of 16)"),
    steps: int | None = typer.Option(None, help="Euler steps (default: params diffusion.sampler.steps)"),
    cfg: float | None = typer.Option(None, "--cfg", help="guidance scale (default: params diffusion.sampler.cfg_scale)"),
    seed: int = typer.Option(0),
    fps: float = typer.Option(12.0),
    vae: Path | None = typer.Option(None, help="VAE folder (only for a training checkpoint)"),
    latents: Path | None = typer.Option(None, help="latent data set (only for a training checkpoint)"),
    params: Path = ParamsOpt,
):
    """Render a video from a trained DiT: text-to-video, or image-to-video with --image."""
    from mugv import tracking
    from mugv.inference.generate import generate as render

    p = _params(params)
    if height % 16 or width % 16 or (frames - 1) % 8 and frames != 1:
        console.print("[red]height and width must be multiples of 16 and frames 1 or 8k+1[/red]")
        raise typer.Exit(2)
    first = _read_image(image, height, width) if image else None
    path = render(
        tracking.resolve_model_ref(checkpoint, p.project.tracking), prompt, out, vae=vae, latents_dir=latents,
        image=first, frames=frames, height=height, width=width, steps=steps or p.diffusion.sampler.steps,
        cfg=p.diffusion.sampler.cfg_scale if cfg is None else cfg, seed=seed, fps=fps,
    )
    console.print(f"wrote {path}")


def _read_image(path: Path, height: int, width: int):
    """An image file as RGB uint8 [height, width, 3] (resized to cover, centre-cropped)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        console.print(f"[red]cannot read image {path}[/red]")
        raise typer.Exit(2)
    h, w = bgr.shape[:2]
    scale = max(height / h, width / w)
    resized = cv2.resize(bgr, (max(width, round(w * scale)), max(height, round(h * scale))), interpolation=cv2.INTER_AREA)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return cv2.cvtColor(resized[top : top + height, left : left + width], cv2.COLOR_BGR2RGB)


class ConvertedModel(str, Enum):
    dit = "dit"
    vae = "vae"


class CheckpointFormat(str, Enum):
    official = "official"
    mugv = "mugv"
    megatron = "megatron"


@app.command()
def convert(
    src: Path = typer.Argument(..., help="source checkpoint (official: .pt/.safetensors file; mugv, megatron: folders)"),
    dst: Path = typer.Argument(..., help="destination"),
    from_: CheckpointFormat = typer.Option(..., "--from", help="format of SRC"),
    to: CheckpointFormat = typer.Option(..., "--to", help="format of DST"),
    tp: int = typer.Option(1, help="tensor-parallel size to load at (> 1 runs under torchrun)"),
    model: ConvertedModel = typer.Option(ConvertedModel.dit, help="dit, or vae (official <-> mugv only)"),
    vae_preset: str = typer.Option("full", help="VAE sizes of an official checkpoint (MUG-V's: full)"),
):
    """Convert checkpoints: DiT official MUG-V <-> mugv safetensors <-> Megatron torch_dist (reshardable);
    VAE official vae.pt <-> mugv folder."""
    if model is ConvertedModel.vae:
        from mugv.models.vae.convert import convert_vae

        convert_vae(src, dst, from_.value, to.value, preset=vae_preset)
    else:
        from mugv.models.dit.convert import convert_checkpoint, needs_process_group

        if needs_process_group(from_.value, to.value, tp):
            from mugv.training.distributed import init_parallel

            init_parallel(tp=tp)
        convert_checkpoint(src, dst, from_.value, to.value, tp=tp)
    console.print(f"wrote {dst} ({model.value}, {to.value})")


@app.command()
def plan(
    preset: str = typer.Argument(..., help="DiT preset: tiny, small, debug, 1B, 4B, 10B, 18B"),
    frames: int = typer.Option(105, help="video frames (MUG-V: 105 = 5 s at 21 fps)"),
    height: int = typer.Option(720, help="frame height in pixels"),
    width: int = typer.Option(1280, help="frame width in pixels"),
    text_len: int = typer.Option(300, help="text tokens (T5: 300)"),
    tp: int = typer.Option(1, help="tensor parallel"),
    cp: int = typer.Option(1, help="context parallel"),
    dp: int = typer.Option(64, help="data-parallel ranks sharing the distributed optimizer"),
    micro_batch: int = typer.Option(1, help="samples per micro-batch"),
    recompute: bool = typer.Option(False, help="full activation recomputation"),
    table: bool = typer.Option(False, "--table", help="the memory table for H100/H200, 1B/4B/10B at 256p/480p/720p"),
):
    """What one training sample of a preset costs: parameters, tokens, FLOPs, memory per GPU, a layout."""
    from mugv.planning import memory
    from mugv.planning.plan import format_plan, plan as make_plan

    if table:
        memory.main()
        return
    report = make_plan(preset, frames, height, width, text_len)
    typer.echo(format_plan(report))
    layout = memory.Layout(tp=tp, cp=cp, dp=dp, micro_batch=micro_batch, recompute=recompute)
    est = memory.estimate(preset, report.sample.tokens, layout, text_len)
    typer.echo(
        f"memory per GPU (TP{tp} CP{cp} DP{dp}, micro-batch {micro_batch}{', recompute' if recompute else ''}): "
        f"{est.total_gib:.1f} GiB = weights+grads {est.weights_gib:.1f} + optimizer {est.optimizer_gib:.1f} "
        f"+ activations {est.activations_gib:.1f} + overhead {est.overhead_gib:.1f}"
    )
    for gpu, gib in memory.GPUS_GIB.items():
        best = memory.recommend(preset, report.sample.tokens, gib, dp)
        advice = (f"TP{best.tp} CP{best.cp}{' + recompute' if best.recompute else ''}" if best else "does not fit")
        typer.echo(f"recommended on {gpu}: {advice}")


@app.command()
def pipeline(
    stages: list[str] = typer.Option(None, "--stage", "-s", help="run only these DVC stages (and what they need)"),
    force: bool = typer.Option(False, "--force", help="rerun stages even when DVC says they are up to date"),
    params: Path = ParamsOpt,
):
    """Run the DVC stages in DAG order as a Prefect flow, tracked as one MLflow pipeline run."""
    from flows.pipeline import pipeline_flow

    _params(params)  # reject bad params before any work
    result = pipeline_flow(stages=stages or None, force=force, params_file=str(params))
    console.print(f"[bold green]pipeline finished[/bold green] run_id={result['run_id']} stages={result['stages']}")


if __name__ == "__main__":
    app()
