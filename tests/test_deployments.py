"""infra/prefect.yaml deployed to a real Prefect server and run by a real process worker, end to end.

A small git + DVC checkout (a real `mugv synth` stage and a gate stage) with its DVC remote on S3 (moto)
and its MLflow runs on a real `mlflow server` whose artifacts go to S3: the scheduled deployment's run
completes; a second run of the same checkout, started while the first holds it, is refused naming it.
"""

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

DVC_YAML = textwrap.dedent(
    """
    stages:
      synth:
        cmd: mugv synth data/synth --quiet
        params: [synth]
        outs: [data/synth]
      gate:
        cmd: python gate.py
        deps: [data/synth/videos, gate.py]
        outs: [count.txt]
    """
)

# waits (bounded) for the test to open the gate, so that a second run certainly meets the first one
GATE = textwrap.dedent(
    """
    import pathlib, time
    deadline = time.time() + 120
    while not pathlib.Path("gate.open").exists() and time.time() < deadline:
        time.sleep(0.2)
    pathlib.Path("count.txt").write_text(str(len(list(pathlib.Path("data/synth/videos").glob("*.mp4")))))
    """
)

PARAMS = textwrap.dedent(
    """
    project:
      tracking:
        experiment: deployed
    pipeline:
      retries: 0
      lock_wait_s: 0
    synth:
      num_videos: 2
      sizes: [[64, 64]]
      multi_shot_fraction: 0.0
      poor_fraction: 0.0
      shot_seconds: [1.0, 1.0]
    """
)

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def checkout(tmp_path, s3_server):
    """A git + DVC repository with the project's flows, a two-stage dvc.yaml and an S3 default remote."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="dvc")
    home = tmp_path / "checkout"
    home.mkdir()
    shutil.copytree(ROOT / "flows", home / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    (home / "dvc.yaml").write_text(DVC_YAML)
    (home / "gate.py").write_text(GATE)
    (home / "params.yaml").write_text(PARAMS)
    (home / ".gitignore").write_text("gate.open\nmlruns.db\n")
    git(home, "init", "-q")
    for args in (["init", "-q"], ["config", "core.analytics", "false"], ["remote", "add", "-d", "store", "s3://dvc/store"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=home, check=True, capture_output=True)
    git(home, "add", "-A")
    git(home, "commit", "-q", "-m", "tiny pipeline")
    return home


def prefect(*args, env, cwd):
    """A `prefect` CLI command against the test server; its output (raises with it on failure)."""
    proc = subprocess.run([str(Path(sys.executable).with_name("prefect")), "--no-prompt", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    return asyncio.run(read())


def wait_for(predicate, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; worker log:\n{log.read_text()[-4000:]}")


def test_scheduled_deployment_runs_on_a_worker_with_s3_remote_and_mlflow_server(
        checkout, prefect_harness, mlflow_server, s3_server, tmp_path):
    import boto3
    from prefect.settings import PREFECT_API_URL

    from flows.run_lock import LOCK_FILE
    from mugv import tracking
    from mugv.config import TrackingConfig

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "MUGV_HOME": str(checkout),
           "MLFLOW_TRACKING_URI": mlflow_server, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_RUN_ID", None)
    prefect("work-pool", "create", "cpu", "--type", "process", env=env, cwd=checkout)
    prefect("deploy", "--prefect-file", str(ROOT / "infra" / "prefect.yaml"), "--name", "data-nightly", "--name", "pipeline",
            env=env, cwd=checkout)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", "cpu"],
                              cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        # the nightly deployment, fired a few seconds ahead (its own cron is 02:00)
        out = prefect("deployment", "run", "mugv-pipeline/data-nightly", "--start-in", "3 seconds",
                      "--param", 'stages=["gate"]', env=env, cwd=checkout)
        first = UUID.search(out).group(0)
        lock = checkout / LOCK_FILE
        wait_for(lambda: lock.exists() and first in lock.read_text(), 90, "the first run to hold the checkout", log)

        out = prefect("deployment", "run", "mugv-pipeline/pipeline", env=env, cwd=checkout)
        second = UUID.search(out).group(0)
        refused = wait_for(lambda: (r := flow_run(second)).state.is_final() and r, 90, "the second run to end", log)
        (checkout / "gate.open").touch()
        done = wait_for(lambda: (r := flow_run(first)).state.is_final() and r, 120, "the first run to end", log)
    finally:  # the worker and any flow run it started
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)

    assert done.state.is_completed(), f"{done.state}\n{log.read_text()[-4000:]}"
    assert refused.state.is_failed()
    assert f"another pipeline run holds {lock}" in refused.state.message and first in refused.state.message
    assert (checkout / "count.txt").read_text() == "2"

    # MLflow (the server): the parent run and a run per stage, tagged with the checkout's commit
    commit = tracking.git_commit(checkout)
    cfg = TrackingConfig(uri=mlflow_server, experiment="deployed")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    try:
        parents = tracking.search_runs(cfg, "tags.`mugv.kind` = 'pipeline'")
        assert len(parents) == 1  # the refused run never opened one
        parent = parents[0]
        assert parent.data.tags["mlflow.source.git.commit"] == commit
        assert parent.data.tags["mugv.dvc_remote"] == "store" and parent.data.tags["mugv.dvc_lock.sha256"]
        children = tracking.search_runs(cfg, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        assert {r.data.tags["mugv.stage"]: r.info.status for r in children} == {"synth": "FINISHED", "gate": "FINISHED"}
        assert all(r.data.tags["mlflow.source.git.commit"] == commit for r in children)
        synth_run = next(r for r in children if r.data.tags["mugv.stage"] == "synth")
        assert synth_run.data.metrics["videos"] == 2  # the real stage logged into the run the flow opened
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)

    s3 = boto3.client("s3", endpoint_url=s3_server)
    artifacts = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(k.endswith(f"{parent.info.run_id}/artifacts/dvc.lock") for k in artifacts), artifacts
    pushed = [o["Key"] for o in s3.list_objects_v2(Bucket="dvc", Prefix="store/").get("Contents", [])]
    assert len(pushed) >= 3, pushed  # the synth folder's .dir listing, its videos and files, count.txt
