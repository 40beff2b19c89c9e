"""Reward-labelled preference data: training prompts never held out, K scored samples per prompt, pairs and labels."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mugv.data.config import SynthConfig
from mugv.data.synth import caption_for, heldout_prompts
from mugv.data.video_io import read_frames
from mugv.eval.reward import get_reward
from mugv.inference.generate import VideoGenerator
from mugv.preference.reward_labels import (
    NoTrainingPrompts,
    _combination,
    label_with_reward,
    reward_pairs,
    threshold_labels,
    training_prompts,
)
from tests.preference.tiny_release import make_release, set_captions

HELDOUT = heldout_prompts(SynthConfig())[:2]
HELD = HELDOUT[0]
# the same held-out combination (shape, colour, background colour) with another motion and texture: also never used
SAME_COMBINATION = caption_for(HELD["shape"], HELD["colour"], f"{HELD['background'].split()[0]} noise", "none", "none")
TRAINING = [
    "a red circle moves quickly from left to right on a blue striped background",
    "a yellow square moves slowly from top to bottom on a green noisy background",
    "a white triangle stays still on a purple gradient background",
]
SIZE = dict(frames=9, height=32, width=32, fps=8.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(release, latent set whose captions are TRAINING + held-out ones + one off the grammar, heldout.jsonl)."""
    held_combinations = {(p["shape"], p["colour"], p["background"].split()[0]) for p in HELDOUT}
    assert not {_combination(c) for c in TRAINING} & held_combinations and None not in map(_combination, TRAINING)
    root = tmp_path_factory.mktemp("reward")
    release = make_release(root)
    set_captions(root / "latents", [*TRAINING, HELD["caption"], SAME_COMBINATION, "theme 0"])
    heldout = root / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(p) + "\n" for p in HELDOUT))
    return release, root / "latents", heldout


@pytest.fixture(scope="module")
def generator(tiny):
    return VideoGenerator(tiny[0])


def test_training_prompts_are_readable_captions_never_held_out(tiny):
    _, latents, heldout = tiny
    reward = get_reward("synthetic_grammar")
    chosen = training_prompts(latents, heldout, reward, count=10, seed=0)
    assert sorted(chosen) == sorted(TRAINING)  # not the held-out caption, its combination, nor "theme 0"
    two = training_prompts(latents, heldout, reward, count=2, seed=0)
    assert two == chosen[:2] and two == training_prompts(latents, heldout, reward, count=2, seed=0)
    orders = {tuple(training_prompts(latents, heldout, reward, count=3, seed=s)) for s in range(8)}
    assert len(orders) > 1  # the seed chooses


def test_no_training_prompt_when_every_caption_is_held_out(tiny, tmp_path):
    _, latents, _ = tiny
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"caption": c}) + "\n" for c in TRAINING))
    only_held = tmp_path / "latents"
    shutil.copytree(latents, only_held)
    set_captions(only_held, [TRAINING[0], "theme 1"])
    with pytest.raises(NoTrainingPrompts, match="no caption"):
        training_prompts(only_held, heldout, get_reward("synthetic_grammar"), count=4, seed=0)


def test_pairs_keep_a_margin_within_a_prompt_and_the_cap_keeps_the_largest():
    samples = [{"index": i, "prompt": p, "reward": r} for i, (p, r) in
               enumerate([("x", 0.9), ("x", 0.5), ("x", 0.55), ("x", 0.9), ("y", 0.2), ("y", None), ("y", 0.8)])]
    pairs = reward_pairs(samples, min_margin=0.1, max_per_prompt=None)
    found = {(p["winner"], p["loser"]) for p in pairs}
    assert found == {(0, 1), (0, 2), (3, 1), (3, 2), (6, 4)}  # no tie (0, 3), no 0.05 margin (2, 1), no unscored 5
    assert all(p["margin"] == pytest.approx(samples[p["winner"]]["reward"] - samples[p["loser"]]["reward"])
               for p in pairs)
    capped = reward_pairs(samples, min_margin=0.1, max_per_prompt=1)
    assert [(p["winner"], p["loser"], p["prompt"]) for p in capped] == [(0, 1, "x"), (6, 4, "y")]


def test_labels_follow_the_thresholds_and_leave_the_middle_unlabelled():
    samples = [{"index": i, "reward": r} for i, r in enumerate([0.8, 0.75, 0.6, 0.5, 0.1, None])]
    labels = threshold_labels(samples, desirable_min=0.75, undesirable_max=0.5)
    assert [(label["index"], label["desirable"]) for label in labels] == [(0, True), (1, True), (3, False), (4, False)]


def test_reward_labelling_a_tiny_release_is_consistent_and_deterministic(tiny, generator, tmp_path):
    _, latents, heldout = tiny
    reward = get_reward("synthetic_grammar")
    prompts = training_prompts(latents, heldout, reward, count=2, seed=0)
    settings = dict(min_margin=0.0, max_pairs_per_prompt=None, desirable_min=0.7, undesirable_max=0.6,
                    samples_per_prompt=2, seed=3, steps=2, cfg=4.0, lineage={"model": "m", "release_sha": "s"},
                    progress=False, **SIZE)
    parts = label_with_reward(generator, reward, prompts, tmp_path / "a", **settings)

    assert len(parts.samples) == 4 and [s["index"] for s in parts.samples] == [0, 1, 2, 3]
    assert {s["prompt"] for s in parts.samples} == set(prompts) and not {s["prompt"] for s in parts.samples} & {
        p["caption"] for p in HELDOUT}
    assert len({s["seed"] for s in parts.samples}) == 4
    for s in parts.samples:
        assert s["source"] == "reward" and s["sampler"] == {"steps": 2, "cfg": 4.0} and s["model"] == "m"
        video = read_frames(tmp_path / "a" / s["video"])
        assert video.shape == (9, 32, 32, 3)
        assert s["reward"] == pytest.approx(reward.score(video, s["prompt"])["reward"])  # scored as written
    assert parts.x0[0].shape == (24, 2, 4, 4) and parts.y[0].shape == (1, 16, 384) and parts.mask[0].shape == (16,)
    assert parts.fps == [8.0] * 4

    rewards = [s["reward"] for s in parts.samples]
    assert parts.pairs and parts.labels  # the checks below are not vacuous
    for pair in parts.pairs:
        winner, loser = parts.samples[pair["winner"]], parts.samples[pair["loser"]]
        assert winner["prompt"] == loser["prompt"] == pair["prompt"] and winner["reward"] > loser["reward"]
    expected_pairs = sum(1 for i in range(4) for j in range(4) if parts.samples[i]["prompt"] ==
                         parts.samples[j]["prompt"] and rewards[i] > rewards[j])
    assert len(parts.pairs) == expected_pairs
    for label in parts.labels:
        reward_of = rewards[label["index"]]
        assert (reward_of >= 0.7) if label["desirable"] else (reward_of <= 0.6)
    assert {label["index"] for label in parts.labels} == {i for i, r in enumerate(rewards) if r >= 0.7 or r <= 0.6}

    again = label_with_reward(generator, reward, prompts, tmp_path / "b", **settings)
    assert [s["reward"] for s in again.samples] == rewards and again.pairs == parts.pairs
    assert all(torch.equal(a, b) for a, b in zip(again.x0, parts.x0))
    other = label_with_reward(generator, reward, prompts, tmp_path / "c", **{**settings, "seed": 4})
    assert [s["seed"] for s in other.samples] != [s["seed"] for s in parts.samples]
