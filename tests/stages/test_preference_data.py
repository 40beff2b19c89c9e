"""The preference_data stage: reward samples and human labels in one published set, its loader, metrics and CLI."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from mugv import tracking
from mugv.data.config import SynthConfig
from mugv.data.synth import heldout_prompts
from mugv.data.video_io import write_video
from mugv.diffusion.config import SamplerConfig
from mugv.preference.table import (
    PAIRS,
    SAMPLES,
    PreferenceParts,
    PreferenceSet,
    PreferenceSetError,
    write_preference_set,
)
from mugv.stages import preference_data
from tests.preference.tiny_release import make_release, set_captions

TRAINING = [
    "a red circle moves quickly from left to right on a blue striped background",
    "a yellow square moves slowly from top to bottom on a green noisy background",
]
SMALL = dict(prompts=2, samples_per_prompt=2, frames=9, height=32, width=32, sampler_steps=2, min_margin=0.0,
             desirable_min=0.7, undesirable_max=0.6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(release, latent set captioned with TRAINING and a held-out prompt, heldout.jsonl, a pairwise CSV)."""
    root = tmp_path_factory.mktemp("preference")
    release = make_release(root)
    heldout = heldout_prompts(SynthConfig())[:2]
    set_captions(root / "latents", [*TRAINING, heldout[0]["caption"]])
    (root / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in heldout))
    (root / "clips").mkdir()
    for name, level in (("x", 40), ("y", 200)):
        write_video(root / "clips" / f"{name}.mp4", list(np.full((9, 32, 32, 3), level, np.uint8)), 8.0)
    labels = root / "pairs.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows([["prompt", "video_a", "video_b", "choice"], [TRAINING[0], "clips/x.mp4",
                                 "clips/y.mp4", "b"], [TRAINING[0], "clips/x.mp4", "clips/gone.mp4", "a"]])
    return release, root / "latents", root / "heldout.jsonl", labels


def test_the_stage_publishes_one_consistent_set_the_loader_reads(tiny, local_tracking, tmp_path):
    release, latents, heldout, labels = tiny
    out, metrics_path = tmp_path / "data" / "preference", tmp_path / "metrics" / "preference_data.json"
    cfg = preference_data.Config(**SMALL, source="both", human_labels=[str(labels)])
    summary = preference_data.run(release, latents, heldout, out, cfg, SamplerConfig(steps=5), local_tracking,
                                  progress=False, metrics_path=metrics_path)

    loaded = PreferenceSet.load(out)
    assert len(loaded) == summary["samples"] == 6 and summary["samples_by_source"] == {"reward": 4, "human": 2}
    assert [s["source"] for s in loaded.samples] == ["reward"] * 4 + ["human"] * 2
    assert {s["prompt"] for s in loaded.samples} == set(TRAINING)  # never the held-out caption
    x0, y, mask, fps = (loaded.tensors[k] for k in ("x0", "y", "mask", "fps"))
    assert x0.shape == (6, 24, 2, 4, 4) and x0.dtype == torch.float32 and y.shape == (6, 1, 16, 384)
    assert mask.shape == (6, 16) and mask.dtype == torch.int64 and fps.tolist() == [8.0] * 6
    assert loaded.pairs.dtype == torch.int64 and loaded.pairs.shape == (summary["pairs"], 2)
    assert loaded.pairs.tolist() == [[p["winner"], p["loser"]] for p in loaded.pair_rows]
    human = {s["video"]: s["index"] for s in loaded.samples[4:]}
    assert [human["clips/y.mp4"], human["clips/x.mp4"]] in loaded.pairs.tolist()  # choice b: y over x
    assert loaded.labels == [(r["index"], r["desirable"]) for r in loaded.label_rows]
    assert summary["labels_desirable"] + summary["labels_undesirable"] == len(loaded.labels)
    assert [(r["row"], r["reason"].split(":")[0]) for r in loaded.rejected] == [(3, "missing video")]
    reward_sha = tracking.folder_fingerprint(release)
    assert all(s["release_sha"] == reward_sha and s["model"] == str(release) for s in loaded.samples)
    assert all(s["sampler"] == {"steps": 2, "cfg": 4.0} for s in loaded.samples[:4])  # sampler_steps wins
    assert all((out / s["video"]).is_file() for s in loaded.samples[:4])
    assert [p.name for p in out.parent.iterdir()] == ["preference"]  # no staging folder left

    committed = json.loads(metrics_path.read_text())
    assert committed["samples"] == 6 and committed["samples_from_human"] == 2 and committed["rejected"] == 1
    assert committed["reward_mean"] == pytest.approx(np.mean([s["reward"] for s in loaded.samples[:4]]),
                                                             rel=1e-5)
    assert summary["pairs_by_source"]["reward"] and committed["winner_reward_mean"] > committed["loser_reward_mean"]
    run = tracking._mlflow(local_tracking).search_runs(experiment_names=["t"], output_format="list")[0]
    assert run.data.metrics["pairs"] == summary["pairs"] and run.data.tags["mugv.release_sha"] == reward_sha

    # a rerun replaces the set; a run that fails leaves the published one as it was
    again = preference_data.run(release, latents, heldout, out, preference_data.Config(**SMALL), SamplerConfig(),
                                None, progress=False)
    assert again["samples"] == len(PreferenceSet.load(out)) == 4
    before = (out / SAMPLES).read_bytes()
    with pytest.raises(ValueError, match="unknown reward"):
        preference_data.run(release, latents, heldout, out, preference_data.Config(**SMALL, reward="nope"),
                            SamplerConfig(), None, progress=False)
    assert (out / SAMPLES).read_bytes() == before


