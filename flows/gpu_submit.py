"""Submit a training stage to the GPU deployment of params pipeline.gpu (run_deployment) and wait for its result."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import get_run_logger

from flows.train_job import stage_arguments
from mugv.config import GpuSubmitConfig


def job_variables(cfg: GpuSubmitConfig, stage: str, mlflow_run_id: str) -> dict:
    """The work pool variables of one submitted stage: the job's shape and, in every pod's environment, the stage
    and shape the nodes other than 0 run (infra/k8s/entrypoint.sh) and the stage's MLflow run that rank 0 joins.
    (Through `env`, as strings: a template value that is a lone `{{ nodes }}` renders as a number.)"""
    variables = {
        "nodes": cfg.nodes,
        "gpus_per_node": cfg.gpus_per_node,
        "env": {"MUGV_STAGE": stage, "MUGV_NNODES": str(cfg.nodes), "MUGV_GPUS_PER_NODE": str(cfg.gpus_per_node),
                "MLFLOW_RUN_ID": mlflow_run_id},
    }
    if cfg.image:
        variables["image"] = cfg.image
    return variables


def submit_stage(stage: str, cfg: GpuSubmitConfig, root: Path, mlflow_run_id: str) -> subprocess.CompletedProcess:
    """Run `stage` on `cfg.deployment` (flows/train_job.py:train_stage_flow) and wait; exit code 0 when its
    flow run completed, 1 when it failed, crashed, was cancelled or outlived `cfg.timeout_s`."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    log = get_run_logger()
    stage_arguments(root, stage)  # a training stage of this repository, or ValueError before anything is submitted
    log.info("stage %s: submitted to %s (%d x %d GPUs)", stage, cfg.deployment, cfg.nodes, cfg.gpus_per_node)
    try:
        run = run_deployment(
            cfg.deployment,
            parameters={"stage": stage, "nodes": cfg.nodes, "gpus_per_node": cfg.gpus_per_node,
                        "mlflow_run_id": mlflow_run_id},
            job_variables=job_variables(cfg, stage, mlflow_run_id),
            timeout=cfg.timeout_s,
            poll_interval=2,
        )
    except ObjectNotFound:
        raise ValueError(f"params pipeline.gpu.deployment: no deployment {cfg.deployment!r} on the Prefect server "
                         "(deploy it: prefect deploy --prefect-file infra/prefect.yaml --name train-gpu)") from None
    state = run.state
    done = state is not None and state.is_completed()
    if not done:
        log.error("stage %s: flow run %s on %s ended %s", stage, run.name, cfg.deployment, state.name if state else "?")
    return subprocess.CompletedProcess([cfg.deployment, stage], 0 if done else 1)
