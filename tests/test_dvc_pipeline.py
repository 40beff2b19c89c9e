"""`dvc repro` of the real dvc.yaml (synth -> ingest -> qc) in a temporary git repository: outputs, metrics
with history, plots drawn once, and a clean rerun that leaves git clean."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("metrics/synth.json", "metrics/ingest.json", "metrics/qc.json")  # what synth -> ingest -> qc write
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


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    return subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def numbers_only(tree) -> bool:
    """Whether every leaf of a JSON tree is a number (booleans and text are not)."""
    if isinstance(tree, dict):
        return all(numbers_only(v) for v in tree.values())
    return isinstance(tree, (int, float)) and not isinstance(tree, bool)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project's stage definitions and code, with a smaller synthetic set."""
    repo = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(ROOT / "mugv", repo / "mugv", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"]["num_videos"] = 8
    params["ingest"]["workers"] = params["qc"]["workers"] = params["encode"]["workers"] = 1  # 8 videos do not pay for starting Ray
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "repro", "qc")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "synth, ingest, qc")
    return repo


def test_repro_writes_every_declared_output(repo):
    clips = pd.read_parquet(repo / "data/ingest/clips.parquet")
    qc = pd.read_parquet(repo / "data/qc/qc.parquet")
    assert len(clips) > 8  # multi-shot videos split into more clips than sources
    assert set(qc["clip_id"]) == set(clips["clip_id"])
    assert qc["keep"].any()
    for path in clips["path"]:
        assert (repo / "data/ingest" / path).exists()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"synth", "ingest", "qc"} <= set(lock["stages"])


def test_metrics_are_committed_numbers_named_by_their_stages(repo):
    from mugv.stages import ingest, qc, synth

    assert [str(stage.METRICS) for stage in (synth, ingest, qc)] == list(METRICS)
    assert sorted(git(repo, "ls-files", "metrics").split()) == sorted(METRICS)  # committed, not git-ignored
    shown = json.loads(dvc(repo, "metrics", "show", "--json", *METRICS))
    data = shown[""]["data"]  # "": the workspace
    assert sorted(data) == sorted(METRICS)
    for path, entry in data.items():
        assert "error" not in entry, (path, entry)
        assert entry["data"] and numbers_only(entry["data"]), (path, entry["data"])
        assert len(entry["data"]) <= 12, path
    assert data[str(qc.METRICS)]["data"]["kept"] >= 1


def test_a_forced_rerun_changes_neither_dvc_lock_nor_the_metrics(repo):
    dvc(repo, "repro", "--force", "qc")  # reruns synth, ingest and qc
    assert git(repo, "status", "--porcelain") == ""
    diff = dvc(repo, "metrics", "diff", "HEAD", "--targets", *METRICS, "--json")
    assert json.loads(diff) == {}


def test_each_plot_is_drawn_once_as_the_right_kind_of_chart(repo):
    loss_curve = repo / "models/vae/plots/loss.csv"  # train_vae does not run here: a stand-in curve (git-ignored)
    loss_curve.parent.mkdir(parents=True)
    loss_curve.write_text("step,phase,loss\n0,spatial,0.5\n1,spatial,0.4\n")
    plots = json.loads(dvc(repo, "plots", "show", "--json"))["data"]
    shutil.rmtree(repo / "models")
    assert git(repo, "check-ignore", "dvc_plots").strip()  # where `dvc plots show` writes its HTML
    drawn = {name: entries for name, entries in plots.items() if entries}  # the other stages' files are absent
    assert all(len(entries) == 1 for entries in drawn.values()), drawn  # one rendering per declared plot
    for score in ("sharpness", "motion", "aesthetic", "brightness"):
        assert [e["type"] for e in drawn.pop(f"data/qc/plots/{score}.png")] == ["image"]
        (histogram,) = drawn.pop(f"qc {score}")
        assert histogram["type"] == "vega" and histogram["content"]["mark"]["type"] == "bar"
        assert histogram["content"]["encoding"]["y"]["field"] == "bin"
    (loss,) = drawn.pop("models/vae/plots/loss.csv")
    assert loss["content"]["encoding"]["x"]["field"] == "step" and '"mark": "line"' in json.dumps(loss["content"])
    assert drawn == {}  # scores.csv is a table, hist_<score>.csv only feed the bars: neither is drawn on its own


def test_repro_is_incremental(repo):
    out = dvc(repo, "repro", "qc")
    assert "didn't change" in out or "up to date" in out.lower()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["qc"]["profiles"][params["qc"]["profile"]]["motion_max"] = 19.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro", "qc")
    assert "Running stage 'qc'" in out
    assert "Running stage 'ingest'" not in out and "Running stage 'synth'" not in out
    assert sorted(git(repo, "status", "--porcelain").split()) == ["M", "M", "dvc.lock", "params.yaml"]

    git(repo, "commit", "-q", "-am", "qc: motion_max 19.5")  # metrics now have a history of two commits
    diff = subprocess.run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD~1", "HEAD", "--targets", *METRICS],
                          cwd=repo, capture_output=True, text=True)
    assert diff.returncode == 0 and "failed to load" not in (diff.stdout + diff.stderr).lower(), diff.stderr
    history = json.loads(dvc(repo, "metrics", "show", "--all-commits", "--json", *METRICS))
    commits = {rev: files for rev, files in history.items() if rev != "workspace"}
    assert len(commits) == 2 and all("error" not in f for rev in commits.values() for f in rev["data"].values())


def test_dvc_yaml_declares_the_metrics_file_each_stage_module_names():
    from mugv.stages import encode, ingest, preference_data, preference_opt, pretrain, qc, sft, synth, train_vae

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {name: stage.get("do", stage).get("metrics", []) for name, stage in stages.items()}
    expected = {module.NAME: str(module.METRICS)
                for module in (synth, ingest, qc, train_vae, encode, sft, preference_data)}
    expected["pretrain"] = str(pretrain.metrics_file("${key}"))
    expected["post_train"] = preference_opt.METRICS.format(method="${item}")
    expected["evaluate"] = "metrics/eval/${key}.json"  # one per evaluated model (mugv evaluate --metrics)
    assert {name: [path for entry in entries for path in entry] for name, entries in declared.items()} == {
        name: [path] for name, path in expected.items()
    }
    for entries in declared.values():
        (options,) = [next(iter(entry.values())) for entry in entries]
        assert options == {"cache": False}  # committed to git, not to the DVC cache
