"""Ingest limits (params ingest.limits) are checked from the headers before any frame is decoded: a huge frame size,
a disallowed codec, broken timestamps are quarantined with a readable reason, at the cost of a few MB."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from mugv.data import clip_writer
from mugv.data.video_io import VideoError, _fps, check_limits, write_video
from mugv.stages.ingest import CLIPS_TABLE, QUARANTINE_TABLE, IngestLimits
from mugv.stages.ingest import Config as IngestConfig
from mugv.stages.ingest import run as run_ingest
from tests.support.ingest_media import shot_frames, write_codec_video
from tests.support.paths import ROOT

HUGE = """
import sys
from fractions import Fraction
import av

with av.open(sys.argv[1], "w") as container:  # one black 8192x8192 H.264 frame: ~200 KB on disk
    stream = container.add_stream("libx264", rate=Fraction(12))
    stream.width = stream.height = 8192
    stream.pix_fmt, stream.options = "yuv420p", {"preset": "ultrafast"}
    frame = av.VideoFrame(8192, 8192, "yuv420p")
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
"""

MEASURED_INGEST = """
import resource, sys
from pathlib import Path
import pandas as pd
from mugv.stages.ingest import Config, ingest

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ingest(sys.argv[1], Path(sys.argv[2]), Config(workers=1), progress=False)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{grown_mb:.0f}")
"""


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / CLIPS_TABLE), pd.read_parquet(out / QUARANTINE_TABLE)


def test_an_8192x8192_video_is_refused_from_its_headers_without_decoding(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run([sys.executable, "-c", HUGE, str(source / "huge.mp4")], check=True)
    proc = subprocess.run([sys.executable, "-c", MEASURED_INGEST, str(source), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    grown_mb = float(proc.stdout.split()[-1])
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB: frames were decoded"
    clips, quarantine = _tables(tmp_path / "out")
    assert clips.empty
    [row] = quarantine.itertuples()
    assert row.kind == "too large" and "8192x8192" in row.reason


@pytest.fixture
def no_decoding(monkeypatch):
    """Any decode of a source fails the test (ingest runs in-process with workers=1)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a refused video was decoded")

    monkeypatch.setattr(clip_writer, "scan", refuse)


def test_an_mjpeg_video_is_refused_by_codec_before_it_is_decoded(tmp_path, no_decoding):
    (tmp_path / "src").mkdir()
    write_codec_video(tmp_path / "src" / "a.mkv", "mjpeg", pix_fmt="yuvj420p")
    run_ingest(str(tmp_path / "src"), tmp_path / "out", IngestConfig(workers=1), progress=False)
    clips, quarantine = _tables(tmp_path / "out")
    assert clips.empty
    assert quarantine.kind.tolist() == ["unsupported codec"]
    assert quarantine.reason.iloc[0].startswith("unsupported codec: mjpeg (allowed: h264")


def _zero_timescale(source: Path, dest: Path) -> Path:
    """`source` with the timescale of its video track header (mdhd) set to 0: timestamps that mean nothing."""
    data = bytearray(source.read_bytes())
    box = data.find(b"mdhd")
    offset = box + 8 + (16 if data[box + 4] == 1 else 8)
    data[offset:offset + 4] = bytes(4)
    dest.write_bytes(data)
    return dest


def test_broken_timestamps_give_a_readable_reason(tmp_path, no_decoding):
    source = tmp_path / "src"
    source.mkdir()
    write_video(tmp_path / "ok.mp4", shot_frames(1, 12), 12)
    _zero_timescale(tmp_path / "ok.mp4", source / "zero_timescale.mp4")
    run_ingest(str(source), tmp_path / "out", IngestConfig(workers=1), progress=False)
    _, quarantine = _tables(tmp_path / "out")
    assert quarantine.kind.tolist() == ["bad timestamps"]
    assert "fps" in quarantine.reason.iloc[0] and "Error" not in quarantine.reason.iloc[0]


def test_a_frame_rate_that_divides_by_zero_reads_as_unknown():
    class ZeroRate:
        @property
        def average_rate(self):
            raise ZeroDivisionError("Fraction(1, 0)")

    assert _fps(ZeroRate()) == 0.0


@pytest.mark.parametrize("limits, kind", [
    (IngestLimits(max_width=64), "too large"),
    (IngestLimits(max_pixels_per_frame=1000), "too large"),
    (IngestLimits(max_frames=5), "too long"),
    (IngestLimits(max_duration_s=0.5), "too long"),
    (IngestLimits(allowed_codecs=["vp9"]), "unsupported codec"),
    (IngestLimits(min_fps=30), "bad timestamps"),
])
def test_each_limit_refuses_with_its_kind(tmp_path, limits, kind):
    path = tmp_path / "a.mp4"
    write_video(path, shot_frames(2, 12, 96, 64), 12)  # 96x64, 12 frames, 1 s at 12 fps
    check_limits(path, IngestLimits())  # within the defaults
    with pytest.raises(VideoError, match=f"^{kind}: "):
        check_limits(path, limits)


def test_the_default_limits_are_the_params_defaults():
    assert IngestConfig().limits == IngestLimits()
    code = textwrap.dedent("""
        import sys, mugv.stages.ingest
        sys.exit('av' in sys.modules)
    """)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # params validation imports no PyAV
