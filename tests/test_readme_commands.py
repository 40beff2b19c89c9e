"""The README's walkthrough commands exist and parse: mugv, dvc and mlflow commands through their own parsers,
prefect commands with the options the end-to-end deployment test runs them with."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WALKTHROUGHS = "## Walkthroughs (one machine)"
# prefect commands the README may use: those tests/test_deployments.py runs, and starting a server
PREFECT_COMMANDS = {("work-pool", "create"), ("deploy",), ("worker", "start"), ("deployment", "run"),
                    ("server", "start")}


def walkthrough_commands() -> list[list[str]]:
    """Each command line (comment stripped, `export` lines left out) of the bash blocks under WALKTHROUGHS."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(WALKTHROUGHS):]
    section = section[:section.find("\n## ", len(WALKTHROUGHS))]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] != "export":
                commands.append(words)
    return commands


COMMANDS = walkthrough_commands()


def test_the_walkthroughs_cover_dvc_prefect_and_promotion():
    tools = {Path(c[0]).name for c in COMMANDS}
    assert tools == {"dvc", "prefect", "mlflow", "mugv"}
    assert all(c[0].startswith(".venv/bin/") for c in COMMANDS)  # runnable as written after `make run`
    text = " ".join(" ".join(c) for c in COMMANDS)
    for needed in ("dvc repro", "dvc exp run -S", "dvc metrics show", "dvc plots show", "prefect worker start",
                   "prefect deploy --prefect-file infra/prefect.yaml", "mugv promote", "mugv rollback"):
        assert needed in text, needed


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0].endswith("/mugv")], ids=" ".join)
def test_mugv_command_parses(words):
    import typer

    from mugv.cli import app

    group = typer.main.get_command(app)
    command = group.commands[words[1]]
    command.make_context(words[1], list(words[2:]))  # raises click.UsageError on an unknown option or bad value


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0].endswith("/dvc")], ids=" ".join)
def test_dvc_command_parses(words):
    from dvc.cli import parse_args

    args = parse_args(words[1:])  # DVC's own parser: exits on an unknown command or option
    assert args.func is not None


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0].endswith("/mlflow")], ids=" ".join)
def test_mlflow_command_parses(words):
    import click
    from mlflow.cli import cli

    command = cli.get_command(click.Context(cli), words[1])  # `ui` is an alias of `server`
    assert command is not None, f"mlflow has no command {words[1]!r}"
    command.make_context(words[1], list(words[2:]))


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0].endswith("/prefect")], ids=" ".join)
def test_prefect_command_is_one_the_deployment_test_runs(words):
    path = tuple(w for w in words[1:3] if not w.startswith("-"))
    command = next((c for c in PREFECT_COMMANDS if path[:len(c)] == c), None)
    assert command, f"prefect {' '.join(path)} is not run by any test"
    e2e = (ROOT / "tests" / "test_deployments.py").read_text()
    if command != ("server", "start"):  # the test's server is Prefect's test harness
        for option in (w for w in words if w.startswith("--")):
            assert f'"{option}"' in e2e, f"{option} of prefect {' '.join(command)} is not used by test_deployments"


def test_prefect_server_start_takes_host_and_port():
    words = next(c for c in COMMANDS if c[1:3] == ["server", "start"])
    help_text = subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "start", "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    for option in (w for w in words if w.startswith("--")):
        assert option in help_text
    assert words[words.index("--host") + 1] == "127.0.0.1"


TINY_DVC = """\
stages:
  synth:
    cmd: python make.py
    deps: [make.py]
    params: [synth.num_videos]
    outs: [videos.txt]
    metrics: [{metrics/synth.json: {cache: false}}]
    plots: [{plots/loss.csv: {cache: false, x: step, y: loss}}]
"""
TINY_MAKE = """\
import json, pathlib, yaml
n = yaml.safe_load(open("params.yaml"))["synth"]["num_videos"]
pathlib.Path("videos.txt").write_text("v\\n" * n)
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/synth.json").write_text(json.dumps({"videos": n}))
pathlib.Path("plots").mkdir(exist_ok=True)
pathlib.Path("plots/loss.csv").write_text("step,loss\\n" + "".join(f"{i},{1 / (i + 1)}\\n" for i in range(5)))
"""


@pytest.mark.slow
def test_the_dvc_walkthrough_runs_as_written(tmp_path):
    """Walkthrough 1's commands, run in their order on a one-stage repository with the same param name."""
    def run(*words):
        done = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(words)}: {done.stderr[-2000:]}"
        return done.stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    (tmp_path / "dvc.yaml").write_text(TINY_DVC)
    (tmp_path / "make.py").write_text(TINY_MAKE)
    (tmp_path / "params.yaml").write_text("synth:\n  num_videos: 240\n")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "start")
    dvc_commands = [c for c in COMMANDS if c[0].endswith("/dvc")]
    assert dvc_commands[0][1] == "repro"
    for words in dvc_commands:
        out = run(sys.executable, "-m", "dvc", *words[1:])
        if words[1:3] == ["exp", "run"]:
            assert (tmp_path / "videos.txt").read_text().count("v") == 120  # the experiment ran with its param
        if words[1:3] == ["exp", "show"]:
            assert "120" in out and "240" in out  # the experiment's param beside the workspace's
        if words[1:3] == ["metrics", "show"]:
            assert "videos" in out
    assert (tmp_path / "dvc_plots" / "index.html").exists()
