"""Ingest fuzzed with damaged real clips: the per-video function never raises or hangs, and each input ends either kept
(clips that decode) or quarantined with a reason; `mugv ingest` over a folder of damaged files exits 0 and keeps
the good ones. Decode budgets hold where headers lie (a stream that grows, a raw stream without a frame count)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mugv.data import video_io
from mugv.data.clip_writer import TASKS, VideoTask
from mugv.data.sources import SourceItem
from mugv.data.video_io import probe
from mugv.stages.ingest import CLIPS_TABLE, QUARANTINE_TABLE, Config, IngestLimits, ingest_within_limits
from tests.support.fuzz_media import DAMAGES, EXTENSIONS, base_clips, damage, damaged_corpus, with_undecodable_tags
from tests.support.paths import ROOT

# a hung decode ends in quarantine after max_decode_s; min_frames 4 keeps some truncated clips
FUZZ_CONFIG = Config(captioner="none", min_frames=4, limits=IngestLimits(max_decode_s=30))


def ingest_bytes(data: bytes, name: str, folder: Path, cfg: Config = FUZZ_CONFIG):
    """The ingest stage's per-video function on `data` written as `folder/name`; returns its VideoResult."""
    source = folder / name
    source.write_bytes(data)
    (folder / TASKS).mkdir(exist_ok=True)  # made by the stage's driver, which then publishes the clips
    task = VideoTask(SourceItem(str(source)), hashlib.sha256(data).hexdigest(), folder, cfg)
    return ingest_within_limits(task)


def assert_kept_or_quarantined(result, folder: Path) -> None:
    """Kept: every row's clip decodes to its frame count. Quarantined: a kind and a reason, and no clip left."""
    if result.reason is None:
        assert result.rows, "kept without clips"
        for row in result.rows:
            clip = Path(result.staged) / Path(row["path"]).name
            assert probe(clip).num_frames == row["num_frames"] >= FUZZ_CONFIG.min_frames
    else:
        assert result.kind and result.reason.strip() and not result.rows
        assert not list((folder / TASKS).iterdir()), "a quarantined video left clips behind"


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(sorted(base_clips())), other=st.sampled_from(sorted(base_clips())),
       how=st.sampled_from(DAMAGES), ext=st.sampled_from(EXTENSIONS), seed=st.integers(0, 2**32 - 1))
def test_a_damaged_video_is_kept_or_quarantined_never_raised(base, other, how, ext, seed):
    clips = base_clips()
    data = damage(clips[base], how, np.random.default_rng(seed), clips[other])
    with tempfile.TemporaryDirectory() as folder:
        result = ingest_bytes(data, f"video{ext}", Path(folder))
        assert_kept_or_quarantined(result, Path(folder))
        if how == "intact":
            assert result.reason is None, result.reason


def test_the_intact_bases_are_kept(tmp_path):
    for name, data in base_clips().items():
        assert ingest_bytes(data, name, tmp_path).reason is None, name


def test_tags_that_are_not_utf8_do_not_stop_an_intact_video(tmp_path):
    """Found by the fuzzing: PyAV raised UnicodeDecodeError on such tags, and the video was lost as 'ingest failed'."""
    result = ingest_bytes(with_undecodable_tags(), "tags.mkv", tmp_path)
    assert result.reason is None, result.reason


def _raw_h264(frames: int, width: int, height: int) -> bytes:
    """An Annex B H.264 stream: no container, so no header says how many frames it holds."""
    import av

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "raw.h264"
        with av.open(str(path), "w", format="h264") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "ultrafast"}
            for i in range(frames):
                frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), (i * 7) % 256, np.uint8), "rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return path.read_bytes()


def test_a_stream_whose_frames_outgrow_its_header_is_refused_while_decoding(tmp_path):
    """32x32 in the first headers, then 96x96 frames: the frame size limit holds on what decodes."""
    data = _raw_h264(8, 32, 32) + _raw_h264(8, 96, 96)
    cfg = Config(captioner="none", min_frames=4, limits=IngestLimits(max_width=64, max_height=64))
    result = ingest_bytes(data, "grows.h264", tmp_path, cfg)
    assert result.kind == "too large" and "96x96" in result.reason


def test_frames_beyond_max_frames_are_refused_while_decoding(tmp_path):
    """A raw stream's header gives no frame count: max_frames holds on the frames decoded."""
    cfg = Config(captioner="none", min_frames=4, limits=IngestLimits(max_frames=20))
    result = ingest_bytes(_raw_h264(40, 32, 32), "long.h264", tmp_path, cfg)
    assert result.kind == "too long" and "max_frames" in result.reason
    assert ingest_bytes(_raw_h264(12, 32, 32), "short.h264", tmp_path, cfg).reason is None


def test_the_decoded_bytes_budget_holds(tmp_path):
    cfg = Config(captioner="none", min_frames=4, limits=IngestLimits(max_decoded_mb=0.01))  # 10 KB: 3 frames of 32x32
    result = ingest_bytes(base_clips()["h264.mp4"], "a.mp4", tmp_path, cfg)
    assert result.kind == "too large" and "max_decoded_mb" in result.reason


def test_a_stalled_decode_ends_in_quarantine(tmp_path, monkeypatch):
    """Each frame takes a simulated minute: the decode ends at max_decode_s with a reason, not a hang."""
    minutes = iter(range(0, 10**6, 60))
    monkeypatch.setattr(video_io, "_clock", lambda: next(minutes))
    cfg = Config(captioner="none", min_frames=4, limits=IngestLimits(max_decode_s=150))
    result = ingest_bytes(base_clips()["h264.mp4"], "a.mp4", tmp_path, cfg)
    assert result.kind == "too slow" and "max_decode_s" in result.reason


@pytest.mark.slow
def test_mugv_ingest_over_a_folder_of_damaged_files(tmp_path):
    """The real command in a subprocess: exit 0, every damaged file either kept or quarantined with a reason, the
    intact ones kept."""
    source = tmp_path / "source"
    written = damaged_corpus(source, 20)
    intact = {name for name, how in written.items() if how == "intact"}
    (tmp_path / "params.yaml").write_text("ingest:\n  workers: 1\n  captioner: none\n  min_frames: 4\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "mugv.cli", "ingest", str(source), str(tmp_path / "out"), "--params",
         str(tmp_path / "params.yaml"), "--quiet", "--metrics", str(tmp_path / "ingest.json")],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    clips = pd.read_parquet(tmp_path / "out" / CLIPS_TABLE)
    quarantine = pd.read_parquet(tmp_path / "out" / QUARANTINE_TABLE)
    kept = {Path(uri).name for uri in clips["source_uri"]}
    refused = {Path(uri).name for uri in quarantine["uri"]}
    assert kept | refused == set(written) and not kept & refused
    assert intact <= kept
    assert quarantine["reason"].str.strip().str.len().min() > 0 and quarantine["kind"].str.len().min() > 0
    assert len(refused) >= 8  # zero length, header bytes, truncations... most damage is refused
    for path in clips["path"]:
        assert probe(tmp_path / "out" / path).num_frames > 0
