"""Prefect flow that runs the DVC stages in DAG order, each a retried task, inside one MLflow pipeline run.

The flow never reimplements a stage: each task (named for its stage) runs `dvc repro --single-item
<stage>`, so DVC decides what is stale and records lineage; the command's output streams line by line
into the task's log (the Prefect UI). Each stage gets a nested MLflow run that the stage's own command
joins through `MLFLOW_RUN_ID`; the run is tagged with the git commit and the DVC hashes of the stage's
deps and outs from dvc.lock. One run at a time per checkout (flows/run_lock.py); with a DVC remote the
run pulls its stages' outputs before and pushes them after (flows/dvc_remote.py). The parent run records
the commit, dvc.lock (sha256 tags and the file) and the remote; the flow publishes a markdown report.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import networkx as nx
import yaml
from prefect import flow, get_run_logger, task

from flows import dvc_remote
from flows.gpu_submit import submit_stage
from flows.run_lock import checkout_lock
from flows.train_job import is_training_stage
from mugv import tracking
from mugv.config import PipelineConfig, load_params


def project_root() -> Path:
    """The DVC repository containing the working directory."""
    from dvc.repo import Repo

    return Path(Repo.find_root(os.getcwd()))


def dag_order(root: Path, targets: list[str] | None = None) -> list[str]:
    """Stage names (`name` or `name@item`) in dependency order; with targets, only them and what they need."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        by_name = {stage.addressing: stage for stage in graph.nodes}
        if targets:
            unknown = sorted(set(targets) - set(by_name))
            if unknown:
                raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(by_name)}")
            keep = set()
            for t in targets:
                keep.add(by_name[t])
                keep |= nx.descendants(graph, by_name[t])
            graph = graph.subgraph(keep)
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: s.addressing)
        return [stage.addressing for stage in order]


def is_up_to_date(root: Path, stage: str) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return not repo.status([stage])


def lock_hashes(root: Path, stage: str) -> dict[str, str]:
    """`dvc.dep.<path>` / `dvc.out.<path>` -> content hash, from dvc.lock (foreach stages included)."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {}
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage, {})
    tags = {}
    for kind in ("deps", "outs"):
        for item in entry.get(kind, []) or []:
            digest = item.get("md5") or item.get("etag") or item.get("hash")
            if digest:
                tags[f"dvc.{kind[:-1]}.{item['path']}"] = digest
    return tags


def stream_command(cmd: list[str], cwd: Path, env: dict, log, timeout_s: float | None = None) -> tuple[int, str]:
    """Run `cmd`, each output line (stdout and stderr) to `log.info` as it comes; kill it and everything it
    started past `timeout_s` (TimeoutError). Returns (exit status, last non-empty line)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    expired = threading.Event()

    def kill_group() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def on_timeout() -> None:
        expired.set()
        kill_group()

    timer = threading.Timer(timeout_s, on_timeout) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    last = ""
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                log.info("%s", line)
                last = line
        proc.wait()
    finally:  # also on an exception raised into this thread (Prefect's own timeout, Ctrl-C)
        if timer:
            timer.cancel()
        if proc.poll() is None:
            kill_group()
            proc.wait()
        proc.stdout.close()
    if expired.is_set():
        raise TimeoutError(f"{' '.join(cmd[2:4])} ran past pipeline.stage_timeout_s={timeout_s:g} s and was killed")
    return proc.returncode, last


