"""Absurd media is refused from its headers, before a frame is decoded: a thousand tiny streams, a header claiming two
billion frames, one claiming decades. (An 8192x8192 H.264 of a few hundred KB: tests/stages/test_ingest_limits.py; lying headers caught while decoding:
test_ingest_fuzz.py.)"""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mugv.data import clip_writer
from tests.fuzz.test_ingest_fuzz import ingest_bytes
from tests.support.fuzz_media import base_clips


@pytest.fixture
def no_decoding(monkeypatch):
    """Any decode of a source fails the test (the per-video function calls clip_writer.ingest_video to decode)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a refused video was decoded")

    monkeypatch.setattr(clip_writer, "ingest_video", refuse)


def _many_streams(path: Path, audio_streams: int) -> None:
    """One 32x32 H.264 stream and `audio_streams` one-frame PCM streams in a Matroska file (~170 bytes a stream)."""
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("libx264", rate=Fraction(8))
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        audio = [container.add_stream("pcm_s16le", rate=8000) for _ in range(audio_streams)]
        for stream in audio:
            stream.layout = "mono"
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        for stream in audio:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 16), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 8000, 0
            container.mux(stream.encode(samples))
        container.mux(video.encode(None))
        for stream in audio:
            container.mux(stream.encode(None))


def test_a_thousand_tiny_streams_are_refused_from_the_headers(tmp_path, no_decoding):
    _many_streams(tmp_path / "streams.mkv", 999)  # PyAV's muxer cannot write more than FFmpeg's 1000
    result = ingest_bytes((tmp_path / "streams.mkv").read_bytes(), "many.mkv", tmp_path)
    assert result.kind == "too many streams" and "1000" in result.reason


def _patched(data: bytes, marker: bytes, offset: int, value: bytes) -> bytes:
    """`data` with `value` written `offset` bytes after the first `marker`."""
    out = bytearray(data)
    at = out.find(marker)
    assert at >= 0, f"no {marker!r}"
    out[at + offset:at + offset + len(value)] = value
    return bytes(out)


def test_a_header_claiming_two_billion_frames_is_refused_before_decoding(tmp_path, no_decoding):
    """mp4: the first entry of the time-to-sample table (stts) says 2**31 - 1 frames of 1/8 s."""
    data = _patched(base_clips()["h264.mp4"], b"stts", 12, struct.pack(">I", 2**31 - 1))
    result = ingest_bytes(data, "frames.mp4", tmp_path)
    assert result.kind == "too long" and "2147483647 frames" in result.reason


def test_a_header_claiming_decades_is_refused_before_decoding(tmp_path, no_decoding):
    """Matroska: the segment's Duration element (ID 0x4489, an 8-byte float of milliseconds) says 10**12 ms."""
    data = _patched(base_clips()["h264.mkv"], b"\x44\x89\x88", 3, struct.pack(">d", 1e12))
    result = ingest_bytes(data, "decades.mkv", tmp_path)
    assert result.kind == "too long" and "max_duration_s" in result.reason
