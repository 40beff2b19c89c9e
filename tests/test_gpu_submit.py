"""GPU submission end to end on CPU: the pipeline submits a training stage with run_deployment to a process pool
whose worker runs it under torchrun (2 ranks, gloo); outputs, dvc.lock and registration match the in-process run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.train_job import (Node, has_remote, is_training_stage, pull_inputs, record_outputs, stage_arguments,
                             torchrun_command, tracked_inputs)
from mugv.config import GpuSubmitConfig
from tests.support.latent_set import TEXT_LEN, make_latent_set

ROOT = Path(__file__).resolve().parents[1]
STAGE = "pretrain@s"
# ranks of the submitted torchrun job (rank 0 publishes alone after every rank has left the job: leave_job)
NPROC = 2

DVC_YAML = {"stages": {"pretrain": {"foreach": ["s"], "do": {
    "cmd": "mugv pretrain data/latents models/pretrain/${item} --stage ${item} --vae models/vae --quiet",
    "deps": ["data/latents", "models/vae"],
    "params": ["pretrain"],
    "outs": [{"models/pretrain/${item}/checkpoints": {"persist": True, "cache": False}},
             "models/pretrain/${item}/release", "models/pretrain/${item}/samples"],
    "metrics": [{"metrics/pretrain/${item}.json": {"cache": False}}],
}}}}

PARAMS = {
    "pipeline": {"retries": 0},
    "encode": {"text": {"max_length": TEXT_LEN}},
    "diffusion": {"sampler": {"steps": 2}},
    "pretrain": {"peak_flops": 1e10, "heldout": {"samples": 0}, "log_every": 1, "checkpoint": {"every": 100},
                 "sample_prompts": ["a red ball"], "sample_size": [1, 64, 64],
                 "stages": [{"name": "s", "steps": 2, "batching": {"buckets": ["*_f1"], "tokens_per_batch": 150}}]},
}


def _dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


def _tiny_repo(path: Path) -> Path:
    """A DVC repository (no git) whose one stage is `mugv pretrain` on a tiny latent set."""
    from mugv.models.vae import VideoVAE, get_vae_preset, save_vae

    path.mkdir()
    _dvc(path, "init", "--no-scm", "-q")
    make_latent_set(path / "data" / "latents")
    save_vae(VideoVAE(get_vae_preset("tiny")), path / "models" / "vae")
    (path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (path / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    return path


def _outputs(repo: Path) -> set[str]:
    out = repo / "models" / "pretrain" / "s"
    return {str(p.relative_to(out)) for p in (out / "release").rglob("*")} | {
        str(p.relative_to(out)) for p in (out / "samples").rglob("*")}


def _lock_outs(repo: Path) -> dict[str, str]:
    """Output path -> content hash in dvc.lock; the resumable checkpoints (persisted, not cached) aside."""
    entry = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][STAGE]
    return {o["path"]: o["md5"] for o in entry["outs"] if not o["path"].endswith("/checkpoints")}


def _start_worker(pool: str, repo: Path, log: Path) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "1", "MUGV_HOME": str(repo), "OMP_NUM_THREADS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    exe = Path(sys.executable).with_name("prefect")
    return subprocess.Popen([str(exe), "worker", "start", "--pool", pool, "--type", "process", "--limit", "1"],
                            env=env, cwd=repo, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _deploy(pool: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.train_job import train_stage_flow

    async def create_pool():
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)

    asyncio.run(create_pool())
    source = train_stage_flow.from_source(source=str(ROOT), entrypoint="flows/train_job.py:train_stage_flow")
    source.deploy(name="train-test", work_pool_name=pool, print_next_steps=False)
    return "mugv-train-stage/train-test"


def test_torchrun_command_places_this_node_in_the_job():
    cmd = torchrun_command(["pretrain", "a b"], 2, 8, Node(1, "job-0.mugv-torchrun:29500", "job"))
    text = " ".join(cmd)
    assert "--nnodes 2 --nproc-per-node 8 --node-rank 1" in text
    assert "--rdzv-endpoint job-0.mugv-torchrun:29500 --rdzv-id job" in text
    assert cmd[-3:] == ["mugv.cli", "pretrain", "a b"]


def test_training_stages_are_the_torchrun_commands_of_dvc_yaml():
    assert is_training_stage(ROOT, "sft") and is_training_stage(ROOT, "post_train@kto")
    with pytest.raises(ValueError, match="not a training stage"):
        stage_arguments(ROOT, "qc")


@pytest.mark.slow
def test_a_node_pulls_the_stage_inputs_and_pushes_its_outputs(tmp_path, s3_server):
    repo = tmp_path / "repo"
    (repo / "data" / "latents").mkdir(parents=True)
    (repo / "data" / "latents" / "shard.bin").write_bytes(b"latents")
    _dvc(repo, "init", "--no-scm", "-q")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sft": {
        "cmd": "mugv sft data/latents models/sft", "deps": ["data/latents", "params.yaml"], "outs": ["models/sft"]}}}))
    assert not has_remote(repo)
    _dvc(repo, "add", "-q", "data/latents")
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo, dvc_repo.config.edit() as config:  # `dvc remote add -d` + `modify endpointurl`
        config["core"]["remote"] = "store"
        config["remote"]["store"] = {"url": "s3://mugv-dvc/remote", "endpointurl": s3_server}
    import boto3

    boto3.client("s3").create_bucket(Bucket="mugv-dvc")
    _dvc(repo, "push", "-q")
    shutil.rmtree(repo / "data" / "latents")
    shutil.rmtree(repo / ".dvc" / "cache")  # a fresh node: the checkout without data
    (repo / "params.yaml").write_text("{}\n")

    assert has_remote(repo) and pull_inputs(repo, "sft") == ["data/latents"]
    assert (repo / "data" / "latents" / "shard.bin").read_bytes() == b"latents"
    (repo / "models" / "sft").mkdir(parents=True)
    (repo / "models" / "sft" / "weights").write_bytes(b"trained")  # what torchrun wrote
    record_outputs(repo, "sft", push=True)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["sft"]
    assert [o["path"] for o in lock["outs"]] == ["models/sft"]
    shutil.rmtree(repo / "models" / "sft")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(repo, "pull", "-q", "sft")  # another machine gets the outputs from the remote
    assert (repo / "models" / "sft" / "weights").read_bytes() == b"trained"


@pytest.mark.slow
def test_training_stage_submitted_to_a_pool_matches_the_in_process_run(prefect_harness, tmp_path, monkeypatch):
    import mlflow

    from flows.pipeline import pipeline_flow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.setenv("MUGV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    template = _tiny_repo(tmp_path / "template")
    assert stage_arguments(template, STAGE)[:2] == ["pretrain", "data/latents"]
    assert tracked_inputs(template, STAGE) == []  # the inputs are plain files here: nothing for dvc pull
    local, gpu = (shutil.copytree(template, tmp_path / name) for name in ("local", "gpu"))
    # NPROC data-parallel ranks of one micro-batch each take the same step as one process of NPROC micro-batches
    local_params = yaml.safe_load((local / "params.yaml").read_text())
    local_params.setdefault("pretrain", {})["micro_batches"] = NPROC
    (local / "params.yaml").write_text(yaml.safe_dump(local_params, sort_keys=False))

    monkeypatch.chdir(local)
    pipeline_flow(stages=[STAGE])
    client = mlflow.MlflowClient()
    (first,) = client.search_model_versions("name = 'mugv-dit'")

    pool = "gpu-test-process"
    deployment = _deploy(pool)
    worker = _start_worker(pool, gpu, tmp_path / "worker.log")
    try:
        params = yaml.safe_load((gpu / "params.yaml").read_text())
        params["pipeline"]["gpu"] = GpuSubmitConfig(deployment=deployment, nodes=1, gpus_per_node=NPROC,
                                                    timeout_s=300).model_dump()
        (gpu / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        monkeypatch.chdir(gpu)
        result = pipeline_flow(stages=[STAGE])
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a worker slow to shut down on a loaded machine is not what is tested
            os.killpg(worker.pid, 9)
            worker.wait(timeout=30)
    log = (tmp_path / "worker.log").read_text()
    assert f"--nproc-per-node {NPROC}" in log and "torch.distributed.run" in log, log[-3000:]

    assert _outputs(gpu) == _outputs(local) and "samples/prompt_00.mp4" in _outputs(gpu)
    # same seed and data: the same outputs recorded, and the same training up to the reduction order of DP
    assert _lock_outs(gpu).keys() == _lock_outs(local).keys() and len(_lock_outs(gpu)) == 3
    metrics = {name: json.loads((repo / "metrics" / "pretrain" / "s.json").read_text()) for name, repo in
               (("local", local), ("gpu", gpu))}
    assert metrics["gpu"].keys() == metrics["local"].keys() and metrics["gpu"]["steps"] == 2
    for key, value in metrics["local"].items():
        assert metrics["gpu"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    versions = client.search_model_versions("name = 'mugv-dit'")
    second = next(v for v in versions if v.version != first.version)
    assert second.run_id == result["results"][0]["run_id"]  # registered from the pipeline's child run
    assert second.tags["mugv.stage"] == first.tags["mugv.stage"] == "s"
    assert client.get_run(second.run_id).data.tags["mugv.stage"] == STAGE
    _dvc(gpu, "status", "-q", STAGE)  # dvc.lock records exactly what the job wrote