def stage_env(mlflow_run_id: str | None = None) -> dict:
    """The environment of `dvc` commands: this interpreter's scripts first on PATH (dvc.yaml calls `mugv`)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if mlflow_run_id:
        env["MLFLOW_RUN_ID"] = mlflow_run_id
    return env


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, parent_run_id: str, force: bool, root: str) -> dict:
    """Run one DVC stage in a child MLflow run; raise on failure so Prefect retries it."""
    log = get_run_logger()
    root_p = Path(root)
    params = load_params(root_p / "params.yaml")
    cached = not force and is_up_to_date(root_p, stage)
    child = tracking.child_run(  # tagged with the commit also when the stage is cached or never opens its run
        parent_run_id, stage, params.project.tracking,
        tags={"mugv.dvc_cached": cached, "mlflow.source.git.commit": tracking.git_commit(root_p)},
    )
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    log.info("stage %s: %s", stage, "up to date (DVC cache)" if cached else " ".join(cmd[2:]))
    started = time.perf_counter()
    gpu = params.pipeline.gpu
    if gpu.deployment and not cached and is_training_stage(root_p, stage):  # trained on the GPU deployment instead
        proc = submit_stage(stage, gpu, root_p, child)
    else:
        try:
            returncode, last = stream_command(cmd, root_p, stage_env(child), log, params.pipeline.stage_timeout_s)
        except BaseException:  # timed out or interrupted: the child run must not stay RUNNING
            tracking.finish_run(child, "FAILED", params.project.tracking)
            raise
        proc = subprocess.CompletedProcess(cmd, returncode, stdout=last)
    seconds = time.perf_counter() - started
    status = "FINISHED" if proc.returncode == 0 else "FAILED"
    tags = lock_hashes(root_p, stage) if status == "FINISHED" else {}
    tracking.finish_run(child, status, params.project.tracking, tags)
    if proc.returncode != 0:
        last = f": {proc.stdout}" if proc.stdout else ""
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}){last}")
    metric = key_metric(stage, child, params.project.tracking)
    return {"stage": stage, "run_id": child, "cached": cached, "seconds": seconds, "key_metric": metric}


# the number the summary table shows per stage (`pretrain@images` -> `pretrain`)
KEY_METRICS = {"synth": "videos", "ingest": "clips_written", "qc": "kept", "train_vae": "metrics.vae_psnr",
               "encode": "samples", "pretrain": "heldout_loss", "sft": "heldout_loss", "preference_data": "pairs",
               "post_train": "loss", "evaluate": "reward_mean"}


def key_metric(stage: str, run_id: str, cfg: tracking.TrackingConfig) -> tuple[str, float] | None:
    """(name, value) of the stage's key metric: from its run, or for a cached stage its last run that logged it."""
    name = KEY_METRICS.get(stage.split("@")[0])
    if name is None:
        return None
    value = tracking.get_run(run_id, cfg).data.metrics.get(name)
    if value is None:
        earlier = tracking.search_runs(cfg, f"tags.mugv.stage = '{stage}' and attributes.status = 'FINISHED'",
                                       max_results=50)
        value = next((r.data.metrics[name] for r in earlier if name in r.data.metrics), None)
    return None if value is None else (name, value)


def summary_table(results: list[dict]):
    """The rich table printed after a pipeline run: stage, wall time, cached or run, key metric."""
    from rich.table import Table

    table = Table(title="mugv pipeline")
    for column, justify in (("stage", "left"), ("time", "right"), ("", "left"), ("key metric", "left")):
        table.add_column(column, justify=justify)
    for r in results:
        minutes, seconds = divmod(round(r["seconds"]), 60)
        metric = r.get("key_metric")
        shown = f"{metric[0]} = {metric[1]:.4g}" if metric else "-"
        table.add_row(r["stage"], f"{minutes}:{seconds:02d}", "cached" if r["cached"] else "run", shown)
    return table


REPORT_KEY = "mugv-pipeline"  # the Prefect artifact key of the run report (one history per key)


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, None when it does not exist."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def run_link(run_id: str, experiment_id: str) -> str:
    """A markdown link to an MLflow run on a tracking server; the bare id for a local (SQLite) store."""
    uri = tracking.resolve_uri()
    if uri.startswith(("http://", "https://")):
        return f"[{run_id[:8]}]({uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id}`"


def report_markdown(order: list[str], results: list[dict], parent_id: str, experiment_id: str,
                    facts: dict[str, str | None]) -> str:
    """The flow run's report: the parent run, the facts it ran with, and a row per stage (time, run or cached,
    key metric, its MLflow run); a stage after the last result is `failed` when the run ended early."""
    lines = [f"# mugv pipeline\n\nMLflow pipeline run: {run_link(parent_id, experiment_id)}\n"]
    lines += [f"- {name}: `{value}`" for name, value in facts.items() if value]
    lines += ["", "| stage | time | | key metric | MLflow run |", "|---|---|---|---|---|"]
    for r in results:
        minutes, seconds = divmod(round(r["seconds"]), 60)
        metric = r.get("key_metric")
        shown = f"{metric[0]} = {metric[1]:.4g}" if metric else "-"
        lines.append(f"| {r['stage']} | {minutes}:{seconds:02d} | {'cached' if r['cached'] else 'run'} | {shown} "
                     f"| {run_link(r['run_id'], experiment_id)} |")
    for index, stage in enumerate(order[len(results):]):
        lines.append(f"| {stage} | - | {'failed' if index == 0 else 'not run'} | - | - |")
    return "\n".join(lines) + "\n"


