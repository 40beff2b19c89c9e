"""Damaged video bytes for the ingest fuzz tests: tiny real clips (H.264 in mp4, mkv and Annex B; MPEG-4 Part 2 in
avi) and the damage done to them (bit flips, truncation, header bytes, concatenation, zero length)."""

from __future__ import annotations

import tempfile
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from tests.support.ingest_media import shot_frames

# (file name, container format, codec, width, height): each an 8-frame clip that ingest keeps when intact
BASES = (
    ("h264.mp4", "mp4", "libx264", 32, 32),
    ("h264.mkv", "matroska", "libx264", 32, 32),
    ("h264_48x32.h264", "h264", "libx264", 48, 32),
    ("mpeg4.avi", "avi", "mpeg4", 32, 32),
)
EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".h264", ".txt", "")
DAMAGES = ("intact", "bit flips", "truncated", "header bytes", "zero length", "concatenated", "garbage tail",
           "spliced")


def _encode(path: Path, fmt: str, codec: str, width: int, height: int, seed: int) -> None:
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        for i, frame in enumerate(shot_frames(seed, 8, width, height)):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))


@lru_cache(maxsize=1)
def base_clips() -> dict[str, bytes]:
    """The intact clips by file name (made once per process, ~4 KB each)."""
    clips = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed, (name, fmt, codec, width, height) in enumerate(BASES):
            path = Path(folder) / name
            _encode(path, fmt, codec, width, height, seed)
            clips[name] = path.read_bytes()
    return clips


def with_undecodable_tags() -> bytes:
    """An intact 32x32 H.264 mkv whose container and stream titles are bytes that are not UTF-8."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tags.mkv"
        with av.open(str(path), mode="w", format="matroska") as container:
            container.metadata["title"] = "z" * 10
            stream = container.add_stream("libx264", rate=Fraction(8))
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            stream.metadata["title"] = "y" * 10
            for i, frame in enumerate(shot_frames(5, 8, 32, 32)):
                video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
                video_frame.pts = i
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode(None))
        data = path.read_bytes()
    return data.replace(b"z" * 10, b"\xff\xfe" + b"z" * 8).replace(b"y" * 10, b"\xb1\x81" + b"y" * 8)


def damage(data: bytes, how: str, rng: np.random.Generator, other: bytes = b"") -> bytes:
    """`data` damaged in one of DAMAGES ways, the positions and bytes drawn from `rng`; `other` is a second clip
    (concatenated after it, or spliced into it)."""
    out = bytearray(data)
    n = len(out)
    if how == "intact":
        return bytes(out)
    if how == "zero length":
        return b""
    if how == "bit flips":
        for _ in range(int(rng.integers(1, 17))):
            out[int(rng.integers(0, n))] ^= 1 << int(rng.integers(0, 8))
        return bytes(out)
    if how == "truncated":
        return bytes(out[: int(rng.integers(0, n))])
    if how == "header bytes":
        size = int(rng.integers(1, 65))
        out[:size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        return bytes(out)
    if how == "concatenated":
        return bytes(out) + other
    if how == "garbage tail":
        return bytes(out) + rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    if how == "spliced":
        cut, take = int(rng.integers(0, n)), int(rng.integers(0, len(other) + 1))
        return bytes(out[:cut]) + other[:take] + bytes(out[cut:])
    raise ValueError(f"unknown damage {how!r}")


def damaged_corpus(folder: Path, count: int, seed: int = 0) -> dict[str, str]:
    """`count` damaged clips in `folder`, named `<i>_<damage>_<base>.<ext>` (every damage and base in turn, the
    extension drawn, so some are wrong); returns {file name: damage}."""
    rng = np.random.default_rng(seed)
    clips = base_clips()
    names = list(clips)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for i in range(count):
        how, base = DAMAGES[i % len(DAMAGES)], names[(i // len(DAMAGES)) % len(names)]  # no two intact copies
        other = clips[names[(i // len(DAMAGES) + 1) % len(names)]]
        ext = EXTENSIONS[int(rng.integers(0, 5))]  # the video extensions ingest lists by default
        name = f"{i:02d}_{how.replace(' ', '_')}_{Path(base).stem}{ext}"
        (folder / name).write_bytes(damage(clips[base], how, rng, other))
        written[name] = how
    return written
