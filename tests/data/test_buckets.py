"""Bucket assignment (no upscale, nearest aspect, frame counts) and the Great Expectations bucket gate."""

import pandas as pd
import pytest
from pydantic import ValidationError

from mugv.data.buckets import Bucket, assign, crop_for, crop_fraction
from mugv.latents.config import MUGV_720P, BucketConfig
from mugv.data.expectations_buckets import BucketCheckConfig, BucketCheckError, check_buckets, require_buckets


@pytest.fixture
def small() -> BucketConfig:
    return BucketConfig()


def test_exact_fit_and_frame_count(small):
    a = assign(96, 128, 20, small)
    assert (a.resolution, a.height, a.width, a.frames) == ("128p", 96, 128, 17)
    assert assign(96, 128, 16, small).frames == 9
    assert assign(96, 128, 17, small).frames == 17


def test_never_upscales(small):
    # 100x100 is smaller than 112x112 (the square 128p bucket): it drops to the 64p square bucket
    a = assign(100, 100, 20, small)
    assert (a.resolution, a.height, a.width) == ("64p", 64, 64)
    for h, w in [(100, 100), (96, 160), (130, 90), (200, 200)]:
        b = assign(h, w, 20, small)
        assert b.ok and b.height <= h and b.width <= w


def test_nearest_aspect_in_highest_resolution(small):
    assert (assign(96, 160, 20, small).height, assign(96, 160, 20, small).width) == (80, 144)
    assert (assign(256, 256, 9, small).height, assign(256, 256, 9, small).width) == (112, 112)
    assert (assign(160, 96, 9, small).height, assign(160, 96, 9, small).width) == (144, 80)
    mugv = BucketConfig(resolutions={"720p": MUGV_720P}, frames=[1, 105])
    a = assign(1080, 1920, 200, mugv)
    assert (a.height, a.width, a.frames) == (720, 1280, 105)
    assert (assign(1440, 1080, 105, mugv).height, assign(1440, 1080, 105, mugv).width) == (1108, 832)


def test_unassigned_reasons(small):
    assert "too short" in assign(96, 128, 8, small).reason
    assert "too small" in assign(32, 32, 20, small).reason
    assert "aspect" in assign(60, 600, 20, small).reason
    assert assign(96, 128, 8, small, video=False).frames == 1  # too short for video, fine as an image
    no_images = BucketConfig(frames=[9, 17])
    assert "no image bucket" in assign(96, 128, 20, no_images, video=False).reason


def test_crop_geometry():
    c = crop_for(96, 160, 80, 144)
    assert (c.resize_h, c.resize_w, c.top, c.left, c.height, c.width) == (86, 144, 3, 0, 80, 144)
    assert crop_for(96, 160, 112, 112) is None
    assert crop_fraction(96, 128, 96, 128) == 0.0
    assert crop_fraction(100, 100, 50, 100) == pytest.approx(0.5)


def test_latent_shapes_follow_t_mod_8_rule():
    assert Bucket("x", 96, 128, 17).latent_shape((8, 8, 8)) == (3, 12, 16)
    assert Bucket("x", 96, 128, 9).latent_shape((8, 8, 8)) == (2, 12, 16)
    assert Bucket("x", 720, 1280, 105).latent_shape((8, 8, 8)) == (14, 90, 160)
    assert Bucket("x", 96, 128, 1).latent_shape((8, 8, 8)) == (1, 12, 16)
    cfg = BucketConfig()
    assert Bucket("x", 96, 128, 17).resolvable(cfg)
    assert not Bucket("x", 100, 128, 17).resolvable(cfg)
    assert not Bucket("x", 96, 128, 16).resolvable(cfg)


def test_config_rejects_nonsense():
    with pytest.raises(ValidationError):
        BucketConfig(frames=[])
    with pytest.raises(ValidationError):
        BucketConfig(resolutions={"a": [(0, 16)]})
    with pytest.raises(ValidationError):
        BucketConfig(unknown=1)


def _plan(n_ok: int, n_bad: int, bucket_names=("128p_96x128_f17",), buckets_ok=True):
    buckets = pd.DataFrame({"bucket": list(bucket_names), "resolvable": [buckets_ok] * len(bucket_names)})
    clips = pd.DataFrame(
        {
            "clip_id": [f"c{i}" for i in range(n_ok + n_bad)],
            "bucket": [bucket_names[i % len(bucket_names)] for i in range(n_ok)] + [None] * n_bad,
            "reason": [None] * n_ok + ["too short: 5 frames < 9"] * n_bad,
        }
    )
    samples = clips[clips["bucket"].notna()][["bucket"]]
    return buckets, clips, samples


def test_bucket_gate_passes_a_good_plan():
    result = check_buckets(*_plan(6, 1), BucketCheckConfig(min_assigned=4, max_unassigned_share=0.2, min_per_bucket=2))
    assert result.success and result.failures == [] and result.checked == 4


def test_bucket_gate_names_each_problem():
    cfg = BucketCheckConfig(min_assigned=10, max_unassigned_share=0.2, min_per_bucket=3)
    plan = _plan(3, 3, bucket_names=("128p_96x128_f17", "64p_48x64_f9"), buckets_ok=False)
    with pytest.raises(BucketCheckError) as err:
        require_buckets(*plan, cfg)
    msg = str(err.value)
    assert "not resolvable" in msg and "128p_96x128_f17" in msg
    assert "50% of 6 kept clips fit no bucket" in msg and "too short" in msg
    assert "only 3 clips assigned" in msg
    assert "64p_48x64_f9 (1)" in msg


def test_bucket_gate_fails_when_nothing_is_assigned():
    with pytest.raises(BucketCheckError, match="only 0 clips assigned"):
        require_buckets(*_plan(0, 4), BucketCheckConfig(min_assigned=1, max_unassigned_share=1.0))