@task(name="dvc-sync", task_run_name="dvc {direction}")
def sync_outputs(direction: str, remote: str, stages: list[str], root: str, timeout_s: float | None) -> None:
    """`dvc pull` (before the stages) or `dvc push` (after) of the stages' outputs with `remote`."""
    log = get_run_logger()
    cmd = dvc_remote.sync_command(direction, remote, stages)
    log.info("%s", " ".join(cmd[2:]))
    returncode, last = stream_command(cmd, Path(root), stage_env(), log, timeout_s)
    if returncode != 0:
        raise RuntimeError(f"dvc {direction} --remote {remote} failed (exit {returncode}): {last}")


def flow_run_holder() -> dict:
    """Who holds the checkout: this Prefect flow run's id and name (written into the lock file)."""
    from prefect.runtime import flow_run

    return {"flow_run_id": flow_run.id, "flow_run_name": flow_run.name} if flow_run.id else {}


@flow(name="mugv-pipeline", log_prints=True)
def pipeline_flow(stages: list[str] | None = None, force: bool = False, params_file: str = "params.yaml") -> dict:
    """Run the pipeline's DVC stages in order inside one MLflow parent run, one run per checkout at a time."""
    root = project_root()
    params = load_params(root / params_file)
    cfg: PipelineConfig = params.pipeline
    order = dag_order(root, stages or cfg.stages or None)
    remote = dvc_remote.sync_remote(root, cfg.remote, cfg.sync_remote)
    with checkout_lock(root, cfg.lock_wait_s, holder=flow_run_holder()):
        return _run_stages(root, params, order, force, remote)


def _run_stages(root: Path, params, order: list[str], force: bool, remote: str | None) -> dict:
    """The body of pipeline_flow once it holds the checkout."""
    from prefect.artifacts import create_markdown_artifact

    cfg: PipelineConfig = params.pipeline
    stage_task = run_stage.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay_s,
                                        timeout_seconds=cfg.stage_timeout_s)
    results = []
    lock_file = root / "dvc.lock"
    start_tags = {"mugv.stages": ",".join(order), "mugv.dvc_remote": remote,
                  "mugv.dvc_lock.start_sha256": file_sha256(lock_file)}
    with tracking.pipeline_run("pipeline", params.project.tracking, tags=start_tags) as parent:
        parent.log_params(params.model_dump(mode="json"))  # the resolved params.yaml, flattened: `train_vae.lr`
        try:
            if remote:
                sync_outputs("pull", remote, order, str(root), cfg.stage_timeout_s)
            for stage in order:
                results.append(stage_task(stage, parent.run_id, force, str(root)))
            if remote:
                sync_outputs("push", remote, order, str(root), cfg.stage_timeout_s)
        finally:  # the stages done so far, also when one fails
            from rich.console import Console

            Console().print(summary_table(results))
            lock_sha = file_sha256(lock_file)
            parent.set_tags({"mugv.dvc_lock.sha256": lock_sha})
            parent.log_artifact(lock_file)  # dvc.lock as the run left it: the hashes of what it produced
            facts = {"git commit": tracking.git_commit(root), "dvc.lock sha256": lock_sha,
                     "DVC remote": f"{remote} (pulled before, pushed after)" if remote else None}
            create_markdown_artifact(markdown=report_markdown(order, results, parent.run_id,
                                                              parent.run.info.experiment_id, facts),
                                     key=REPORT_KEY, description=f"mugv pipeline: {len(results)}/{len(order)} stages")
        parent.log_metrics({"stages_run": sum(not r["cached"] for r in results), "stages_cached": sum(r["cached"] for r in results)})
    return {"run_id": parent.run_id, "stages": order, "results": results, "remote": remote}


if __name__ == "__main__":
    pipeline_flow()
