"""Every everyday mistake, through the real `mugv` entry point: one error line naming it and what exists, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mistake:
    args: tuple[str, ...]
    expected: tuple[str, ...]  # every one appears in the error line: the wrong thing and what exists


# {tmp}: a scratch folder holding a registry with model mugv-dit (version 1, alias @candidate, never
# evaluated), a bad YAML file, invalid params, an empty folder; the commands run in the project root (its dvc.yaml).
MISTAKES = {
    "generate-missing-checkpoint": Mistake(
        ("generate", "{tmp}/no-such-release", "a cat"), ("{tmp}/no-such-release", "does not exist", "release folder")),
    "generate-unknown-alias": Mistake(
        ("generate", "models:/mugv-dit@prod", "a cat"), ("'prod'", "@candidate (version 1)")),
    "generate-unknown-model": Mistake(
        ("generate", "models:/no-such-model@candidate", "a cat"), ("'no-such-model'", "mugv-dit")),
    "generate-negative-frames": Mistake(("generate", "{tmp}/empty", "a cat", "--frames", "-7"), ("'--frames'", "greater than or equal to 1")),
    "generate-frames-not-8k+1": Mistake(("generate", "{tmp}/empty", "a cat", "--frames", "10"), ("--frames", "8k+1", "9 or 17")),
    "generate-zero-steps": Mistake(("generate", "{tmp}/empty", "a cat", "--steps", "0"), ("'--steps'", "greater than or equal to 1")),
    "generate-bad-size": Mistake(("generate", "{tmp}/empty", "a cat", "--height", "100"), ("multiples of 16", "100x128")),
    "generate-gif": Mistake(("generate", "{tmp}/empty", "a cat", "--out", "x.gif"), ("x.gif", ".mp4")),
    "generate-missing-image": Mistake(("generate", "{tmp}/empty", "a cat", "--image", "{tmp}/no.png"), ("--image", "{tmp}/no.png")),
    "generate-training-checkpoint-alone": Mistake(("generate", "{tmp}/empty", "a cat"), ("release.json", "--vae", "--latents")),
    "generate-old-options": Mistake(("generate", "--prompt", "x", "--checkpoint", "y"), ("--prompt",)),
    "plan-unknown-preset": Mistake(("plan", "7B"), ("'7B'", "tiny", "1B", "10B", "18B")),
    "plan-missing-preset": Mistake(("plan",), ("PRESET",)),
    "convert-missing-source": Mistake(
        ("convert", "{tmp}/no-dit.pt", "{tmp}/out", "--from", "official", "--to", "mugv"), ("{tmp}/no-dit.pt", "does not exist")),
    "convert-vae-to-megatron": Mistake(
        ("convert", "{tmp}/empty", "{tmp}/out", "--from", "mugv", "--to", "megatron", "--model", "vae"),
        ("vae", "official <-> mugv", "megatron")),
    "convert-tp-without-torchrun": Mistake(
        ("convert", "{tmp}/empty", "{tmp}/out", "--from", "mugv", "--to", "megatron", "--tp", "2"), ("--tp 2", "torchrun")),
    "convert-unknown-format": Mistake(("convert", "a", "b", "--from", "hf", "--to", "mugv"), ("'hf'", "official", "megatron")),
    "pipeline-unknown-stage": Mistake(("pipeline", "--stage", "nope"), ("'nope'", "synth", "train_vae", "pretrain@images")),
    "unknown-command": Mistake(("nope",), ("'nope'",)),
    "qc-missing-input": Mistake(("qc", "{tmp}/no-clips", "{tmp}/out"), ("CLIPS_DIR", "{tmp}/no-clips")),
    "ingest-missing-source": Mistake(("ingest", "{tmp}/no-videos", "{tmp}/out"), ("{tmp}/no-videos", "does not exist", "s3://")),
    "pretrain-unknown-stage": Mistake(
        ("pretrain", "{tmp}/empty", "{tmp}/out", "--stage", "nope"), ("'nope'", "images", "short_video", "long_video")),
    "evaluate-unknown-model": Mistake(("evaluate", "{tmp}/no-release", "{tmp}/out"), ("{tmp}/no-release", "release folder", "models:/")),
    "evaluate-missing-prompts": Mistake(
        ("evaluate", "{tmp}/empty", "{tmp}/out", "--prompts", "{tmp}/no.jsonl"), ("--prompts", "{tmp}/no.jsonl", "does not exist")),
    "evaluate-not-a-latent-set": Mistake(
        ("evaluate", "{tmp}/empty", "{tmp}/out", "--prompts", "{tmp}/bad.yaml", "--latents", "{tmp}/empty"),
        ("--latents", "not a latent set")),
    "preference-data-missing-release": Mistake(
        ("preference-data", "{tmp}/no-release", "{tmp}/out"), ("{tmp}/no-release", "release folder", "models:/")),
    "preference-data-missing-labels": Mistake(
        ("preference-data", "models:/mugv-dit@candidate", "{tmp}/out", "--labels", "{tmp}/no-labels.csv"),
        ("--labels", "{tmp}/no-labels.csv", "does not exist")),
    "promote-unknown-model": Mistake(("promote", "--model", "no-such-model"), ("'no-such-model'", "mugv-dit")),
    "promote-unevaluated": Mistake(("promote",), ("candidate version 1", "no evaluation", "mugv evaluate models:/mugv-dit/1")),
    "promote-no-candidate": Mistake(
        ("promote", "--params", "{tmp}/no-candidate.yaml"), ("no alias 'next'", "@candidate (version 1)", "no candidate")),
    "rollback-no-champion": Mistake(("rollback",), ("no alias 'champion'", "nothing to roll back")),
    "encode-missing-text-encoder": Mistake(
        ("encode", "{tmp}/empty", "{tmp}/empty", "{tmp}/empty", "{tmp}/out", "--params", "{tmp}/no-t5.yaml"),
        ("encode.text.path", "{tmp}/no-t5", "not a local model folder")),
    "params-missing": Mistake(("synth", "{tmp}/out", "--params", "{tmp}/no-params.yaml"), ("{tmp}/no-params.yaml", "does not exist")),
    "params-not-yaml": Mistake(("synth", "{tmp}/out", "--params", "{tmp}/bad.yaml"), ("{tmp}/bad.yaml", "not valid YAML", "line 2")),
    "params-invalid": Mistake(
        ("synth", "{tmp}/out", "--params", "{tmp}/invalid.yaml"), ("synth.bogus", "qc.nope", "Extra inputs")),
}


def _registry(tmp: Path) -> str:
    """A SQLite MLflow store with registered model mugv-dit, version 1 under alias `candidate`; its URI."""
    import mlflow

    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    (tmp / "release").mkdir()
    client.create_registered_model("mugv-dit")
    client.create_model_version("mugv-dit", source=str(tmp / "release"))
    client.set_registered_model_alias("mugv-dit", "candidate", "1")
    return uri


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every mistake run (a few processes at a time, the registry built meanwhile): its exit status and output."""
    tmp = tmp_path_factory.mktemp("mistakes")
    (tmp / "empty").mkdir()
    (tmp / "bad.yaml").write_text("synth: [\n")
    (tmp / "invalid.yaml").write_text("synth:\n  bogus: 1\nqc:\n  nope: 2\n")
    (tmp / "no-candidate.yaml").write_text(  # the project's params, another candidate alias
        (ROOT / "params.yaml").read_text().replace("candidate_alias: candidate", "candidate_alias: next"))
    (tmp / "no-t5.yaml").write_text(  # the project's params, a T5 text encoder in a folder that does not exist
        (ROOT / "params.yaml").read_text().replace("text: {name: minilm, path: null,", f"text: {{name: t5, path: {tmp}/no-t5,"))
    env = {**os.environ, "MUGV_CACHE_DIR": str(tmp / "cache"), "COLUMNS": "80"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def run(mistake: Mistake, run_env: dict) -> subprocess.CompletedProcess:
        args = [a.format(tmp=tmp) for a in mistake.args]
        return subprocess.run([sys.executable, "-m", "mugv.cli", *args], cwd=ROOT, env=run_env, capture_output=True,
                              text=True, timeout=120)

    needs_registry = {name for name, m in MISTAKES.items()
                      if any(a.startswith("models:/") for a in m.args) or m.args[0] in ("promote", "rollback")}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, m, env) for name, m in MISTAKES.items() if name not in needs_registry}
        registry_env = {**env, "MLFLOW_TRACKING_URI": _registry(tmp)}
        futures |= {name: pool.submit(run, MISTAKES[name], registry_env) for name in needs_registry}
        return {name: (future.result(), tmp) for name, future in futures.items()}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_mistake_gets_one_line_naming_it_and_what_exists(name, outcomes):
    result, tmp = outcomes[name]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and lines[0] in result.stderr
    for expected in MISTAKES[name].expected:
        assert expected.format(tmp=tmp) in lines[0], lines[0]