def test_a_failure_while_writing_leaves_the_published_set(tiny, tmp_path, monkeypatch):
    release, latents, heldout, _ = tiny
    out = tmp_path / "preference"
    out.mkdir()
    (out / "old.txt").write_text("the previous set")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mugv.preference.reward_labels.sample_and_score", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        preference_data.run(release, latents, heldout, out, preference_data.Config(**SMALL), SamplerConfig(), None,
                            progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preference"] and (out / "old.txt").is_file()


def _small_set(folder) -> PreferenceParts:
    parts = PreferenceParts()
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        parts.add_sample({"prompt": f"p{i // 2}", "seed": i, "video": f"videos/{i}.mp4", "reward": 0.1 * i,
                          "components": {"motion": float("nan")}, "source": "reward"},
                         torch.randn(4, 2, 3, 3, generator=g), torch.randn(1, 5, 8, generator=g),
                         torch.tensor([1, 1, 0, 0, 0]), 8.0)
    parts.pairs = [{"winner": 1, "loser": 0, "margin": 0.1, "prompt": "p0", "source": "reward"}]
    parts.labels = [{"index": 2, "desirable": True, "source": "reward"}]
    write_preference_set(folder, parts)
    return parts


def test_the_loader_round_trips_and_names_what_is_wrong(tmp_path):
    folder = tmp_path / "set"
    parts = _small_set(folder)
    loaded = PreferenceSet.load(folder)
    assert torch.equal(loaded.tensors["x0"], torch.stack(parts.x0)) and torch.equal(loaded.tensors["y"], torch.stack(parts.y))
    assert loaded.pairs.tolist() == [[1, 0]] and loaded.labels == [(2, True)]
    assert loaded.samples[0]["components"] == {"motion": None}  # NaN is written as null: strict JSON
    assert loaded.summary["reward"]["winners"]["mean"] == pytest.approx(0.1) and len(loaded.fingerprint) == 64

    with pytest.raises(PreferenceSetError, match="does not exist"):
        PreferenceSet.load(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / PAIRS).write_text(json.dumps({"winner": 1, "loser": 7}) + "\n")
    with pytest.raises(PreferenceSetError, match=r"pairs.jsonl: row 1 pairs 1 over 7"):
        PreferenceSet.load(broken)
    (broken / PAIRS).unlink()
    with pytest.raises(PreferenceSetError, match="no pairs.jsonl"):
        PreferenceSet.load(broken)
    shutil.rmtree(broken)
    shutil.copytree(folder, broken)
    (broken / SAMPLES).write_text((folder / SAMPLES).read_text().splitlines()[0] + "\n")
    with pytest.raises(PreferenceSetError, match=r"does not match the 1 samples"):
        PreferenceSet.load(broken)


def test_the_cli_imports_label_files_given_with_labels(tiny, local_tracking, tmp_path):
    from typer.testing import CliRunner

    from mugv.cli import app

    release, _, heldout, labels = tiny
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preference_data": {**SMALL, "source": "human"}}))
    out = tmp_path / "preference"
    result = CliRunner().invoke(app, ["preference-data", str(release), str(out), "--heldout", str(heldout),
                                      "--labels", str(labels), "--params", str(params), "--quiet",
                                      "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert len(PreferenceSet.load(out)) == 2 and json.loads((tmp_path / "m.json").read_text())["pairs"] == 1

    params.write_text(yaml.safe_dump({"preference_data": SMALL}))  # source: reward
    result = CliRunner().invoke(app, ["preference-data", str(release), str(out), "--labels", str(labels),
                                      "--params", str(params)])
    assert result.exit_code == 2 and "source is 'reward'" in result.output
