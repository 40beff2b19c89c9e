"""`dvc repro` of the real dvc.yaml (synth -> ingest -> qc) in a temporary git repository."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def dvc(repo: Path, *args: str) -> str:
    bin_dir = str(Path(sys.executable).parent)
    import os

    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project's stage definitions and code, with a smaller synthetic set."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(ROOT / "mugv", repo / "mugv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"]["num_videos"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "repro", "qc")
    return repo


def test_repro_writes_every_declared_output(repo):
    clips = pd.read_parquet(repo / "data/ingest/clips.parquet")
    qc = pd.read_parquet(repo / "data/qc/qc.parquet")
    assert len(clips) > 8  # multi-shot videos split into more clips than sources
    assert set(qc["clip_id"]) == set(clips["clip_id"])
    assert qc["keep"].any()
    for path in clips["path"]:
        assert (repo / "data/ingest" / path).exists()
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    assert metrics, "dvc metrics show found nothing"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"synth", "ingest", "qc"} <= set(lock["stages"])


def test_repro_is_incremental(repo):
    out = dvc(repo, "repro", "qc")
    assert "didn't change" in out or "up to date" in out.lower()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["qc"]["profiles"][params["qc"]["profile"]]["motion_max"] = 19.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro", "qc")
    assert "Running stage 'qc'" in out
    assert "Running stage 'ingest'" not in out and "Running stage 'synth'" not in out
