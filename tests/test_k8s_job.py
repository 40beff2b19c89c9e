"""The GPU pool's Kubernetes job for a 2-node stage, rendered by prefect-kubernetes and validated against the
Kubernetes API schema offline: every pod runs torchrun with its own node rank and meets at pod 0; infra/k8s manifests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from types import SimpleNamespace
from pathlib import Path

import pytest
import yaml

from flows.gpu_submit import job_variables
from flows.train_job import node_command, stage_arguments, this_node, torchrun_command
from mugv.config import GpuSubmitConfig

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
KUBERNETES = "1.37"
STAGE = "pretrain@images"  # a training stage of the repository's dvc.yaml
JOB_NAME = "mugv-train-x7k2p"  # what Kubernetes names the Job from its generateName


def _render(nodes: int) -> dict:
    """The Job manifest the `gpu` pool's worker would create for a submitted stage (prefect-kubernetes' own code)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((K8S / "gpu-job-template.json").read_text())
    values = job_variables(GpuSubmitConfig(deployment="mugv-train-stage/train-gpu", nodes=nodes, gpus_per_node=8,
                                           image="registry.example/mugv:gpu"), STAGE, "0123abcd")
    no_api = SimpleNamespace()  # the template names no Prefect variables or blocks: nothing to look up
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values, client=no_api))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4(),
                                        deployment_id=uuid.uuid4()))
    return config.job_manifest


def _pod_environment(container: dict, index: int, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Run entrypoint.sh as pod `index` would (stub `python`/`prefect` print what they are run with and their env):
    ("flow" or "node", the environment the flow run or the torchrun launcher sees)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, kind in (("python", "node"), ("prefect", "flow")):
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{kind} $*"\nenv\n')
        stub.chmod(0o755)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(MUGV_JOB_NAME=JOB_NAME, JOB_COMPLETION_INDEX=str(index), MUGV_HOME=str(ROOT),  # downward API, mount
               PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", str(K8S / "entrypoint.sh"), *container["args"]], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    kind, _, _ = out[0].partition(" ")
    return kind, dict(line.split("=", 1) for line in out[1:] if "=" in line)


def test_two_node_job_renders_valid_and_every_pod_runs_torchrun_as_its_node(tmp_path):
    import kubernetes_validate

    manifest = _render(nodes=2)
    kubernetes_validate.validate(manifest, KUBERNETES)
    # prefect-kubernetes' own manifest check insists on `parallelism: 1` and `completions: 1` on the pod spec,
    # fields a PodSpec does not have (the API server drops them with a warning); the Job's own are `nodes`
    quirk = {key: manifest["spec"]["template"]["spec"].pop(key) for key in ("parallelism", "completions")}
    assert quirk == {"parallelism": 1, "completions": 1}
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "mugv-torchrun" and spec["template"]["metadata"]["labels"]["mugv/torchrun"] == "true"
    container = pod["containers"][0]
    assert container["image"] == "registry.example/mugv:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_RUN_ID"] == "0123abcd" and env["MUGV_STAGE"] == STAGE and env["PREFECT__FLOW_RUN_ID"]
    claim = next(v for v in pod["volumes"] if v["name"] == "workspace")["persistentVolumeClaim"]["claimName"]
    assert any(m["mountPath"] == env["MUGV_HOME"] for m in container["volumeMounts"]) and claim

    args = stage_arguments(ROOT, STAGE)
    lines = []
    for index in range(2):
        kind, seen = _pod_environment(container, index, tmp_path)
        assert kind == ("flow" if index == 0 else "node")  # pod 0 runs the flow run, which launches torchrun
        if index == 0:  # what train_stage_flow runs on pod 0
            line = torchrun_command(args, int(seen["MUGV_NNODES"]), int(seen["MUGV_GPUS_PER_NODE"]),
                                    this_node(STAGE, seen))
        else:  # what `python -m flows.train_job node` execs on the others
            line = node_command(seen)
        lines.append(line)
    for index, line in enumerate(lines):
        flags = dict(zip(line[3:-len(args) - 2:2], line[4:-len(args) - 2:2]))
        assert flags["--node-rank"] == str(index) and flags["--nnodes"] == "2" and flags["--nproc-per-node"] == "8"
        assert flags["--rdzv-endpoint"] == f"{JOB_NAME}-0.mugv-torchrun:29500"  # pod 0 via the headless service
        assert flags["--rdzv-id"] == JOB_NAME
        assert line[-len(args) - 2:] == ["-m", "mugv.cli", *args]


def test_a_pod_outside_a_job_has_no_rendezvous_to_guess(tmp_path):
    env = {"PATH": os.environ["PATH"], "JOB_COMPLETION_INDEX": "1", "MUGV_HOME": str(tmp_path)}
    proc = subprocess.run(["bash", str(K8S / "entrypoint.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "MUGV_JOB_NAME" in proc.stderr


@pytest.mark.parametrize("manifest", sorted(p.name for p in K8S.glob("*.yaml")))
def test_cluster_manifests_are_valid_kubernetes(manifest):
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all((K8S / manifest).read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_worker_may_create_jobs_and_watch_their_pods():
    docs = {d["kind"]: d for d in yaml.safe_load_all((K8S / "worker.yaml").read_text())}
    rules = [(group, resource, set(rule["verbs"])) for rule in docs["Role"]["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]]
    allowed = lambda group, resource, verbs: any(  # noqa: E731
        g == group and r == resource and verbs <= v for g, r, v in rules)
    assert allowed("batch", "jobs", {"create", "get", "watch", "delete"})
    assert allowed("", "pods", {"get", "list", "watch"}) and allowed("", "pods/log", {"get"})
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]
    assert docs["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == binding["subjects"][0]["name"]
