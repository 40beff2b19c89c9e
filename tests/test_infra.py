"""Deployment files: entrypoints resolve to flows, the GPU pool template is accepted by a Prefect server, compose and images."""

import asyncio
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_deployment_entrypoints_are_flows():
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        assert hasattr(flow, "deploy"), f"{dep['entrypoint']} is not a Prefect flow"
        for name in dep.get("parameters", {}):
            assert name in flow.parameters.properties, f"{dep['name']}: unknown parameter {name}"
        for sched in dep.get("schedules", []):
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=sched["cron"], timezone=sched.get("timezone"))


@pytest.mark.slow
def test_gpu_pool_template_is_accepted(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((ROOT / "infra" / "k8s" / "gpu-job-template.json").read_text())
    job = template["job_configuration"]["job_manifest"]["spec"]
    assert job["completionMode"] == "Indexed"
    container = job["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus_per_node }}"

    async def create():
        async with get_client() as client:
            pool = await client.create_work_pool(
                WorkPoolCreate(name="gpu-test", type="kubernetes", base_job_template=template)
            )
            cpu = await client.create_work_pool(WorkPoolCreate(name="cpu-test", type="process"))
            return pool, cpu

    pool, cpu = asyncio.run(create())
    assert pool.base_job_template["variables"]["properties"]["nodes"]["default"] == 2
    assert cpu.type == "process"


def test_compose_creates_its_buckets_and_keeps_its_state():
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"minio", "buckets", "mlflow", "prefect", "cpu-worker"} <= set(services)
    init = services["buckets"]
    assert "mb --ignore-existing" in " ".join(init["entrypoint"]) and "mlflow-artifacts" in " ".join(init["entrypoint"])
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("mlflow", "cpu-worker"):  # nothing writes to S3 before its buckets exist
        assert services[name]["depends_on"]["buckets"]["condition"] == "service_completed_successfully"

    def mounted(service: str) -> dict[str, str]:
        return dict(v.rsplit(":", 1)[::-1] for v in services[service]["volumes"])

    named = set(compose["volumes"])
    assert mounted("minio")["/data"] in named and mounted("mlflow")["/mlflow"] in named
    prefect_home = services["prefect"]["environment"]["PREFECT_HOME"]
    assert mounted("prefect")[prefect_home] in named  # the Prefect database survives a recreate
    worker = services["cpu-worker"]
    home = worker["environment"]["MUGV_HOME"]
    assert home in mounted("cpu-worker") and worker["working_dir"] == home  # the repository checkout, mounted


def _dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_images_cpu_and_gpu():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    stages = _dockerfile_stages()
    assert set(stages) == {"cpu", "gpu"}
    assert re.search(r"^ARG GPU_BASE=nvcr\.io/nvidia/pytorch:25\.\d\d-py3$", text, flags=re.M)
    for body in stages.values():  # can run `dvc repro` without a .git in the image
        assert "COPY .dvc/config" in body and "dvc.lock" in body and "core.no_scm true" in body
        assert "infra/k8s/entrypoint.sh /usr/local/bin/mugv-node" in body
    gpu = stages["gpu"]
    assert "--no-deps -r" in gpu and "transformer_engine" in gpu and "megatron.core" in gpu
    # the GPU install list keeps everything of the lock but torch, triton and nvidia-* (the image's CUDA builds)
    pattern = re.search(r"grep -v -i -E '([^']+)' requirements\.lock", gpu).group(1)
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    kept = [line for line in lock if not re.search(pattern, line, flags=re.I)]
    names = {re.split(r"[=<>\[ ;]", line, maxsplit=1)[0].lower() for line in kept if line.strip()}
    assert "megatron-core" in names and "dvc" in names and "prefect" in names
    assert not any(n == "torch" or n.startswith(("nvidia-", "triton")) for n in names)
    assert len(kept) == len(lock) - sum(1 for line in lock if re.match(r"(torch|triton|nvidia-)", line, flags=re.I))


def test_nothing_in_infra_binds_every_interface():
    for path in (ROOT / "infra").rglob("*"):
        if path.is_file():
            assert ".".join("0" * 4) not in path.read_text(), path  # the all-interfaces address
