"""Shared test fixtures: quiet offline env, a Prefect test server, an S3 (moto) server on 127.0.0.1."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mugv.cli import quiet_environment

quiet_environment()  # the quiet, offline environment defaults every `mugv` command sets


@pytest.fixture
def local_tracking(tmp_path, monkeypatch):
    """MLflow on a SQLite file in a fresh project folder (the cwd), a private models:/ cache; no outer run."""
    from mugv.tracking import TrackingConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("MUGV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MUGV_MODEL_CACHE_GB", raising=False)
    return TrackingConfig(experiment="t")


@pytest.fixture(scope="module")
def process_group() -> None:
    """A process group of one: building a model needs none, but Megatron's row-parallel linears all-reduce
    through a group even of one, and torch_dist checkpoints are written by one."""
    from mugv.training.distributed import init_parallel

    init_parallel()


@pytest.fixture(scope="session")
def shared_ray_session():
    """Holds the embedded Ray session `local_ray` keeps open, and closes it when the test session ends."""
    holder: dict = {}
    yield holder
    if holder.get("session") is not None:
        holder.pop("session").__exit__(None, None, None)


@pytest.fixture
def local_ray(shared_ray_session):
    """An embedded Ray (2 CPUs, no dashboard) started once and kept: the data stages' Ray tasks reuse it instead
    of starting their own. Its workers keep the environment of its start."""
    import ray

    from mugv.data.ray_runner import RayConfig, ray_session

    if not ray.is_initialized():
        if shared_ray_session.get("session") is not None:  # stopped by `without_shared_ray`: close it first
            shared_ray_session.pop("session").__exit__(None, None, None)
        session = ray_session(RayConfig(), workers=2)
        session.__enter__()
        shared_ray_session["session"] = session
    yield


@pytest.fixture
def without_shared_ray():
    """No Ray running: the stage under test starts its own, whose workers see this test's environment (S3 endpoints
    set by a fixture); a later `local_ray` starts a new shared one."""
    import ray

    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """A Prefect server on 127.0.0.1 for the whole session (prefect_test_harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; yields its endpoint URL with AWS_* env pointing at it."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, artifacts proxied to s3://mlflow/artifacts on the
    moto server); yields its tracking URI. Artifacts land in the moto bucket `mlflow` under `artifacts/`."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="mlflow")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", "s3://mlflow/artifacts"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "wb"),
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240  # about 10 s alone; minutes on a loaded machine
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            break
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
    try:
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, the test process's own count given back after (tests compare sums)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
