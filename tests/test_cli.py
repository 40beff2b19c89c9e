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
    code = ("import sys, mugv.cli; sys.argv = ['mugv', 'generate', sys.argv[1], 'x', '--height', '100']; "
            "exec('try:\\n mugv.cli.app()\\nexcept SystemExit as e:\\n status = e.code'); "
            "heavy = [m for m in ('torch', 'megatron.core', 'mlflow', 'transformers') if m in sys.modules]; "
            "print(status, heavy)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
    assert "multiples of 16" in result.stderr


def test_help_takes_h_and_shows_flags_without_a_type():
    for args in (["-h"], ["--help"], ["plan", "-h"], ["generate", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage: " in result.output, args
        assert "<bool>" not in result.output, args


def test_version():
    from mugv import __version__

    result = subprocess.run([sys.executable, "-m", "mugv.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"mugv {__version__}"


def test_commands_take_their_inputs_as_arguments():
    """generate CHECKPOINT PROMPT, like every stage command takes its folders: no required options."""
    out = runner.invoke(app, ["generate", "-h"]).output
    assert re.search(r"Usage: mugv generate \[OPTIONS\] \{?CHECKPOINT\}? \{?PROMPT\}?", out), out


def test_plan_imports_neither_torch_nor_megatron():
    code = ("import sys; from typer.testing import CliRunner; from mugv.cli import app; "
            "r = CliRunner().invoke(app, ['plan', '10B']); assert r.exit_code == 0, r.output; "
            "print([m for m in ('torch', 'megatron.core', 'mlflow') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_the_release_marker_is_the_release_modules():
    from mugv.cli import RELEASE_MANIFEST
    from mugv.inference.release import MANIFEST

    assert RELEASE_MANIFEST == MANIFEST


def test_a_prompt_longer_than_the_text_encoder_gets_one_warning_line():
    from mugv.inference.generate import prompt_truncation_warning
    from mugv.models.text.model import TextEncoderConfig, load_text_encoder

    encoder = load_text_encoder(TextEncoderConfig())
    long_prompt = "a red circle moves quickly from left to right " * 220  # about 10,000 characters
    warning = prompt_truncation_warning(encoder, long_prompt)
    assert warning is not None and "\n" not in warning
    tokens = int(re.search(r"has (\d+) tokens", warning).group(1))
    assert tokens == 9 * 220 + 2 and f"keeps the first {encoder.max_length}" in warning
    assert prompt_truncation_warning(encoder, "a red circle") is None


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
