"""`mugv <stage>`: one typer command per stage; parse the arguments, validate params, call `stages.<name>.run`."""

from __future__ import annotations

import errno
import os
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from typer._click import exceptions as click_exceptions  # typer 0.29 vendors click: its exceptions live here
from typer.core import TyperCommand, TyperGroup

import mugv
from mugv.config import ParamsError, load_params
from mugv.stages import as_dict, numeric_leaves


class CliError(click_exceptions.ClickException):
    """A user's mistake in arguments, paths, names or params: printed as one line, exit status 2.

    A ClickException, so that click's own standalone mode (typer's CliRunner) handles it the same way."""

    exit_code = 2


def _print_error(message: str) -> None:
    """One line on stderr (plain print: rich would wrap it at the terminal width)."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)


class _FlagsAsFlags:
    """Help without type noise: flags show no `<bool>`, arguments show their NAME in capitals."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if param.metavar is None and getattr(param, "is_flag", False):
                param.metavar = ""
            elif param.metavar is None and param.param_type_name == "argument":
                param.metavar = param.name.upper()
        return params


class _Command(_FlagsAsFlags, TyperCommand):
    pass


class _Group(_FlagsAsFlags, TyperGroup):
    pass


class _App(typer.Typer):
    """The typer app whose every mistake ends as one line on stderr and a non-zero exit, never a traceback."""

    def __call__(self, args: list[str] | None = None, prog_name: str = "mugv") -> None:
        command = typer.main.get_command(self)
        try:
            status = command.main(args=args, prog_name=prog_name, standalone_mode=False)
        except click_exceptions.NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help())
            status = 0
        except click_exceptions.UsageError as e:
            help_hint = f" (see '{e.ctx.command_path} -h')" if e.ctx is not None else ""
            _print_error(f"{e.format_message()}{help_hint}")
            status = e.exit_code
        except click_exceptions.ClickException as e:
            _print_error(e.format_message())
            status = e.exit_code
        except typer.Abort:
            _print_error("aborted")
            status = 1
        except CliError as e:
            _print_error(str(e))
            status = 2
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _print_error(str(e))  # a full disk, in whichever stage: one line
            status = 1
        sys.exit(status if isinstance(status, int) else 0)


app = _App(
    name="mugv",
    help="The training pipeline for MUG-V-style video generators. Each command is one pipeline stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)

# Quiet, offline defaults for the libraries every stage touches; a user's own settings win.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # no "Loading weights" bar from transformers under --quiet
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def quiet_environment() -> None:
    """Set the quiet, offline defaults of QUIET_ENV where the user has not set them."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mugv {mugv.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True, help="print the version"),
) -> None:
    """Runs before every command: the quiet, offline environment defaults; Arrow on the system allocator;
    Megatron's TE/Apex import warnings hidden."""
    from mugv.arrow_memory import use_system_allocator
    from mugv.training.megatron_compat import silence_megatron_import_warnings

    quiet_environment()
    use_system_allocator()
    silence_megatron_import_warnings()


ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params file (validated before any work)")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bars")
MetricsOpt = typer.Option(None, "--metrics", help="where the stage's key numbers go (default: metrics/<stage>.json, "
                          "committed with dvc.lock)")


DEFAULT_PARAMS = Path("params.yaml")


def _params(path: Path):
    """params.yaml validated; a CliError naming the file and the problem (every bad key path) otherwise.

    A missing default params.yaml means all defaults; a missing file given with --params is a mistake.
    """
    import yaml

    if path != DEFAULT_PARAMS and not path.is_file():
        raise CliError(f"params file {path} does not exist" if not path.exists() else f"params file {path} is not a file")
    try:
        return load_params(path)
    except yaml.YAMLError as e:
        raise CliError(f"params file {path} is not valid YAML: {e}") from None
    except ParamsError as e:
        problems = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise CliError(f"invalid params in {path}: {'; '.join(problems)}" if problems else str(e)) from None


