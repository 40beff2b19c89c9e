"""Prefect flow run on node 0 of a training job: pull a DVC stage's inputs, run its command under torchrun, record and push its outputs.

The GPU deployment of the pipeline's training stages. On a Kubernetes Indexed Job every pod runs
`torchrun` with its own node rank: pod 0 runs this flow, which launches `torchrun --node-rank 0` as a
subprocess; pods 1..N-1 run the same torchrun line directly (infra/k8s/entrypoint.sh). All pods share
the repository working copy (a volume at MUGV_HOME), so the outputs written by every rank are where
`dvc commit` on pod 0 finds them. Rank 0 of the job joins the stage's MLflow run (`MLFLOW_RUN_ID`)
and registers the release exactly as the in-process stage does.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger

# the `mugv` commands of dvc.yaml that train under torchrun; their stages can go to a GPU deployment
TRAINING_COMMANDS = ("pretrain", "sft", "dpo", "kto")
JOIN_TIMEOUT_S = 3600  # the other nodes wait this long for node 0, which first pulls the stage's inputs


@dataclass(frozen=True)
class Node:
    """This node's place in a torchrun job: its rank and where the job meets (pod 0)."""

    rank: int
    rdzv_endpoint: str
    rdzv_id: str


def project_root(env: Mapping[str, str] = os.environ) -> Path:
    """The repository the stage runs in: MUGV_HOME (the job's shared working copy), else the cwd's DVC repository."""
    from dvc.repo import Repo

    return Path(env.get("MUGV_HOME") or Repo.find_root(os.getcwd()))


def dvc_stage(repo, stage: str):
    """Stage `stage` of the repository's dvc.yaml (addressed by path: DVC resolves a bare name against the cwd)."""
    return repo.stage.collect(f"{Path(repo.root_dir) / 'dvc.yaml'}:{stage}")[0]


def stage_arguments(root: Path, stage: str) -> list[str]:
    """The `mugv` argument list of a training stage's dvc.yaml command (`mugv pretrain ...` -> `pretrain ...`)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        cmd = dvc_stage(repo, stage).cmd
    words = shlex.split(cmd if isinstance(cmd, str) else " ".join(cmd))
    if len(words) < 2 or words[0] != "mugv" or words[1] not in TRAINING_COMMANDS:
        raise ValueError(f"stage {stage} is not a training stage (`mugv {'|'.join(TRAINING_COMMANDS)} ...`): {cmd}")
    return words[1:]


def is_training_stage(root: Path, stage: str) -> bool:
    """Whether the stage's command trains under torchrun (so it may be submitted to a GPU deployment)."""
    try:
        stage_arguments(root, stage)
    except ValueError:
        return False
    return True


def this_node(stage: str, env: Mapping[str, str] = os.environ) -> Node:
    """Rank and rendezvous from the pod (JOB_COMPLETION_INDEX, MUGV_RDZV_ENDPOINT, MUGV_RDZV_ID, set by
    entrypoint.sh); outside a job, a single node meeting on a free local port."""
    rank = int(env.get("JOB_COMPLETION_INDEX", "0"))
    endpoint = env.get("MUGV_RDZV_ENDPOINT")
    if not endpoint:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            endpoint = f"127.0.0.1:{sock.getsockname()[1]}"
    return Node(rank, endpoint, env.get("MUGV_RDZV_ID") or f"mugv-{stage.replace('@', '-')}")


def torchrun_command(args: list[str], nodes: int, gpus_per_node: int, node: Node) -> list[str]:
    """`torchrun` of `mugv <args>` as node `node.rank` of `nodes`; static rendezvous, so node 0 holds global rank 0."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(nodes), "--nproc-per-node", str(gpus_per_node), "--node-rank", str(node.rank),
        "--rdzv-backend", "static", "--rdzv-endpoint", node.rdzv_endpoint, "--rdzv-id", node.rdzv_id,
        "--rdzv-conf", f"timeout={JOIN_TIMEOUT_S}",
        "-m", "mugv.cli", *args,
    ]


def has_remote(root: Path) -> bool:
    """Whether the repository has a default DVC remote (then inputs are pulled and outputs pushed)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.config["core"].get("remote"))


