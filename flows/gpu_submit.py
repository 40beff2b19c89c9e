"""Submit a training stage to the GPU deployment of params pipeline.gpu (run_deployment) and wait for its result."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from prefect import get_run_logger

from flows.train_job import stage_arguments
from mugv.config import GpuSubmitConfig


def job_variables(cfg: GpuSubmitConfig, train_args: list[str], mlflow_run_id: str) -> dict:
    """The work pool variables of one submitted stage: job shape, the `mugv` arguments every other node runs,
    and the stage's MLflow run for every pod (whichever holds rank 0 joins it)."""
    variables = {
        "nodes": cfg.nodes,
        "gpus_per_node": cfg.gpus_per_node,
        "train_args": shlex.join(train_args),
        "env": {"MLFLOW_RUN_ID": mlflow_run_id},
    }
    if cfg.image:
        variables["image"] = cfg.image
    return variables


def submit_stage(stage: str, cfg: GpuSubmitConfig, root: Path, mlflow_run_id: str) -> subprocess.CompletedProcess:
    """Run `stage` on `cfg.deployment` (flows/train_job.py:train_stage_flow) and wait; exit code 0 when its
    flow run completed, 1 when it failed, crashed, was cancelled or outlived `cfg.timeout_s`."""
    from prefect.deployments import run_deployment

    log = get_run_logger()
    train_args = stage_arguments(root, stage)
    log.info("stage %s: submitted to %s (%d x %d GPUs)", stage, cfg.deployment, cfg.nodes, cfg.gpus_per_node)
    run = run_deployment(
        cfg.deployment,
        parameters={"stage": stage, "nodes": cfg.nodes, "gpus_per_node": cfg.gpus_per_node,
                    "mlflow_run_id": mlflow_run_id},
        job_variables=job_variables(cfg, train_args, mlflow_run_id),
        timeout=cfg.timeout_s,
    )
    state = run.state
    done = state is not None and state.is_completed()
    if not done:
        log.error("stage %s: flow run %s on %s ended %s", stage, run.name, cfg.deployment, state.name if state else "?")
    return subprocess.CompletedProcess([cfg.deployment, stage], 0 if done else 1)