def _print_counts(title: str, report) -> None:
    """A one-table summary of a stage's numeric results (a report dataclass, model or mapping)."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    for k, v in numeric_leaves(as_dict(report)).items():
        table.add_row(k, f"{v:g}")
    console.print(table)


@app.command(cls=_Command)
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


@app.command(cls=_Command)
def ingest(
    source: str = typer.Argument(..., help="a folder, an s3://bucket/prefix, or a manifest .csv/.jsonl"),
    out_dir: Path = typer.Argument(..., help="writes clips/, clips.parquet, clip_scores.parquet, quarantine.parquet here"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Probe, dedup, scene-split and caption raw videos into one-shot clips; bad input is quarantined."""
    if "://" not in source and not Path(source).exists():
        raise CliError(f"source {source} does not exist (give a folder, an s3://bucket/prefix or a .csv/.jsonl manifest)")
    from mugv.data.sources import SourceNotAllowed, check_bucket
    from mugv.stages import ingest as stage

    p = _params(params)
    try:
        check_bucket(source, p.ingest.allowed_buckets)  # before any work, the stage's run included
    except SourceNotAllowed as e:
        raise CliError(str(e)) from None
    report = stage.run(source, out_dir, p.ingest, p.project.tracking, progress=not quiet,
                       metrics_path=metrics or stage.METRICS, scoring=p.qc.scoring())
    if quiet:  # with progress on, the stage prints its own summary
        _print_counts(stage.NAME, report)


