"""A source that is one whole clip is copied into it packet for packet; every other clip is encoded as before."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from tests.support.ingest_media import shot_frames, write_codec_video, write_three_shot

from mugv.data.names import CLIPS_TABLE
from mugv.data.video_io import copy_video_stream, probe, read_frames, write_video
from mugv.stages.ingest import Config as IngestConfig
from mugv.stages.ingest import run as run_ingest

PRIVATE = "private title of the uploader"


def _write_tagged_with_audio(path: Path, frames: list[np.ndarray], faststart: bool = False) -> None:
    """An H.264 mp4 with an AAC stream beside the video and a container title tag."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        container.metadata["title"] = PRIVATE
        video = container.add_stream("libx264", rate=Fraction(12))
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        video.metadata["title"] = PRIVATE
        audio = container.add_stream("aac", rate=8000)
        audio.layout = "mono"
        for i, f in enumerate(frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            samples = np.zeros((1, 8000 // 12), dtype=np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 8000, i * (8000 // 12)
            container.mux(audio.encode(chunk))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def _packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]


def _encoded_sha(source: Path, start: int, end: int, width: int, height: int, cfg: IngestConfig) -> str:
    """The bytes write_video gives the source's frames [start, end) cropped to width x height (write_video is
    byte-reproducible): what an encoded clip must be."""
    frames = [f[:height, :width] for f in read_frames(source)[start:end]]
    out = source.parent / f".expected_{source.stem}.mp4"
    write_video(out, frames, probe(source).fps, crf=cfg.crf, preset=cfg.preset)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("copy_sources")
    _write_tagged_with_audio(folder / "whole.mp4", shot_frames(11, 20))
    write_three_shot(folder / "three.mp4")
    write_codec_video(folder / "whole.mkv", "libx264", n=16, seed=12)
    write_codec_video(folder / "odd.mp4", "libx264", n=16, pix_fmt="yuv444p", size=(95, 63), seed=13)
    return folder


def _ingest(sources: Path, out: Path, copy: bool) -> pd.DataFrame:
    cfg = IngestConfig(workers=1, captioner="none", copy_whole_sources=copy)
    run_ingest(str(sources), out, cfg, progress=False)
    return pd.read_parquet(out / CLIPS_TABLE), cfg


def test_a_whole_source_is_copied_without_its_other_streams_or_tags(sources, tmp_path):
    clips, _ = _ingest(sources, tmp_path / "out", copy=True)
    row = clips[clips.source_uri.str.endswith("whole.mp4")].iloc[0]
    clip = tmp_path / "out" / row.path
    assert _packets(clip) == _packets(sources / "whole.mp4")  # the same H.264 bitstream, not a second encode
    assert np.array_equal(read_frames(clip), read_frames(sources / "whole.mp4"))
    assert (row.start_frame, row.end_frame, row.num_frames) == (0, 20, 20)
    with av.open(str(clip)) as container:
        assert [s.type for s in container.streams] == ["video"]
        tags = {**container.metadata, **container.streams.video[0].metadata}
    assert PRIVATE not in tags.values()
    assert row.clip_sha256 == hashlib.sha256(clip.read_bytes()).hexdigest()


def test_other_clips_are_encoded_as_before(sources, tmp_path):
    """Cut shots, an mkv, a cropped odd size, and every clip with copy_whole_sources off, are H.264 encodes."""
    copied, cfg = _ingest(sources, tmp_path / "on", copy=True)
    encoded, _ = _ingest(sources, tmp_path / "off", copy=False)
    for clips, root in ((copied, tmp_path / "on"), (encoded, tmp_path / "off")):
        for row in clips.itertuples():
            name = Path(row.source_uri).name
            if name == "whole.mp4" and root.name == "on":
                continue
            expected = _encoded_sha(sources / name, row.start_frame, row.end_frame, row.width, row.height, cfg)
            assert row.clip_sha256 == expected, (root.name, name, row.clip_id)
    assert len(copied) == len(encoded) == 6  # 3 shots + whole.mp4 + whole.mkv + odd.mp4
    columns = [c for c in copied.columns if c != "clip_sha256"]
    assert copied[columns].equals(encoded[columns])  # the copy changes a clip's bytes, not its row


@pytest.mark.parametrize("kept", [0.9, 0.97, 0.99])
def test_a_truncated_source_is_not_copied(tmp_path, kept):
    """A source whose tail is cut decodes to fewer frames than it has packets: the copy is refused, so a clip
    never holds packets that its source's decode did not turn into frames."""
    whole = tmp_path / "whole.mp4"
    _write_tagged_with_audio(whole, shot_frames(5, 30), faststart=True)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * kept)])
    decoded = probe(cut).num_frames
    assert 0 < decoded < 30
    assert not copy_video_stream(cut, tmp_path / "copy.mp4", decoded)
    assert copy_video_stream(whole, tmp_path / "copy.mp4", 30)
    assert not copy_video_stream(whole, tmp_path / "copy.mp4", 29)  # a count that disagrees is never copied
