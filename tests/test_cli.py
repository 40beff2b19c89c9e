"""The CLI surface: every stage is a command with help; `plan` prints cost, memory and a layout."""

import os
import re
import subprocess
import sys

from typer.testing import CliRunner

from mugv.cli import QUIET_ENV, app

runner = CliRunner()


def test_every_stage_has_a_command():
    out = runner.invoke(app, ["--help"]).output
    for command in ("synth", "ingest", "qc", "train-vae", "encode", "pretrain", "generate", "convert", "plan", "pipeline"):
        assert re.search(rf"\b{command}\b", out), command


def test_plan_prints_parameters_tokens_flops_memory_and_layout():
    result = runner.invoke(app, ["plan", "1B", "--frames", "105", "--height", "720", "--width", "1280", "--tp", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "parameters: 1208059968" in out
    assert "tokens per sample: 50402" in out
    gib = float(re.search(r"memory per GPU \(TP2 .*?\): ([\d.]+) GiB", out).group(1))
    assert 10 < gib < 1000
    assert "recommended on H100-80GB:" in out and "recommended on H200-141GB:" in out


def test_plan_memory_falls_with_tensor_parallel_and_recompute():
    def gib(*extra):
        out = runner.invoke(app, ["plan", "4B", "--height", "480", "--width", "848", *extra]).output
        return float(re.search(r"memory per GPU .*?: ([\d.]+) GiB", out).group(1))

    base = gib()
    assert gib("--tp", "4") < base
    assert gib("--recompute") < base


def test_generate_rejects_bad_sizes_before_loading_anything(tmp_path):
    result = runner.invoke(app, ["generate", "--prompt", "x", "--checkpoint", str(tmp_path), "--height", "100"])
    assert result.exit_code == 2
    assert "multiples of 16" in result.output


def test_importing_the_cli_changes_no_environment_and_a_command_sets_its_defaults():
    code = (
        "import os; before = dict(os.environ); import mugv.cli; "
        "assert dict(os.environ) == before, 'import mugv.cli changed os.environ'; "
        "from typer.testing import CliRunner; "
        "CliRunner().invoke(mugv.cli.app, ['plan', 'tiny', '--frames', '9', '--height', '64', '--width', '64']); "
        "assert all(os.environ[k] == v for k, v in mugv.cli.QUIET_ENV.items())"
    )
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
