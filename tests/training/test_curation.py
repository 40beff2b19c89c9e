"""SFT curation: clips pass the qc thresholds, the best share by aesthetic is kept, too few is an error."""

import pandas as pd
import pytest

from mugv.training.curation import CurationConfig, curated_clip_ids, curated_sample_ids


def _qc() -> pd.DataFrame:
    return pd.DataFrame({
        "clip_id": ["a", "b", "c", "d", "e"],
        "keep": [True, True, True, True, False],
        "aesthetic": [7.0, 5.0, 8.0, 6.9, 9.0],
        "sharpness": [500.0, 600.0, 100.0, 400.0, 900.0],
        "motion": [0.5, 0.5, 0.5, 0.05, 0.5],
    })


def test_thresholds_then_top_fraction_best_aesthetic_first():
    cfg = CurationConfig(aesthetic_min=6.0, sharpness_min=300.0, motion_min=None, top_fraction=1.0, min_clips=1)
    assert curated_clip_ids(_qc(), cfg) == ["a", "d"]  # e was rejected by qc, b too ugly, c too blurred
    cfg = cfg.model_copy(update={"motion_min": 0.1})
    assert curated_clip_ids(_qc(), cfg) == ["a"]
    cfg = CurationConfig(aesthetic_min=None, sharpness_min=None, motion_min=None, top_fraction=0.5, min_clips=1)
    assert curated_clip_ids(_qc(), cfg) == ["c", "a"]


def test_too_few_clips_names_the_section():
    cfg = CurationConfig(aesthetic_min=10.0, min_clips=2)
    with pytest.raises(ValueError, match="sft.curation keeps 0 of 4 clips"):
        curated_clip_ids(_qc(), cfg)


def test_samples_of_curated_clips_cover_every_bucket():
    index = pd.DataFrame({"sample_id": ["a-i0", "a-v0", "b-v0", "d-i0"], "clip_id": ["a", "a", "b", "d"]})
    assert curated_sample_ids(index, ["a", "d"]) == {"a-i0", "a-v0", "d-i0"}
