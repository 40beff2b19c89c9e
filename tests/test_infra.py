"""Deployment files: entrypoints resolve to flows, the GPU pool template is accepted by a Prefect server."""

import asyncio
import importlib
import json
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