def tracked_inputs(root: Path, stage: str) -> list[str]:
    """The stage's deps that DVC tracks (outputs of other stages or `dvc add`ed): what `dvc pull` must bring."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        def in_repo(path: str) -> str:  # paths of .dvc files are relative to their folder
            return os.path.relpath(path, repo.root_dir)

        target = dvc_stage(repo, stage)
        tracked = {in_repo(out.fs_path) for other in repo.index.stages for out in other.outs if out.use_cache}
        deps = [in_repo(dep.fs_path) for dep in target.deps]
    return sorted({d for d in deps for t in tracked if d == t or d.startswith(t + os.sep)})


def dvc(root: Path, *args: str) -> None:
    """Run `dvc <args>` in the repository; raise on failure."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed (exit {proc.returncode})")


def pull_inputs(root: Path, stage: str) -> list[str]:
    """`dvc pull` the stage's DVC-tracked inputs from the default remote; returns them."""
    inputs = tracked_inputs(root, stage)
    if inputs:
        dvc(root, "pull", *inputs)
    return inputs


def record_outputs(root: Path, stage: str, push: bool) -> None:
    """Record the outputs in dvc.lock as `dvc repro` would (`dvc commit`), then `dvc push` them when `push`."""
    dvc(root, "commit", "--force", stage)
    if push:
        dvc(root, "push", stage)


@flow(name="mugv-train-stage", log_prints=True)
def train_stage_flow(stage: str, nodes: int = 1, gpus_per_node: int = 1, mlflow_run_id: str = "") -> dict:
    """Run training stage `stage` (a dvc.yaml stage name) as node 0 of a `nodes` x `gpus_per_node` torchrun job."""
    log = get_run_logger()
    root = project_root()
    node = this_node(stage)
    if node.rank != 0:
        raise RuntimeError("train_stage_flow runs on node 0 only; the other nodes run torchrun (entrypoint.sh)")
    if nodes > 1 and not os.environ.get("MUGV_RDZV_ENDPOINT"):
        raise ValueError(f"nodes={nodes} needs MUGV_RDZV_ENDPOINT, where the nodes meet (set by infra/k8s/entrypoint.sh)")
    args = stage_arguments(root, stage)
    remote = has_remote(root)
    if remote:
        log.info("stage %s: dvc pull %s", stage, " ".join(pull_inputs(root, stage)))
    cmd = torchrun_command(args, nodes, gpus_per_node, node)
    log.info("stage %s: %s", stage, " ".join(cmd[2:]))
    # the stage's command joins the pipeline's child run, as `dvc repro` does in process
    env = {**os.environ, **({"MLFLOW_RUN_ID": mlflow_run_id} if mlflow_run_id else {})}
    proc = subprocess.run(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed under torchrun (exit {proc.returncode})")
    record_outputs(root, stage, push=remote)
    return {"stage": stage, "nodes": nodes, "gpus_per_node": gpus_per_node, "pushed": remote}


def node_command(env: Mapping[str, str]) -> list[str]:
    """The torchrun line of a pod other than 0, from its environment (MUGV_STAGE, MUGV_NNODES, MUGV_GPUS_PER_NODE
    from the submitted job's variables, flows/gpu_submit.py; rank and rendezvous from entrypoint.sh): the line
    train_stage_flow runs on pod 0, with this pod's rank."""
    stage = env["MUGV_STAGE"]
    args = stage_arguments(project_root(env), stage)
    return torchrun_command(args, int(env["MUGV_NNODES"]), int(env["MUGV_GPUS_PER_NODE"]), this_node(stage, env))


if __name__ == "__main__":  # `python -m flows.train_job node`: pods 1..N-1 of the job (entrypoint.sh)
    if sys.argv[1:] != ["node"]:
        sys.exit("usage: python -m flows.train_job node  (a pod of a training job other than pod 0)")
    try:
        command = node_command(os.environ)
    except KeyError as missing:
        sys.exit(f"{missing.args[0]} is not set: this pod was not started by a submitted training job")
    os.execv(command[0], command)