@app.command(cls=_Command)
def qc(
    clips_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv ingest` (clips.parquet, clips/)"),
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


@app.command("train-vae", cls=_Command)
def train_vae(
    clips_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv ingest`"),
    qc_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv qc` (qc.parquet: which clips to keep)"),
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


@app.command(cls=_Command)
def encode(
    clips_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv ingest`"),
    qc_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv qc`"),
    vae_path: Path = typer.Argument(..., exists=True, help="VAE checkpoint folder (from `mugv train-vae`)"),
    out_dir: Path = typer.Argument(..., help="writes shards/, latents.parquet, latent_stats.json, text_null.safetensors"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Encode kept clips into bucketed, per-channel-standardised VAE latents and caption features."""
    from mugv.data.expectations_buckets import BucketCheckError
    from mugv.models.text.model import TextEncoderNotFound
    from mugv.stages import encode as stage

    p = _params(params)
    try:
        report = stage.run(clips_dir, qc_dir, vae_path, out_dir, p.encode, p.project.tracking, progress=not quiet,
                           negative_prompt=p.diffusion.sampler.negative_prompt, metrics_path=metrics or stage.METRICS)
    except BucketCheckError as e:
        console.print(f"[red]bucket gate failed:[/red] {e}")
        raise typer.Exit(1) from None
    except TextEncoderNotFound as e:
        raise CliError(str(e)) from None
    _print_counts(stage.NAME, report)


@app.command(cls=_Command)
def pretrain(
    latents_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv encode`"),
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
    p = _params(params)
    curriculum = [entry.name for entry in p.pretrain.stages]
    if stage_name not in curriculum:
        raise CliError(f"unknown --stage {stage_name!r}; params pretrain.stages has: {', '.join(curriculum) or 'none'}")
    from mugv.inference.release import NonFiniteWeightsError
    from mugv.stages import pretrain as stage
    from mugv.training.checkpoint_dir import CheckpointIntegrityError

    try:
        result = stage.run(
            latents_dir, out_dir, p.pretrain, p.project.tracking, stage=stage_name, init_from=init_from, vae=vae,
            flow=p.diffusion.training, sampler=p.diffusion.sampler, text=p.encode.text, register=register,
            progress=not quiet, metrics_path=metrics or stage.metrics_file(stage_name),
        )
    except (CheckpointIntegrityError, NonFiniteWeightsError) as e:
        raise CliError(f"refused: {e}") from None
    if result is not None:  # None on the other ranks of a torchrun job
        _print_counts(f"{stage.NAME}@{stage_name}", result)


@app.command(cls=_Command)
def evaluate(
    model: str = typer.Argument(..., help="a release folder or a registered version: models:/NAME@ALIAS or models:/NAME/VERSION"),
    out_dir: Path = typer.Argument(Path("eval"), help="writes eval.json, samples/, grid.mp4, plots/"),
    prompts: Path = typer.Option(Path("data/synth/heldout.jsonl"), "--prompts", help="held-out prompts, one JSON "
                                 "object with a `caption` per line"),
    latents_dir: Path = typer.Option(Path("data/latents"), "--latents", help="latent set for the held-out flow loss"),
    vae_report: Path = typer.Option(Path("models/vae/recon_report.json"), "--vae-report",
                                    help="the VAE's held-out reconstruction report (train-vae writes it)"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Score a model's samples of held-out prompts with a reward, its held-out flow loss and its VAE's numbers;
    tag the evaluated model version in MLflow."""
    if not model.startswith("models:/") and not Path(model).is_dir():
        raise CliError(f"model {model} is neither a release folder nor a models:/NAME@ALIAS or models:/NAME/VERSION reference")
    if not prompts.is_file():
        raise CliError(f"--prompts {prompts} does not exist (`mugv synth` writes data/synth/heldout.jsonl)")
    if not (latents_dir / "latents.parquet").is_file():
        raise CliError(f"--latents {latents_dir} is not a latent set (no latents.parquet; `mugv encode` writes one)")
    p = _params(params)
    from mugv.eval.reward import get_reward
    from mugv.stages import evaluate as stage

    from mugv import tracking

    try:
        get_reward(p.evaluate.reward)
    except ValueError as e:
        raise CliError(f"params evaluate.reward: {e}") from None
    try:
        tracking.resolve_model_ref(model, p.project.tracking)  # downloads (once) a registered version
    except tracking.ModelRefError as e:
        raise CliError(str(e)) from None
    report = stage.run(model, prompts, latents_dir, vae_report, out_dir, p.evaluate, p.project.tracking,
                       sampler=p.diffusion.sampler, heldout=p.pretrain.heldout, seed=p.pretrain.seed,
                       progress=not quiet, metrics_path=metrics or stage.METRICS)
    _print_counts(stage.NAME, stage.key_metrics(report))


@app.command("preference-data", cls=_Command)
def preference_data(
    release: str = typer.Argument(..., help="a release folder or a registered version: models:/NAME@ALIAS or models:/NAME/VERSION"),
    out_dir: Path = typer.Argument(..., help="writes latents.safetensors, samples/pairs/labels/rejected.jsonl, summary.json, videos/"),
    latents_dir: Path = typer.Option(Path("data/latents"), "--latents", help="latent set whose captions are the training prompts"),
    heldout: Path = typer.Option(Path("data/synth/heldout.jsonl"), "--heldout", help="held-out evaluation prompts: never used"),
    labels: list[Path] = typer.Option(None, "--labels", metavar="FILE", help="a human label file (.csv, .jsonl, Label "
                                      "Studio .json); repeat for several; replaces params preference_data.human_labels"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Make the preference set for dpo/kto: a release's samples of training prompts scored by a reward (pairs by
    reward margin, labels by threshold) and/or imported human labels."""
    if not release.startswith("models:/") and not (Path(release) / RELEASE_MANIFEST).is_file():
        raise CliError(f"release {release} is neither a release folder (with {RELEASE_MANIFEST}) nor a models:/NAME@ALIAS "
                       "or models:/NAME/VERSION reference")
    for file in labels or []:
        if not file.is_file():
            raise CliError(f"--labels {file} does not exist")
    p = _params(params)
    cfg = p.preference_data.model_copy(update={"human_labels": [str(f) for f in labels]}) if labels else p.preference_data
    with_reward, with_human = cfg.source in ("reward", "both"), cfg.source in ("human", "both")
    if labels and not with_human:
        raise CliError(f"--labels given, but params preference_data.source is {cfg.source!r}: set it to human or both")
    if with_human and not cfg.human_labels:
        raise CliError(f"params preference_data.source is {cfg.source!r} and there is no label file: give --labels FILE "
                       "or params preference_data.human_labels")
    for file in cfg.human_labels if with_human and not labels else []:
        if not Path(file).is_file():
            raise CliError(f"params preference_data.human_labels: {file} does not exist")
    if with_reward and not (latents_dir / "latents.parquet").is_file():
        raise CliError(f"--latents {latents_dir} is not a latent set (no latents.parquet; `mugv encode` writes one)")
    if with_reward and not heldout.is_file():
        raise CliError(f"--heldout {heldout} does not exist (`mugv synth` writes data/synth/heldout.jsonl)")
    from mugv import tracking
    from mugv.eval.reward import get_reward
    from mugv.preference.human_labels import LabelFileError
    from mugv.preference.reward_labels import NoTrainingPrompts
    from mugv.stages import preference_data as stage

    if with_reward:
        try:
            get_reward(cfg.reward)
        except ValueError as e:
            raise CliError(f"params preference_data.reward: {e}") from None
    try:
        tracking.resolve_model_ref(release, p.project.tracking)  # downloads (once) a registered version
    except tracking.ModelRefError as e:
        raise CliError(str(e)) from None
    try:
        summary = stage.run(release, latents_dir, heldout, out_dir, cfg, p.diffusion.sampler, p.project.tracking,
                            progress=not quiet, metrics_path=metrics or stage.METRICS)
    except (LabelFileError, NoTrainingPrompts) as e:
        raise CliError(str(e)) from None
    _print_counts(stage.NAME, stage.key_metrics(summary))


def _check_start(init_from: Path, what: str) -> None:
    """A post-training stage's starting point must be a finished stage's output folder."""
    if not init_from.is_dir():
        raise CliError(f"--init-from {init_from} does not exist ({what} writes it)")


@app.command(cls=_Command)
def sft(
    latents_dir: Path = typer.Argument(..., exists=True, help="output folder of `mugv encode`"),
    out_dir: Path = typer.Argument(..., help="writes checkpoints/, release/, samples/, curated_clips.json"),
    init_from: Path = typer.Option(..., "--init-from", help="the last curriculum stage's output folder"),
    qc_table: Path = typer.Option(Path("data/qc/qc.parquet"), "--qc", help="qc scores of the clips (`mugv qc`)"),
    vae: Path = typer.Option(Path("models/vae"), "--vae", help="the VAE of the latents (bundled into the release)"),
    register: bool = typer.Option(True, "--register/--no-register", help="register the release in MLflow"),
    params: Path = ParamsOpt,
    quiet: bool = QuietOpt,
    metrics: Path | None = MetricsOpt,
):
    """Supervised fine-tuning: the last curriculum stage on the curated clips, lr annealed to 0; release, register."""
    _check_start(init_from, "`mugv pretrain` of the last curriculum stage")
    if not qc_table.is_file():
        raise CliError(f"--qc {qc_table} does not exist (`mugv qc` writes data/qc/qc.parquet)")
    p = _params(params)
    from mugv.stages import sft as stage

    try:
        result = stage.run(latents_dir, qc_table, init_from, out_dir, p.sft, p.pretrain, p.project.tracking, vae=vae,
                           flow=p.diffusion.training, sampler=p.diffusion.sampler, text=p.encode.text,
                           register=register, progress=not quiet, metrics_path=metrics or stage.METRICS)
    except ValueError as e:
        if "sft.curation" not in str(e):
            raise
        raise CliError(str(e)) from None
    if result is not None:  # None on the other ranks of a torchrun job
        _print_counts(stage.NAME, result)


def _preference_opt(method: str, preference_dir: Path, latents_dir: Path, out_dir: Path, init_from: Path, vae: Path,
                    register: bool, params: Path, quiet: bool, metrics: Path | None) -> None:
    _check_start(init_from, "`mugv sft`")
    if not (preference_dir / "pairs.jsonl").is_file():
        raise CliError(f"{preference_dir} is not a preference set (no pairs.jsonl; `mugv preference-data` writes one)")
    p = _params(params)
    from mugv.stages import preference_opt as stage

    result = stage.run(preference_dir, latents_dir, init_from, out_dir, getattr(p, method), p.pretrain,
                       p.project.tracking, vae=vae, flow=p.diffusion.training, sampler=p.diffusion.sampler,
                       text=p.encode.text, register=register, progress=not quiet,
                       metrics_path=metrics or Path(stage.METRICS.format(method=method)))
    if result is not None:
        _print_counts(method, result)


PreferenceDirArg = typer.Argument(..., help="output folder of `mugv preference-data`")
PostLatentsOpt = typer.Option(Path("data/latents"), "--latents", help="latent set (held-out flow loss, CFG features)")
PostOutArg = typer.Argument(..., help="writes checkpoints/, release/, samples/ (and adapter/ with LoRA)")
PostInitOpt = typer.Option(Path("models/sft"), "--init-from", help="the SFT stage's output folder (also the reference)")
PostVaeOpt = typer.Option(Path("models/vae"), "--vae", help="the VAE of the latents (bundled into the release)")
PostRegisterOpt = typer.Option(True, "--register/--no-register", help="register the release in MLflow")


@app.command(cls=_Command)
def dpo(preference_dir: Path = PreferenceDirArg, out_dir: Path = PostOutArg, latents_dir: Path = PostLatentsOpt,
        init_from: Path = PostInitOpt, vae: Path = PostVaeOpt, register: bool = PostRegisterOpt,
        params: Path = ParamsOpt, quiet: bool = QuietOpt, metrics: Path | None = MetricsOpt):
    """Flow-DPO of the SFT model on the preference pairs (params dpo); release, register."""
    _preference_opt("dpo", preference_dir, latents_dir, out_dir, init_from, vae, register, params, quiet, metrics)


@app.command(cls=_Command)
def kto(preference_dir: Path = PreferenceDirArg, out_dir: Path = PostOutArg, latents_dir: Path = PostLatentsOpt,
        init_from: Path = PostInitOpt, vae: Path = PostVaeOpt, register: bool = PostRegisterOpt,
        params: Path = ParamsOpt, quiet: bool = QuietOpt, metrics: Path | None = MetricsOpt):
    """Diffusion-KTO of the SFT model on the desirable / undesirable labels (params kto); release, register."""
    _preference_opt("kto", preference_dir, latents_dir, out_dir, init_from, vae, register, params, quiet, metrics)


PROMOTION_KEPT_EXIT = 3  # `mugv promote`: the candidate lost, the champion stays (0: promoted or already champion)


def _print_decision(model: str, decision) -> None:
    """The decision's checks as a table (rule, metric, both sides' numbers, change, limit, result), then one line."""
    from rich.table import Table

    from mugv.registry.promotion import ROW_HEADER, decision_rows

    rows = decision_rows(decision)
    if rows:
        table = Table(title=f"{model}: candidate {decision.candidate_version} vs champion "
                            f"{decision.champion_version or 'none'}", title_justify="left")
        for column in ROW_HEADER:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"[bold]{decision.outcome}[/bold]: {decision.reason}")


@app.command(cls=_Command)
def promote(
    model: str | None = typer.Option(None, "--model", help="registered model (default: params project.tracking.registered_model)"),
    version: int | None = typer.Option(None, "--version", min=1, help="the version to judge (default: the one under params promotion.candidate_alias)"),
    params: Path = ParamsOpt,
):
    """Move @champion to the evaluated candidate only when it beats the champion (params promotion). Exit status
    0: promoted (or already champion), 3: the champion stays."""
    p = _params(params)
    from mugv.registry.promotion import PromotionError, promote as judge

    name = model or p.project.tracking.registered_model
    try:
        decision = judge(p.promotion, p.project.tracking, name, version)
    except PromotionError as e:
        raise CliError(str(e)) from None
    _print_decision(name, decision)
    if decision.outcome == "rejected":
        raise typer.Exit(PROMOTION_KEPT_EXIT)


@app.command(cls=_Command)
def rollback(
    model: str | None = typer.Option(None, "--model", help="registered model (default: params project.tracking.registered_model)"),
    params: Path = ParamsOpt,
):
    """Move @champion back to the champion the current one replaced."""
    p = _params(params)
    from mugv.registry.promotion import PromotionError, rollback as roll_back

    name = model or p.project.tracking.registered_model
    try:
        decision = roll_back(p.promotion, p.project.tracking, name)
    except PromotionError as e:
        raise CliError(str(e)) from None
    _print_decision(name, decision)


RELEASE_MANIFEST = "release.json"  # mugv.inference.release.MANIFEST, without importing torch


def _check_generate_args(checkpoint: str, out: Path, image: Path | None, frames: int, height: int, width: int,
                         fps: float, vae: Path | None, latents: Path | None) -> None:
    """Every argument of `mugv generate` that can be checked without torch; a CliError for the first bad one."""
    if height % 16 or width % 16:
        raise CliError(f"--height and --width must be multiples of 16, got {height}x{width}")
    if frames != 1 and (frames - 1) % 8:
        lower = (frames - 1) // 8 * 8 + 1
        raise CliError(f"--frames must be 1 or 8k+1 (..., 9, 17, 25, 33, ...), got {frames}; nearest: {lower} or {lower + 8}")
    if fps <= 0:
        raise CliError(f"--fps must be positive, got {fps}")
    if out.suffix.lower() != ".mp4":
        raise CliError(f"--out {out}: generate writes H.264 .mp4 files only, not {out.suffix or 'a file without suffix'}")
    if image is not None and not image.is_file():
        raise CliError(f"--image {image} does not exist")
    if checkpoint.startswith("models:/"):
        return
    path = Path(checkpoint)
    if not path.exists():
        raise CliError(f"checkpoint {path} does not exist (give a release folder, e.g. models/pretrain/STAGE/release, "
                       "or models:/NAME@ALIAS)")
    if (path / RELEASE_MANIFEST).is_file():
        return
    if vae is None or latents is None:
        raise CliError(f"checkpoint {path} is not a release folder (no {RELEASE_MANIFEST}): a training checkpoint "
                       "or a converted DiT folder also needs --vae and --latents")
    for flag, folder in (("--vae", vae), ("--latents", latents)):
        if not folder.exists():
            raise CliError(f"{flag} {folder} does not exist")


@app.command(cls=_Command)
def generate(
    checkpoint: str = typer.Argument(..., help="release folder, models:/NAME@ALIAS or models:/NAME/VERSION, or (with --vae and --latents) a training checkpoint or converted DiT folder"),
    prompt: str = typer.Argument(..., help="what the video shows"),
    out: Path = typer.Option(Path("outputs/sample.mp4"), "--out", "-o", help="H.264 .mp4 file to write"),
    image: Path | None = typer.Option(None, "--image", help="first frame (image-to-video)"),
    frames: int = typer.Option(17, min=1, help="frames: 1 or 8k+1"),
    height: int = typer.Option(96, min=16, help="height in pixels (multiple of 16)"),
    width: int = typer.Option(128, min=16, help="width in pixels (multiple of 16)"),
    steps: int | None = typer.Option(None, min=1, help="Euler steps (default: params diffusion.sampler.steps)"),
    cfg: float | None = typer.Option(None, "--cfg", min=0.0, help="guidance scale (default: params diffusion.sampler.cfg_scale)"),
    seed: int = typer.Option(0, help="random seed of the initial noise"),
    fps: float = typer.Option(12.0, help="frames per second of the video (also a model input)"),
    vae: Path | None = typer.Option(None, help="VAE folder (only for a training checkpoint)"),
    latents: Path | None = typer.Option(None, help="latent data set (only for a training checkpoint)"),
    params: Path = ParamsOpt,
):
    """Render a video from a trained DiT: text-to-video, or image-to-video with --image."""
    _check_generate_args(checkpoint, out, image, frames, height, width, fps, vae, latents)
    p = _params(params)
    first = _read_image(image, height, width) if image else None

    from mugv import tracking

    try:
        local = tracking.resolve_model_ref(checkpoint, p.project.tracking)
    except tracking.ModelRefError as e:
        raise CliError(str(e)) from None

    from mugv.inference.generate import generate as render

    path = render(
        local, prompt, out, vae=vae, latents_dir=latents,
        image=first, frames=frames, height=height, width=width, steps=steps or p.diffusion.sampler.steps,
        cfg=p.diffusion.sampler.cfg_scale if cfg is None else cfg, seed=seed, fps=fps,
    )
    console.print(f"wrote {path}")


def _read_image(path: Path, height: int, width: int):
    """An image file as RGB uint8 [height, width, 3] (resized to cover, centre-cropped)."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CliError(f"--image {path} is not an image file OpenCV can read")
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


def _check_convert_args(src: Path, from_: CheckpointFormat, to: CheckpointFormat, model: ConvertedModel,
                        vae_preset: str, tp: int) -> None:
    """The source exists in its format's shape and the model converts between the two formats; else a CliError."""
    from mugv.models.vae.config import PRESETS as VAE_PRESETS

    if not src.exists():
        raise CliError(f"source {src} does not exist")
    if from_ is CheckpointFormat.official and not src.is_file():
        raise CliError(f"source {src} is a folder; an official checkpoint is one .pt or .safetensors file")
    if from_ is not CheckpointFormat.official and not src.is_dir():
        raise CliError(f"source {src} is a file; a {from_.value} checkpoint is a folder")
    if from_ is to:
        raise CliError(f"--from and --to are both {to.value}; nothing to convert")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if tp > 1 and world_size % tp:
        raise CliError(f"--tp {tp} needs a multiple of {tp} processes, this is {world_size}: "
                       f"run it under torchrun --nproc-per-node {tp}")
    if model is ConvertedModel.vae:
        if {from_, to} != {CheckpointFormat.official, CheckpointFormat.mugv}:
            raise CliError(f"--model vae converts official <-> mugv only, not {from_.value} -> {to.value}")
        if vae_preset not in VAE_PRESETS:
            raise CliError(f"unknown --vae-preset {vae_preset!r}; presets: {', '.join(VAE_PRESETS)}")


@app.command(cls=_Command)
def convert(
    src: Path = typer.Argument(..., help="source checkpoint (official: .pt/.safetensors file; mugv, megatron: folders)"),
    dst: Path = typer.Argument(..., help="destination"),
    from_: CheckpointFormat = typer.Option(..., "--from", help="format of SRC"),
    to: CheckpointFormat = typer.Option(..., "--to", help="format of DST"),
    tp: int = typer.Option(1, min=1, help="tensor-parallel size to load at (> 1 runs under torchrun)"),
    model: ConvertedModel = typer.Option(ConvertedModel.dit, help="dit, or vae (official <-> mugv only)"),
    vae_preset: str = typer.Option("full", help="VAE sizes of an official checkpoint (MUG-V's: full)"),
):
    """Convert checkpoints: DiT official MUG-V <-> mugv safetensors <-> Megatron torch_dist (reshardable);
    VAE official vae.pt <-> mugv folder."""
    _check_convert_args(src, from_, to, model, vae_preset, tp)
    if model is ConvertedModel.vae:
        from mugv.models.vae.convert import convert_vae

        convert_vae(src, dst, from_.value, to.value, preset=vae_preset)
    else:
        from mugv.models.dit.convert import convert_checkpoint, needs_process_group
        from mugv.training.checkpoint_dir import CheckpointIntegrityError

        if needs_process_group(from_.value, to.value, tp):
            from mugv.training.distributed import init_parallel

            init_parallel(tp=tp)
        try:
            convert_checkpoint(src, dst, from_.value, to.value, tp=tp)
        except CheckpointIntegrityError as e:
            raise CliError(f"refused: {e}") from None
    console.print(f"wrote {dst} ({model.value}, {to.value})")


@app.command(cls=_Command)
def plan(
    preset: str = typer.Argument(..., help="DiT preset: tiny, small, debug, 1B, 4B, 10B, 18B"),
    frames: int = typer.Option(105, min=1, help="video frames (MUG-V: 105 = 5 s at 21 fps)"),
    height: int = typer.Option(720, min=1, help="frame height in pixels"),
    width: int = typer.Option(1280, min=1, help="frame width in pixels"),
    text_len: int = typer.Option(300, min=1, help="text tokens (T5: 300)"),
    tp: int = typer.Option(1, min=1, help="tensor parallel"),
    cp: int = typer.Option(1, min=1, help="context parallel"),
    dp: int = typer.Option(64, min=1, help="data-parallel ranks sharing the distributed optimizer"),
    micro_batch: int = typer.Option(1, min=1, help="samples per micro-batch"),
    recompute: bool = typer.Option(False, "--recompute", help="full activation recomputation"),
    table: bool = typer.Option(False, "--table", help="the memory table for H100/H200, 1B/4B/10B at 256p/480p/720p"),
):
    """What one training sample of a preset costs: parameters, tokens, FLOPs, memory per GPU, a layout."""
    from mugv.models.dit.config import PRESETS

    if preset not in PRESETS:
        raise CliError(f"unknown DiT preset {preset!r}; presets: {', '.join(PRESETS)}")

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


def _dvc_stage_names() -> list[str]:
    """The stage names of the dvc.yaml of the DVC repository around the working directory (`name`, `name@key`)."""
    import yaml

    here = Path.cwd()
    root = next((folder for folder in (here, *here.parents) if (folder / ".dvc").is_dir()), None)
    if root is None or not (root / "dvc.yaml").is_file():
        raise CliError(f"no DVC repository with a dvc.yaml around {here}: run mugv pipeline inside the project")
    names = []
    for name, stage in (yaml.safe_load((root / "dvc.yaml").read_text()).get("stages") or {}).items():
        items = stage.get("foreach") if isinstance(stage, dict) else None
        if isinstance(items, dict):
            names += [f"{name}@{key}" for key in items]
        elif isinstance(items, list):
            names += [f"{name}@{item if isinstance(item, (str, int)) else index}" for index, item in enumerate(items)]
        else:
            names.append(name)
    return names


@app.command(cls=_Command)
def pipeline(
    stages: list[str] = typer.Option(None, "--stage", "-s", help="run only these DVC stages (and what they need)"),
    force: bool = typer.Option(False, "--force", help="rerun stages even when DVC says they are up to date"),
    params: Path = ParamsOpt,
):
    """Run the DVC stages in DAG order as a Prefect flow, tracked as one MLflow pipeline run."""
    _params(params)  # reject bad params before any work
    if stages:
        known = _dvc_stage_names()
        unknown = [name for name in stages if name not in known]
        if unknown:
            raise CliError(f"unknown stage {', '.join(map(repr, unknown))}; dvc.yaml has: {', '.join(known)}")

    from flows.pipeline import pipeline_flow
    from flows.run_lock import CheckoutBusy

    try:
        result = pipeline_flow(stages=stages or None, force=force, params_file=str(params))
    except CheckoutBusy as e:  # another run holds this checkout: a user's situation, not a bug
        raise CliError(str(e)) from None
    console.print(f"[bold green]pipeline finished[/bold green] run_id={result['run_id']} stages={result['stages']}")


if __name__ == "__main__":
    app()
