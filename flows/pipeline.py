"""Prefect flow that runs the DVC stages in DAG order, each a retried task, inside one MLflow pipeline run.

The flow never reimplements a stage: each task runs `dvc repro --single-item <stage>`, so
DVC decides what is stale and records lineage. Each stage gets a nested MLflow run that the
stage's own command joins through `MLFLOW_RUN_ID`; the run is tagged with the git commit and
the DVC hashes of the stage's deps and outs from dvc.lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import yaml
from prefect import flow, get_run_logger, task

from flows.gpu_submit import submit_stage
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


@task(name="dvc-stage")
def run_stage(stage: str, parent_run_id: str, force: bool, root: str) -> dict:
    """Run one DVC stage in a child MLflow run; raise on failure so Prefect retries it."""
    log = get_run_logger()
    root_p = Path(root)
    params = load_params(root_p / "params.yaml")
    cached = not force and is_up_to_date(root_p, stage)
    child = tracking.child_run(
        parent_run_id, stage, params.project.tracking, tags={"mugv.dvc_cached": cached}
    )
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    log.info("stage %s: %s", stage, "up to date (DVC cache)" if cached else " ".join(cmd[2:]))
    # the stage commands in dvc.yaml call `mugv`: this interpreter's scripts come first on PATH
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_RUN_ID": child, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    started = time.perf_counter()
    gpu = params.pipeline.gpu
    if gpu.deployment and not cached and is_training_stage(root_p, stage):  # trained on the GPU deployment instead
        proc = submit_stage(stage, gpu, root_p, child)
    else:
        proc = subprocess.run(cmd, cwd=root_p, env=env)
    seconds = time.perf_counter() - started
    status = "FINISHED" if proc.returncode == 0 else "FAILED"
    tags = lock_hashes(root_p, stage) if status == "FINISHED" else {}
    tracking.finish_run(child, status, params.project.tracking, tags)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}); see its output above")
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


@flow(name="mugv-pipeline", log_prints=True)
def pipeline_flow(stages: list[str] | None = None, force: bool = False, params_file: str = "params.yaml") -> dict:
    """Run the pipeline's DVC stages in order inside one MLflow parent run."""
    root = project_root()
    params = load_params(root / params_file)
    cfg: PipelineConfig = params.pipeline
    order = dag_order(root, stages or cfg.stages or None)
    stage_task = run_stage.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay_s)
    results = []
    with tracking.pipeline_run("pipeline", params.project.tracking, tags={"mugv.stages": ",".join(order)}) as parent:
        parent.log_params(params.model_dump(mode="json"))  # the resolved params.yaml, flattened: `train_vae.lr`
        try:
            for stage in order:
                results.append(stage_task(stage, parent.run_id, force, str(root)))
        finally:  # the stages done so far, also when one fails
            from rich.console import Console

            Console().print(summary_table(results))
        parent.log_metrics({"stages_run": sum(not r["cached"] for r in results), "stages_cached": sum(r["cached"] for r in results)})
    return {"run_id": parent.run_id, "stages": order, "results": results}


if __name__ == "__main__":
    pipeline_flow()
