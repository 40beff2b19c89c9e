"""The only module that talks to MLflow: runs per stage, metrics, artifacts, the model registry.

Tracking URI, in order: `MLFLOW_TRACKING_URI`, `project.tracking.uri` in params,
else a SQLite file `mlruns.db` in the working directory (no server needed).
A stage launched by the pipeline flow joins the nested run the flow opened for it
(the flow passes `MLFLOW_RUN_ID`, MLflow's own variable); run alone, it opens its own.

An unreachable tracking server never stops a stage: HTTP retries are bounded (HTTP_DEFAULTS), metrics
are buffered while it is away and sent when it is back (or at the end). A run whose process was
killed is closed as KILLED by the next run of the same stage on that host (tags mugv.pid, mugv.host).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mugv.section import Section

ARTIFACT_DIR = "mlartifacts"
# MLflow's HTTP client, unless the environment says otherwise: a few quick retries, not minutes of them
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
UNSENT_DIR = "mlflow-unsent"  # metrics a run could not send by its end, one JSON lines file per run
RESEND_AFTER_S = 15.0  # while the server is unreachable, metrics are buffered and resent at most this often
METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit

log = logging.getLogger(__name__)


def default_uri(root: str | os.PathLike | None = None) -> str:
    root = Path(root or os.getcwd()).resolve()
    return f"sqlite:///{root / 'mlruns.db'}"


class TrackingConfig(Section):
    """Where MLflow runs go. `uri: null` means a SQLite file inside the project."""

    uri: str | None = None
    experiment: str = "mugv"
    registered_model: str = "mugv-dit"


def resolve_uri(cfg: TrackingConfig | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or (cfg.uri if cfg and cfg.uri else None) or default_uri()


def _mlflow(cfg: TrackingConfig | None):
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    uri = resolve_uri(cfg)
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    return mlflow


def ensure_experiment(cfg: TrackingConfig | None = None) -> str:
    """Experiment id for `cfg.experiment`, created with a local artifact root for SQLite URIs."""
    mlflow = _mlflow(cfg)
    name = (cfg or TrackingConfig()).experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    uri = resolve_uri(cfg)
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).parent / ARTIFACT_DIR).resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty(cwd: str | os.PathLike | None = None) -> bool | None:
    """True when tracked files differ from the commit (untracked files do not count); None outside git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                             capture_output=True, text=True, timeout=10, check=True)
        return bool(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def _is_finite_number(value: Any) -> bool:
    """A value MLflow can plot: a finite int/float (None, NaN and inf, e.g. an unused loss, are left out)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


class StageRun:
    """An open MLflow run of one stage; thin methods over the active run. Metrics are buffered while the
    server cannot be reached and sent, with their original step and time, once it can (`flush`)."""

    def __init__(self, mlflow, run):
        self._mlflow = mlflow
        self.run = run
        self.run_id: str = run.info.run_id
        self.pending: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step) not yet sent
        self._resend_at = 0.0

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        flat = {k: ("" if v is None else str(v))[:6000] for k, v in flatten(params, prefix).items()}
        if flat:
            self._mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self.pending.extend((k, float(v), now, step or 0) for k, v in metrics.items() if _is_finite_number(v))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send the buffered metrics; True when none is left. After a failure, tries again only
        RESEND_AFTER_S later (unless `force`), so an unreachable server costs a stage little time."""
        if not self.pending:
            return True
        if not force and time.monotonic() < self._resend_at:
            return False
        from mlflow.entities import Metric

        client = self._mlflow.MlflowClient()
        try:
            while self.pending:
                batch = self.pending[:METRICS_PER_REQUEST]
                client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in batch])
                del self.pending[:len(batch)]
        except Exception as e:  # noqa: BLE001 - any failure to reach tracking: keep the metrics, keep training
            if not self._resend_at:
                log.warning("MLflow unreachable (%s): buffering metrics", str(e).splitlines()[0][:200])
            self._resend_at = time.monotonic() + RESEND_AFTER_S
            return False
        self._resend_at = 0.0
        return True

    def save_unsent(self) -> Path | None:
        """Write metrics still unsent to `UNSENT_DIR/<run id>.jsonl` (for `mlflow` later); its path, or None."""
        if not self.pending:
            return None
        path = Path(UNSENT_DIR) / f"{self.run_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for k, v, t, s in self.pending:
                f.write(json.dumps({"key": k, "value": v, "timestamp": t, "step": s}) + "\n")
        return path

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v is not None})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self._mlflow.log_artifacts(str(p), artifact_path=artifact_path)
        elif p.exists():
            self._mlflow.log_artifact(str(p), artifact_path=artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        self._mlflow.log_dict(data, name)

    def log_text(self, text: str, name: str) -> None:
        self._mlflow.log_text(text, name)

    def log_figure(self, fig, name: str) -> None:
        self._mlflow.log_figure(fig, name)


@contextlib.contextmanager
def _active_run(mlflow, run, tags: Mapping[str, Any]) -> Iterator[StageRun]:
    """Tag an active run, yield it, and end it FINISHED, or FAILED when the block raises."""
    sr = StageRun(mlflow, run)
    status = "FINISHED"
    try:
        dirty = git_dirty()
        sr.set_tags({"mlflow.source.git.commit": git_commit(),
                     "mugv.git_dirty": None if dirty is None else str(dirty).lower(), **tags, **process_tags()})
        if tags.get("mugv.stage"):
            close_dead_runs(mlflow.MlflowClient(), run.info.experiment_id, str(tags["mugv.stage"]))
        yield sr
    except BaseException:
        status = "FAILED"
        raise
    finally:
        _end(mlflow, sr, status)


def _end(mlflow, sr: StageRun, status: str) -> None:
    """End the run; metrics still buffered are sent first, or saved to a file if the server is still away."""
    if not sr.flush(force=True):
        log.warning("MLflow unreachable at the end of run %s: %d metric values saved to %s",
                    sr.run_id, len(sr.pending), sr.save_unsent())
    try:
        mlflow.end_run(status=status)
    except Exception as e:  # noqa: BLE001 - the stage's work is done; the next run closes this one (close_dead_runs)
        log.warning("could not end MLflow run %s (%s)", sr.run_id, str(e).splitlines()[0][:200])


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def process_tags() -> dict[str, str]:
    """The tags that let a later run tell whether this process is gone: pid, host and start time."""
    pid = os.getpid()
    return {"mugv.pid": str(pid), "mugv.host": socket.gethostname(), "mugv.pid_start": _process_start(pid)}


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process `pid` (started at `start`, when recorded) still runs on this host; a zombie does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = _process_start(pid)
    if Path("/proc").is_dir() and current is None:
        return False  # a zombie, or gone meanwhile
    return not (start and current and start != current)  # same pid, other process: the run's one is gone


def close_dead_runs(client, experiment_id: str, stage: str) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` started on this host by a process that no longer exists
    (SIGKILL, power loss); return their ids."""
    host = socket.gethostname()
    runs = client.search_runs([experiment_id], max_results=200,
                              filter_string=f"tags.`mugv.stage` = '{stage}' and attributes.status = 'RUNNING'")
    closed = []
    for run in runs:
        run_tags = run.data.tags
        pid = run_tags.get("mugv.pid")
        if run_tags.get("mugv.host") != host or not (pid or "").isdigit() or pid == str(os.getpid()):
            continue
        if not process_alive(int(pid), run_tags.get("mugv.pid_start")):
            client.set_tag(run.info.run_id, "mugv.closed_by", f"pid {os.getpid()}: process {pid} was gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
    return closed


def dvc_dep_hashes() -> dict[str, str]:
    """`dvc.dep.<path>` -> content hash of each file dep of the DVC stage running this process, computed
    with DVC's own hashing (what dvc.lock will record), plus `mugv.dvc_stage`; {} outside `dvc repro`.

    `dvc repro` names the stage and the repository in `DVC_STAGE` and `DVC_ROOT`.
    """
    stage_name, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if not stage_name or not root:
        return {}
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    tags = {"mugv.dvc_stage": stage_name}
    with Repo(root) as repo:
        for dep in repo.stage.get_target(stage_name).deps:
            if isinstance(dep, ParamsDependency):  # params are logged as the run's params
                continue
            digest = dep.get_hash().value
            if digest:
                tags[f"dvc.dep.{dep.def_path}"] = digest
    return tags


@contextlib.contextmanager
def start_stage_run(
    stage: str,
    cfg: TrackingConfig | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """Open (or join, when `MLFLOW_RUN_ID` is set) the run of one stage."""
    mlflow = _mlflow(cfg)
    joined = os.environ.get("MLFLOW_RUN_ID")
    lineage = {}
    if joined:
        run = mlflow.start_run(run_id=joined)
    else:  # under a plain `dvc repro` the flow is not there to tag the run with DVC hashes: the stage does
        lineage = dvc_dep_hashes()
        run = mlflow.start_run(experiment_id=ensure_experiment(cfg), run_name=stage)
    with _active_run(mlflow, run, {"mugv.stage": stage, **lineage, **(tags or {})}) as sr:
        if params:
            sr.log_params(params)
        yield sr


@contextlib.contextmanager
def pipeline_run(
    name: str, cfg: TrackingConfig | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[StageRun]:
    """The parent run of a whole pipeline; stage runs are nested under it with `child_run`."""
    mlflow = _mlflow(cfg)
    run = mlflow.start_run(experiment_id=ensure_experiment(cfg), run_name=name)
    with _active_run(mlflow, run, {"mugv.kind": "pipeline", **(tags or {})}) as sr:
        yield sr


def child_run(parent_id: str, stage: str, cfg: TrackingConfig | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Create a nested run for `stage` under `parent_id` (not left active); return its id."""
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    all_tags = {"mlflow.parentRunId": parent_id, "mlflow.runName": stage, "mugv.stage": stage}
    all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    run = client.create_run(parent.info.experiment_id, tags=all_tags, run_name=stage)
    return run.info.run_id


def finish_run(run_id: str, status: str, cfg: TrackingConfig | None = None, tags: Mapping[str, Any] | None = None) -> None:
    """Close a run created by `child_run` with FINISHED or FAILED, adding tags."""
    client = _mlflow(cfg).MlflowClient()
    for k, v in (tags or {}).items():
        if v is not None:
            client.set_tag(run_id, k, str(v))
    client.set_terminated(run_id, status=status)


def get_run(run_id: str, cfg: TrackingConfig | None = None):
    return _mlflow(cfg).MlflowClient().get_run(run_id)


def search_runs(cfg: TrackingConfig | None = None, filter_string: str = "", max_results: int = 1000):
    mlflow = _mlflow(cfg)
    exp_id = ensure_experiment(cfg)
    return mlflow.MlflowClient().search_runs([exp_id], filter_string=filter_string, max_results=max_results)


def list_artifacts(run_id: str, path: str | None = None, cfg: TrackingConfig | None = None) -> list[str]:
    client = _mlflow(cfg).MlflowClient()
    return [a.path for a in client.list_artifacts(run_id, path)]


def download_artifact(run_id: str, path: str, cfg: TrackingConfig | None = None) -> Path:
    mlflow = _mlflow(cfg)
    dst = tempfile.mkdtemp(prefix="mugv-artifact-")
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst))


# --------------------------------------------------------------------------- model registry


def register_checkpoint(
    run: StageRun,
    checkpoint_dir: str | os.PathLike,
    name: str,
    alias: str | None = "candidate",
    tags: Mapping[str, Any] | None = None,
    cfg: TrackingConfig | None = None,
    description: str | None = None,
) -> str:
    """Log a checkpoint folder (safetensors + config, no pickled code) to `run` and register it.

    Returns the new model version (described by `description`); `alias` (default `candidate`) is moved to it.
    """
    mlflow = _mlflow(cfg)
    client = mlflow.MlflowClient()
    run.log_artifact(checkpoint_dir, "checkpoint")
    if client.search_registered_models(filter_string=f"name = '{name}'") == []:
        client.create_registered_model(name, description="MUGDiT checkpoints (safetensors) from mugv")
    all_tags = {"mugv.run_id": run.run_id, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    version = client.create_model_version(
        name, source=f"runs:/{run.run_id}/checkpoint", run_id=run.run_id, tags=all_tags, description=description
    ).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


def folder_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over the relative names and bytes of every file under `path`: the identity of a release."""
    import hashlib

    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_versions_of(ref: str | os.PathLike, cfg: TrackingConfig | None = None) -> list:
    """The registered model versions a reference names: the one of `models:/...`, or for a folder every
    version registered from identical files (tag `mugv.release_sha`); [] when none."""
    client = _mlflow(cfg).MlflowClient()
    ref_s = str(ref)
    if ref_s.startswith("models:/"):
        return [_model_version(ref_s, client)]
    sha = folder_fingerprint(ref_s)
    return list(client.search_model_versions(f"tags.`mugv.release_sha` = '{sha}'"))


def tag_model_version(version, tags: Mapping[str, Any], cfg: TrackingConfig | None = None) -> None:
    """Set `tags` (stringified) on a registered model version."""
    client = _mlflow(cfg).MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, str(value))


def alias_version(name: str, alias: str, cfg: TrackingConfig | None = None):
    """The model version behind `name@alias`, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    client = _mlflow(cfg).MlflowClient()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str, cfg: TrackingConfig | None = None) -> None:
    _mlflow(cfg).MlflowClient().set_registered_model_alias(name, alias, version)


MODEL_CACHE_DIR_ENV = "MUGV_CACHE_DIR"
MODEL_CACHE_LIMIT_ENV = "MUGV_MODEL_CACHE_GB"
DEFAULT_MODEL_CACHE_GB = 50.0  # one 10B release (43 GB in fp32) plus a tiny one or two
CACHE_ENTRY_FILE = ".mugv-cache.json"  # written last: marks a complete entry; its mtime is the last use


def model_cache_dir() -> Path:
    """Where `models:/` downloads are kept: `$MUGV_CACHE_DIR/models`, else `~/.cache/mugv/models`."""
    base = os.environ.get(MODEL_CACHE_DIR_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "mugv") / "models"


def model_cache_limit_bytes() -> int:
    """The cache's size bound: `$MUGV_MODEL_CACHE_GB` gigabytes (default DEFAULT_MODEL_CACHE_GB)."""
    return int(float(os.environ.get(MODEL_CACHE_LIMIT_ENV) or DEFAULT_MODEL_CACHE_GB) * 1e9)


class ModelRefError(LookupError):
    """A `models:/` reference names a model, alias or version the registry does not hold; says what it holds."""


def _model_version(ref: str, client):
    """The registry's model version behind `models:/NAME@ALIAS` or `models:/NAME/VERSION` (else ModelRefError)."""
    from mlflow.exceptions import MlflowException

    name_and_rest = ref[len("models:/"):].strip("/")
    if "@" in name_and_rest:
        name, alias = name_and_rest.split("@", 1)
    else:
        name, _, version = name_and_rest.rpartition("/")
        alias = None
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise ModelRefError(f"{ref}: no registered model {name!r}; registered models: "
                            f"{', '.join(known) or 'none'}") from None
    if alias is not None:
        if alias not in model.aliases:
            aliases = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items()))
            raise ModelRefError(f"{ref}: model {name!r} has no alias {alias!r}; its aliases: {aliases or 'none'}")
        return client.get_model_version_by_alias(name, alias)
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        versions = sorted((int(v.version) for v in client.search_model_versions(f"name='{name}'")))
        raise ModelRefError(f"{ref}: model {name!r} has no version {version!r}; its versions: "
                            f"{', '.join(map(str, versions)) or 'none'}") from None


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _cache_entries(root: Path) -> list[tuple[Path, float, int]]:
    """(entry folder, last use, bytes) of every complete cache entry under `root`."""
    entries = []
    for marker in root.glob(f"*/*/{CACHE_ENTRY_FILE}"):
        try:
            size = json.loads(marker.read_text())["bytes"]
            entries.append((marker.parent, marker.stat().st_mtime, size))
        except (OSError, ValueError, KeyError):
            continue
    return entries


STALE_DOWNLOAD_S = 24 * 3600  # a partial download untouched this long was killed: its folder is removed


def evict_model_cache(root: Path, limit_bytes: int, in_use: Path | None = None) -> list[Path]:
    """Delete least recently used entries until the cache holds at most `limit_bytes`; never `in_use`.
    Partial downloads left by killed processes (untouched for STALE_DOWNLOAD_S) are removed too."""
    import shutil
    import time

    for partial in (root / ".partial").glob("*"):
        with contextlib.suppress(OSError):
            if time.time() - partial.stat().st_mtime > STALE_DOWNLOAD_S:
                shutil.rmtree(partial, ignore_errors=True)

    entries = sorted(_cache_entries(root), key=lambda e: e[1])
    total = sum(size for _, _, size in entries)
    evicted = []
    for folder, _, size in entries:
        if total <= limit_bytes:
            break
        if in_use is not None and folder.resolve() == Path(in_use).resolve():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        evicted.append(folder)
    return evicted


PYFUNC_RELEASE_ARTIFACT = "release"  # the artifact a release's pyfunc model wraps (mugv.registry.pyfunc_model)


def wrapped_folder(model_dir: Path) -> Path:
    """The folder a pyfunc model carries as its artifact PYFUNC_RELEASE_ARTIFACT; `model_dir` itself otherwise."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return model_dir
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    path = ((flavor.get("artifacts") or {}).get(PYFUNC_RELEASE_ARTIFACT) or {}).get("path")
    return model_dir / path if path else model_dir


def resolve_model_ref(ref: str | os.PathLike, cfg: TrackingConfig | None = None) -> Path:
    """A local folder for a checkpoint given as a path or as `models:/NAME@ALIAS` / `models:/NAME/VERSION`.

    A registered version is downloaded once into the model cache (`model_cache_dir()`, one folder per
    name, version and source run) and reused on the next call; the cache is then trimmed to
    `model_cache_limit_bytes()`, least recently used first, never the folder returned. Of a pyfunc model
    that wraps a release (`wrapped_folder`), the folder returned is the release.
    """
    import shutil

    ref_s = str(ref)
    if not ref_s.startswith("models:/"):
        return Path(ref_s)
    mlflow = _mlflow(cfg)
    mv = _model_version(ref_s, mlflow.MlflowClient())
    root = model_cache_dir()
    entry = root / mv.name / f"{mv.version}-{mv.run_id or 'norun'}"
    marker = entry / CACHE_ENTRY_FILE
    if not marker.exists():
        staging_root = root / ".partial"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=staging_root))
        try:
            local = wrapped_folder(Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=str(staging))))
            relative = local.relative_to(staging).as_posix()
            (staging / CACHE_ENTRY_FILE).write_text(json.dumps(
                {"ref": f"models:/{mv.name}/{mv.version}", "run_id": mv.run_id, "source": mv.source,
                 "path": relative, "bytes": _folder_bytes(staging)}))
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                staging.rename(entry)
            except OSError:  # another process cached it meanwhile
                if not marker.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    os.utime(marker)  # the last use, for the LRU bound
    evict_model_cache(root, model_cache_limit_bytes(), in_use=entry)
    return entry / json.loads(marker.read_text())["path"]
