"""Per-clip scores on constructed frames, pHash dedup distances and the LAION loader on tiny weights."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.support.qc_media import texture, tiny_laion_folder

from mugv.data.aesthetic import HeuristicAestheticScorer, LaionAestheticScorer, build_aesthetic_scorer, colourfulness
from mugv.data.quality import (
    brightness,
    flow_magnitude,
    parse_phash,
    phash,
    phash_distances,
    phash_string,
    sample_positions,
    score_clip,
    sharpness,
)
from mugv.data.video_io import write_video


def test_blur_lowers_sharpness():
    frame = texture()
    blurred = cv2.GaussianBlur(frame, (0, 0), 3)
    assert sharpness(blurred) < 0.2 * sharpness(frame)


def test_dark_is_darker_than_bright():
    frame = texture()
    dark = (frame * 0.15).astype(np.uint8)
    assert brightness(dark) < 40 < brightness(frame)
    assert brightness(np.zeros_like(frame)) == 0.0


@pytest.mark.parametrize("shift", [2, 5])
def test_flow_of_a_shifted_frame_is_the_shift(shift):
    big = texture(96, 160, seed=1)
    first, second = big[:, 16:144], big[:, 16 - shift : 144 - shift]
    mag = flow_magnitude(first, second)
    assert mag == pytest.approx(shift, rel=0.25)
    assert flow_magnitude(first, first) < 0.05


def test_colourfulness_orders_grey_below_colour():
    grey = np.repeat(texture()[..., :1], 3, axis=-1)
    assert colourfulness(grey) == pytest.approx(0.0, abs=1e-9)
    assert colourfulness(texture()) > 30


def test_heuristic_aesthetic_prefers_sharp_well_exposed_colour():
    scorer = HeuristicAestheticScorer()
    good = texture()
    dark = (good * 0.1).astype(np.uint8)
    flat = np.full_like(good, 128)
    blurred = cv2.GaussianBlur(good, (0, 0), 4)
    s_good, s_dark, s_flat, s_blur = scorer.score([good, dark, flat, blurred])
    assert 0 <= min(s_dark, s_flat, s_blur) < s_good <= 10
    assert s_flat < 4 < s_good
    assert isinstance(build_aesthetic_scorer("heuristic", None), HeuristicAestheticScorer)


def test_phash_finds_near_duplicates_not_different_frames():
    a = [texture(seed=s) for s in (0, 1, 2)]
    near = [np.clip(f.astype(int) + 6, 0, 255).astype(np.uint8) for f in a]  # brightened re-encode
    near = [cv2.GaussianBlur(f, (3, 3), 0) for f in near]
    other = [texture(seed=s) for s in (10, 11, 12)]
    ha, hn, ho = (parse_phash(phash_string(x), 3) for x in (a, near, other))
    assert phash_string(a).count(":") == 2
    near_d, other_d = phash_distances(ha, np.stack([hn, ho]))
    assert near_d <= 6 < 16 < other_d
    # the packed uint64 Hamming distance is imagehash's own, keyframe by keyframe
    assert other_d == pytest.approx(np.mean([phash(x) - phash(y) for x, y in zip(a, other)]))


def test_short_clips_repeat_their_last_keyframe_hash():
    assert parse_phash("00000000000000ff", 3).tolist() == [255, 255, 255]
    assert parse_phash("0000000000000001:0000000000000003", 3).tolist() == [1, 3, 3]
    with pytest.raises(ValueError):
        parse_phash("", 3)


def test_sample_positions_spread_and_leave_a_successor():
    assert sample_positions(30, 3) == [0, 14, 28]
    assert sample_positions(1, 3) == [0]
    assert sample_positions(2, 3) == [0]


def test_score_clip_reads_a_video_and_reports_unreadable(tmp_path):
    big = texture(96, 200, seed=3)
    frames = [big[:, 3 * t : 3 * t + 128] for t in range(12)]
    path = tmp_path / "pan.mp4"
    write_video(path, frames, fps=12)
    s = score_clip("pan", path, 12, 3, HeuristicAestheticScorer())
    assert s.error is None
    assert s.motion == pytest.approx(3, rel=0.3)
    assert s.sharpness > 100 and 60 < s.brightness < 200 and s.phash.count(":") == 2

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    bad = score_clip("junk", junk, 12, 3, HeuristicAestheticScorer())
    assert bad.error.startswith("unreadable:") and np.isnan(bad.sharpness)
    missing = score_clip("gone", tmp_path / "gone.mp4", 12, 3, HeuristicAestheticScorer())
    assert missing.error.startswith("unreadable:") and "missing" in missing.error


def test_laion_scorer_loads_tiny_random_weights(tmp_path):
    import torch

    mlp = tiny_laion_folder(tmp_path)
    scorer = build_aesthetic_scorer("laion", str(tmp_path))
    assert isinstance(scorer, LaionAestheticScorer)
    frames = [texture(seed=s) for s in range(3)]
    scores = scorer.score(frames)
    assert len(scores) == 3 and all(np.isfinite(scores))
    # the MLP in the scorer is the one saved: same output on the same normalised embedding
    emb = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    with torch.inference_mode():
        assert torch.allclose(scorer.mlp(emb), mlp.eval()(emb))
    # batching does not change a frame's score
    scorer.batch_size = 1
    assert scorer.score(frames) == pytest.approx(scores, abs=1e-5)


def test_laion_scorer_rejects_missing_or_mismatched_weights(tmp_path):
    with pytest.raises(ValueError, match="aesthetic_weights"):
        build_aesthetic_scorer("laion", None)
    with pytest.raises(FileNotFoundError, match="clip"):
        LaionAestheticScorer(tmp_path)
    tiny_laion_folder(tmp_path, projection_dim=16, mlp_dim=20)
    with pytest.raises(ValueError, match="20-d"):
        LaionAestheticScorer(tmp_path)
