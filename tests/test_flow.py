"""The Prefect pipeline flow over a real DVC repo: DAG order, retries, nested MLflow runs, DVC hashes."""

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows import pipeline
from mugv import tracking
from mugv.config import TrackingConfig

pytestmark = pytest.mark.slow

DVC_YAML = textwrap.dedent(
    """
    stages:
      second:
        cmd: python -c "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'b')"
        deps: [a.txt]
        outs: [b.txt]
      first:
        cmd: python -c "import pathlib; pathlib.Path('a.txt').write_text('a')"
        outs: [a.txt]
      flaky:
        cmd: python flaky.py
        deps: [b.txt]
        outs: [c.txt]
    """
)

FLAKY = textwrap.dedent(
    """
    # fails on its first attempt, then succeeds: exercises the flow's retries
    import pathlib, sys
    marker = pathlib.Path('.attempted')
    if not marker.exists():
        marker.write_text('1')
        sys.exit(3)
    pathlib.Path('c.txt').write_text('c')
    """
)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    def sh(*cmd):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    sh("git", "init", "-q")
    sh(sys.executable, "-m", "dvc", "init", "-q")
    sh(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "params.yaml").write_text(
        "project:\n  tracking:\n    experiment: flowtest\npipeline:\n  retries: 1\n  retry_delay_s: 0\n"
    )
    sh("git", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pipeline")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def test_flow_runs_stages_in_order_with_retries_and_nested_runs(repo, prefect_harness):
    from flows.pipeline import dag_order, pipeline_flow

    assert dag_order(repo) == ["first", "second", "flaky"]
    assert dag_order(repo, ["second"]) == ["first", "second"]

    out = pipeline_flow()
    assert out["stages"] == ["first", "second", "flaky"]
    assert (repo / "c.txt").read_text() == "c"
    cfg = TrackingConfig(experiment="flowtest")
    parent = tracking.get_run(out["run_id"], cfg)
    assert parent.info.status == "FINISHED"
    # the parent run carries the resolved params under their params.yaml names
    assert parent.data.params["pipeline.retries"] == "1"
    assert parent.data.params["project.tracking.experiment"] == "flowtest"
    assert parent.data.params["train_vae.spatial_steps"] and parent.data.params["diffusion.training.image_loss_weight"]
    assert all(r["seconds"] >= 0 for r in out["results"])
    children = tracking.search_runs(cfg, f"tags.mlflow.parentRunId = '{out['run_id']}'")
    by_stage = {}
    for r in children:
        by_stage.setdefault(r.data.tags["mugv.stage"], []).append(r)
    assert set(by_stage) == {"first", "second", "flaky"}
    # the flaky stage failed once and was retried by Prefect
    assert sorted(r.info.status for r in by_stage["flaky"]) == ["FAILED", "FINISHED"]
    second = by_stage["second"][0]
    assert second.data.tags["dvc.out.b.txt"] and second.data.tags["dvc.dep.a.txt"]
    # the parent records the commit and dvc.lock it ran with; no remote configured: nothing pulled or pushed
    lock_sha = hashlib.sha256((repo / "dvc.lock").read_bytes()).hexdigest()
    assert parent.data.tags["mugv.dvc_lock.sha256"] == lock_sha and "mugv.dvc_remote" not in parent.data.tags
    assert parent.data.tags["mlflow.source.git.commit"] == tracking.git_commit(repo)
    assert {r.data.tags["mlflow.source.git.commit"] for r in children} == {tracking.git_commit(repo)}
    assert "dvc.lock" in tracking.list_artifacts(out["run_id"], cfg=cfg) and out["remote"] is None

    # one task run per stage, named for it, and a markdown report with a row per stage
    artifact, task_names = prefect_report(pipeline.REPORT_KEY)
    assert {"first", "second", "flaky"} <= task_names
    assert "| flaky |" in artifact.data and f"`{out['run_id']}`" in artifact.data and lock_sha in artifact.data

    # a second run finds everything up to date in DVC and says so
    again = pipeline_flow()
    runs = tracking.search_runs(cfg, f"tags.mlflow.parentRunId = '{again['run_id']}'")
    assert {r.data.tags["mugv.dvc_cached"] for r in runs} == {"True"}


def prefect_report(key: str):
    """The latest markdown artifact under `key` and the names of its flow run's task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import ArtifactSort

    async def read():
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                                    sort=ArtifactSort.CREATED_DESC, limit=1)
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[artifacts[0].flow_run_id])))
            return artifacts[0], {r.name for r in runs}

    return asyncio.run(read())


STAGE_SCRIPT = textwrap.dedent(
    """
    import pathlib
    from mugv import tracking
    with tracking.start_stage_run("mystage", tracking.TrackingConfig(experiment="plain")) as run:
        pathlib.Path("out.txt").write_text(run.run_id)
    """
)


def test_plain_dvc_repro_tags_the_stage_run_with_the_hashes_dvc_lock_records(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, check=True, capture_output=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "one.txt").write_text("1")
    (tmp_path / "src" / "two.txt").write_text("2")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "stage.py").write_text(STAGE_SCRIPT)
    (tmp_path / "params.yaml").write_text("p: 1\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  mystage:\n    cmd: python stage.py\n    deps: [a.txt, src, stage.py]\n"
        "    params: [p]\n    outs: [out.txt]\n")
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "stage"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], check=True)

    run = tracking.get_run((tmp_path / "out.txt").read_text(), TrackingConfig(experiment="plain"))
    locked = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["mystage"]["deps"]
    expected = {f"dvc.dep.{d['path']}": d["md5"] for d in locked}
    assert expected["dvc.dep.src"].endswith(".dir")  # a folder dep: DVC's directory hash, as in dvc.lock
    assert {k: v for k, v in run.data.tags.items() if k.startswith("dvc.dep.")} == expected
    assert run.data.tags["mugv.dvc_stage"] == "mystage" and run.data.tags["mlflow.source.git.commit"]


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_stage_output_streams_line_by_line_into_the_logger(tmp_path):
    log = logging.getLogger("test-stream")
    handler = Lines()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    script = "import sys; print('one'); print('two', file=sys.stderr); print('three'); sys.exit(4)"
    code, last = pipeline.stream_command([sys.executable, "-c", script], tmp_path, dict(os.environ), log)
    assert (code, last) == (4, "three")
    assert handler.lines == ["one", "two", "three"]  # stdout and stderr, in order (unbuffered child)


def test_a_stage_past_its_timeout_is_killed(tmp_path):
    log = logging.getLogger("test-timeout")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="stage_timeout_s=0.5"):
        pipeline.stream_command([sys.executable, "-c", "import time; print('x', flush=True); time.sleep(60)"],
                                tmp_path, dict(os.environ), log, timeout_s=0.5)
    assert time.monotonic() - started < 30  # killed, not waited for


def test_report_lists_every_stage_and_marks_where_a_run_stopped():
    results = [{"stage": "synth", "seconds": 7.2, "cached": True, "key_metric": ("videos", 8.0), "run_id": "a" * 32}]
    text = pipeline.report_markdown(["synth", "ingest", "qc"], results, "p" * 32, "1",
                                    {"git commit": "abc123", "DVC remote": None})
    assert "| synth | 0:07 | cached | videos = 8 |" in text
    assert "| ingest | - | failed |" in text and "| qc | - | not run |" in text
    assert "git commit: `abc123`" in text and "DVC remote" not in text


def test_unknown_stage_is_rejected(repo):
    from flows.pipeline import dag_order

    with pytest.raises(ValueError, match="unknown stage"):
        dag_order(repo, ["nope"])


def test_summary_table_shows_stage_time_cache_and_key_metric():
    from rich.console import Console

    from flows.pipeline import summary_table

    console = Console(record=True, width=120)
    console.print(summary_table([
        {"stage": "train_vae", "seconds": 745.2, "cached": False, "key_metric": ("metrics.vae_psnr", 23.14159)},
        {"stage": "synth", "seconds": 1.4, "cached": True, "key_metric": None},
    ]))
    text = console.export_text()
    assert "train_vae" in text and "12:25" in text and "run" in text and "metrics.vae_psnr = 23.14" in text
    assert "synth" in text and "0:01" in text and "cached" in text


def test_key_metric_of_a_cached_stage_comes_from_its_last_run(tmp_path, monkeypatch):
    from flows.pipeline import key_metric

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    cfg = TrackingConfig(experiment="keys")
    with tracking.pipeline_run("pipeline", cfg) as parent:
        ran = tracking.child_run(parent.run_id, "qc", cfg)
        from mlflow import MlflowClient

        MlflowClient().log_metric(ran, "kept", 17)
        tracking.finish_run(ran, "FINISHED", cfg)
        cached = tracking.child_run(parent.run_id, "qc", cfg, tags={"mugv.dvc_cached": True})
        tracking.finish_run(cached, "FINISHED", cfg)
    assert key_metric("qc", ran, cfg) == ("kept", 17.0)
    assert key_metric("qc", cached, cfg) == ("kept", 17.0)
    assert key_metric("unknown_stage", cached, cfg) is None


def test_mugv_pipeline_on_a_busy_checkout_says_so_in_one_line(repo, prefect_harness):
    from typer.testing import CliRunner

    from flows.run_lock import checkout_lock
    from mugv.cli import app

    with checkout_lock(repo, holder={"flow_run_id": "0a1b", "flow_run_name": "nimble-fox"}):
        result = CliRunner().invoke(app, ["pipeline"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "another pipeline run holds" in result.output and "nimble-fox" in result.output
    assert not (repo / "a.txt").exists()  # no stage ran
