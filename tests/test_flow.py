"""The Prefect pipeline flow over a real DVC repo: DAG order, retries, nested MLflow runs, DVC hashes."""

import subprocess
import sys
import textwrap

import pytest

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

    # a second run finds everything up to date in DVC and says so
    again = pipeline_flow()
    runs = tracking.search_runs(cfg, f"tags.mlflow.parentRunId = '{again['run_id']}'")
    assert {r.data.tags["mugv.dvc_cached"] for r in runs} == {"True"}


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
