"""qc's scores computed by ingest in its one decode pass: what qc reuses, what it decodes again, and that the verdicts hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mugv.config import Params
from mugv.data import quality
from mugv.data.names import CLIP_SCORES_TABLE, CLIPS_TABLE
from mugv.data.qc import decide
from mugv.data.quality import parse_phash
from mugv.stages import ingest, synth
from mugv.stages.qc import score_table

SCORES = ["sharpness", "motion", "aesthetic", "brightness"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, Params]:
    """16 default synthetic videos ingested as `mugv ingest` does it: scored under qc's settings."""
    root = tmp_path_factory.mktemp("scored")
    params = Params()
    params.synth.num_videos = 16
    synth.run(root / "synth", params.synth, progress=False)
    params.ingest.workers = 1
    report = ingest.run(str(root / "synth" / "videos"), root / "ingest", params.ingest, progress=False,
                        scoring=params.qc.scoring())
    assert report.clips_scored == report.clips_written > 16
    return root / "ingest", params


@pytest.fixture
def decode_counter(monkeypatch) -> list[str]:
    """The clip files qc decodes to score (qc runs in-process in these tests)."""
    decoded: list[str] = []
    real = quality.frames_at
    monkeypatch.setattr(quality, "frames_at", lambda path, wanted: decoded.append(Path(path).name) or real(path, wanted))
    return decoded


def _copy_without_scores(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    (dest / CLIP_SCORES_TABLE).unlink()
    return dest


def _clips(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / CLIPS_TABLE).sort_values("clip_id").reset_index(drop=True)


def test_ingest_scores_every_clip_it_writes_for_the_bytes_it_writes(ingested):
    out, params = ingested
    clips, scores = _clips(out), pd.read_parquet(out / CLIP_SCORES_TABLE)
    assert list(scores.clip_id) == list(clips.clip_id)
    assert list(scores.clip_sha256) == list(clips.clip_sha256)
    assert set(scores.scored_with) == {params.qc.scoring().label}
    assert np.isfinite(scores[SCORES].to_numpy()).all()


def test_qc_decodes_nothing_when_ingest_scored_the_clips(ingested, decode_counter):
    out, params = ingested
    params.qc.workers = 1
    scores = score_table(_clips(out), out, params.qc, progress=False)
    assert decode_counter == []
    stored = pd.read_parquet(out / CLIP_SCORES_TABLE)
    pd.testing.assert_frame_equal(scores[["clip_id", *SCORES, "phash"]], stored[["clip_id", *SCORES, "phash"]])
    assert scores["error"].isna().all()


def test_scores_from_the_written_frames_give_the_verdicts_of_scores_from_the_decoded_file(ingested, tmp_path):
    """Ingest scores the frames before H.264 (crf 18), qc the frames decoded from the clip: the same verdicts."""
    out, params = ingested
    params.qc.workers = 1
    clips = _clips(out)
    from_ingest = score_table(clips, out, params.qc, progress=False)
    bare = _copy_without_scores(out, tmp_path / "bare")
    from_file = score_table(clips, bare, params.qc, progress=False)
    # measured on the default 240 videos (343 clips, 175 of them copies of their source, which score exactly as their
    # file): brightness +0.5 on average (the YUV round trip of encoded clips), sharpness +2.8% (the encoder smooths),
    # motion and aesthetic within 1%; no verdict differs (before whole sources were copied: 1 of 343, at a threshold)
    np.testing.assert_allclose(from_ingest.brightness, from_file.brightness, atol=2.0)
    np.testing.assert_allclose(from_ingest.motion, from_file.motion, atol=0.2)
    np.testing.assert_allclose(from_ingest.aesthetic, from_file.aesthetic, atol=0.25)
    assert 0 <= (from_ingest.sharpness / from_file.sharpness - 1).mean() < 0.1
    for a, b in zip(from_ingest.phash, from_file.phash):
        bits = np.bitwise_count(np.bitwise_xor(parse_phash(a, 3), parse_phash(b, 3)))
        assert bits.mean() <= 6, (a, b)

    def verdicts(scores):
        table = pd.concat([clips, scores.drop(columns=["clip_id"])], axis=1)
        return list(decide(table, params.qc.thresholds, keyframes=params.qc.motion_pairs).reject_reason)

    assert verdicts(from_ingest) == verdicts(from_file)


def test_a_clip_changed_after_ingest_is_decoded_again_and_the_rest_are_not(ingested, tmp_path, decode_counter):
    out, params = ingested
    params.qc.workers = 1
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    clips = _clips(copy)
    broken, replaced = clips.path[0], clips.path[1]
    (copy / broken).write_bytes(b"not a video any more")
    shutil.copyfile(copy / clips.path[2], copy / replaced)  # a valid clip, but not the bytes that were scored
    scores = score_table(clips, copy, params.qc, progress=False)
    assert sorted(decode_counter) == sorted([Path(broken).name, Path(replaced).name])
    assert scores.error[0].startswith("unreadable:")
    decoded = quality.score_clip("x", copy / replaced, int(clips.num_frames[1]), params.qc.motion_pairs, quality.scorer_for(params.qc.scoring()))
    assert scores.loc[1, SCORES].tolist() == pytest.approx([getattr(decoded, k) for k in SCORES])


def test_scores_under_other_scorer_settings_are_not_reused(ingested, decode_counter):
    out, params = ingested
    cfg = params.qc.model_copy(update={"workers": 1, "motion_pairs": params.qc.motion_pairs + 1})
    scores = score_table(_clips(out), out, cfg, progress=False)
    assert len(decode_counter) == len(scores)
    assert all(len(h.split(":")) == cfg.motion_pairs for h in scores.phash)
