"""Rewards by name; the synthetic-grammar reward: near 1 on ground truth (also after H.264), low on wrong captions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mugv.data.config import SynthConfig
from mugv.data.synth import caption_for, plan_videos, render_frames
from mugv.data.video_io import read_frames, write_video
from mugv.eval import reward as reward_module
from mugv.eval.reward import Reward, get_reward, parse_caption, register_reward, temporal_flickering

COMPONENTS = ("background", "shape_colour", "motion", "flicker")


def first_shots(cfg: SynthConfig) -> list[tuple[np.ndarray, str, int]]:
    """(frames of the first shot [T, H, W, 3], its caption, fps) of each planned video."""
    clips = []
    for plan in plan_videos(cfg):
        shot = plan.shots[0]
        clips.append((np.stack(render_frames(plan)[shot.start_frame : shot.end_frame]), shot.caption, plan.fps))
    return clips


@pytest.fixture(scope="module")
def clips() -> list[tuple[np.ndarray, str, int]]:
    return first_shots(SynthConfig(num_videos=20, poor_fraction=0, sizes=[[64, 64], [96, 64]]))


@pytest.fixture(scope="module")
def reward() -> Reward:
    return get_reward("synthetic_grammar")


def means(scores: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}


def assert_near_one(scores: list[dict[str, float]]) -> None:
    m = means(scores)
    assert m["reward"] >= 0.9, m
    assert all(m[k] >= 0.85 for k in COMPONENTS), m


def test_ground_truth_scores_near_one(clips, reward):
    scores = [reward.score(video, caption) for video, caption, _ in clips]
    assert all(set(s) == {*COMPONENTS, "reward"} for s in scores)
    assert all(0 <= s[k] <= 1 for s in scores for k in s)
    assert_near_one(scores)


def test_ground_truth_scores_near_one_after_h264(tmp_path, reward):
    clips = first_shots(SynthConfig(num_videos=12, poor_fraction=0, sizes=[[64, 64]], seed=1))
    scores = []
    for i, (video, caption, fps) in enumerate(clips):
        write_video(tmp_path / f"{i}.mp4", video, fps)
        decoded = read_frames(tmp_path / f"{i}.mp4")
        assert decoded.shape == video.shape
        scores.append(reward.score(decoded, caption))
    assert_near_one(scores)


def test_shuffled_captions_score_low(clips, reward):
    true_scores, wrong_scores = [], []
    for i, (video, caption, _) in enumerate(clips):
        truth = parse_caption(caption)
        others = [clips[(i + j) % len(clips)][1] for j in range(1, len(clips))]
        wrong = next(
            c
            for c in others
            if (p := parse_caption(c)).background_colour != truth.background_colour
            and p.colour != truth.colour
            and p.direction != truth.direction
        )
        true_scores.append(reward.score(video, caption))
        wrong_scores.append(reward.score(video, wrong))
    assert means(wrong_scores)["background"] <= 0.2
    assert means(wrong_scores)["reward"] <= means(true_scores)["reward"] - 0.4


def test_each_wrong_attribute_fails_its_component(clips, reward):
    video, caption, _ = next(c for c in clips if parse_caption(c[1]).direction != "none")
    p = parse_caption(caption)
    background = f"{p.background_colour} {p.texture}"
    other_bg = next(c for c in ("blue", "yellow", "green") if c not in (p.background_colour, p.colour))
    other_colour = next(c for c in ("white", "black", "red") if c not in (p.background_colour, p.colour))
    reverse = {
        "from left to right": "from right to left",
        "from right to left": "from left to right",
        "from top to bottom": "from bottom to top",
        "from bottom to top": "from top to bottom",
        "diagonally from top left to bottom right": "diagonally from bottom right to top left",
        "diagonally from bottom right to top left": "diagonally from top left to bottom right",
        "diagonally from bottom left to top right": "diagonally from top right to bottom left",
        "diagonally from top right to bottom left": "diagonally from bottom left to top right",
    }[p.direction]
    wrong_bg = reward.score(video, caption_for(p.shape, p.colour, f"{other_bg} {p.texture}", p.direction, p.speed))
    wrong_colour = reward.score(video, caption_for(p.shape, other_colour, background, p.direction, p.speed))
    wrong_direction = reward.score(video, caption_for(p.shape, p.colour, background, reverse, p.speed))
    assert (wrong_bg["background"], wrong_bg["shape_colour"], wrong_bg["motion"]) == (0, 1, 1)
    assert (wrong_colour["background"], wrong_colour["shape_colour"]) == (1, 0)
    assert (wrong_direction["background"], wrong_direction["shape_colour"], wrong_direction["motion"]) == (1, 1, 0)


def test_grey_and_noise_videos_score_low(clips, reward):
    caption = next(c for _, c, _ in clips if parse_caption(c).background_colour != "grey")
    grey = np.full((16, 64, 64, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    for video in (grey, noise):
        s = reward.score(video, caption)
        assert s["shape_colour"] == 0 and s["motion"] == 0 and s["background"] <= 0.3, s
        assert s["reward"] <= 0.35, s


def test_a_still_shape_does_not_move():
    plans = plan_videos(SynthConfig(num_videos=8, poor_fraction=1.0, sizes=[[64, 64]]))
    plan = next(p for p in plans if p.kind == "static")
    shot = plan.shots[0]
    video = np.stack(render_frames(plan)[shot.start_frame : shot.end_frame])
    moving = caption_for(shot.shape, shot.colour, shot.background, "from left to right", "slowly")
    reward = get_reward("synthetic_grammar")
    assert reward.score(video, shot.caption)["motion"] == 1
    assert reward.score(video, moving)["motion"] == 0


def test_flickering_lowers_the_flicker_score(clips, reward):
    video, caption, _ = clips[0]
    flickering = video.copy()
    flickering[1::2] = (flickering[1::2] * 0.6).astype(np.uint8)
    assert reward.score(flickering, caption)["flicker"] < reward.score(video, caption)["flicker"] - 0.1


def test_temporal_flickering_is_vbench_formula():
    video = np.zeros((3, 16, 16, 3), np.uint8)
    video[1] = 51  # consecutive-frame MAEs 51 and 51
    assert temporal_flickering(video) == pytest.approx((255 - 51) / 255)
    assert math.isnan(temporal_flickering(video[:1]))


def test_one_frame_has_no_motion_or_flicker(clips, reward):
    video, caption, _ = clips[0]
    s = reward.score(video[:1], caption)
    assert math.isnan(s["motion"]) and math.isnan(s["flicker"])
    assert s["reward"] == pytest.approx((s["background"] + s["shape_colour"]) / 2)
    assert s["reward"] == 1


def test_deterministic(clips, reward):
    video, caption, _ = clips[3]
    again = get_reward("synthetic_grammar").score(video.copy(), caption)
    assert reward.score(video, caption) == reward.score(video, caption) == again


def test_captions_parse_back(clips):
    for _, caption, _ in clips:
        p = parse_caption(caption)
        assert caption_for(p.shape, p.colour, f"{p.background_colour} {p.texture}", p.direction, p.speed) == caption


@pytest.mark.parametrize(
    "caption",
    [
        "a red circle dances on a blue striped background",
        "a orange circle stays still on a blue striped background",  # wrong article
        "a red circle stays still on a black striped background",  # black is no background colour
        "a red circle moves slowly sideways on a blue striped background",
        "",
    ],
)
def test_a_caption_not_of_the_grammar_is_named(caption, reward):
    with pytest.raises(ValueError, match="not a caption of the synthetic grammar") as info:
        reward.score(np.zeros((2, 32, 32, 3), np.uint8), caption)
    assert repr(caption) in str(info.value)


def test_unknown_reward_lists_known_names():
    with pytest.raises(ValueError, match="unknown reward 'nope'; known: .*synthetic_grammar"):
        get_reward("nope")


@pytest.mark.parametrize(
    "video",
    [
        np.zeros((2, 32, 32, 3), np.float32),
        np.zeros((2, 8, 32, 3), np.uint8),
        np.zeros((0, 32, 32, 3), np.uint8),
        np.zeros((32, 32, 3), np.uint8),
    ],
)
def test_a_bad_video_is_refused(video, reward):
    with pytest.raises(ValueError, match="video"):
        reward.score(video, "a red circle stays still on a blue striped background")


def test_rewards_plug_in_by_name():
    @register_reward("test_constant")
    class Constant(Reward):
        components = ("one",)

        def __init__(self, value: float = 1.0) -> None:
            self.value = value

        def score(self, video: np.ndarray, caption: str) -> dict[str, float]:
            return {"one": self.value, "reward": self.value}

    try:
        r = get_reward("test_constant", value=0.5)
        assert r.name == "test_constant" and r.score(np.zeros((1, 16, 16, 3), np.uint8), "")["reward"] == 0.5
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_constant")(Constant)
    finally:
        reward_module._REWARDS.pop("test_constant")
