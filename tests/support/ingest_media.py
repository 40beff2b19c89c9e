"""Test media for the ingest tests: multi-shot videos with cuts and fades, and a corpus of bad inputs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mugv.data.video_io import write_video


def shot_frames(seed: int, n: int, width: int = 96, height: int = 64) -> list[np.ndarray]:
    """`n` frames of one shot: a smooth random colour field (distinct per seed) with a moving square."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    ys = np.linspace(0, 3, height)[:, None]
    xs = np.linspace(0, 3, width)[None, :]
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    field = (
        coarse[y0, x0] * (1 - fy) * (1 - fx)
        + coarse[y0 + 1, x0] * fy * (1 - fx)
        + coarse[y0, x0 + 1] * (1 - fy) * fx
        + coarse[y0 + 1, x0 + 1] * fy * fx
    )
    frames = []
    for i in range(n):
        f = field.copy()
        x = (5 + 2 * i) % (width - 12)
        f[20:32, x : x + 12] = 255 - coarse[0, 0]
        frames.append(f.clip(0, 255).astype(np.uint8))
    return frames


def fade(frames: list[np.ndarray], out: bool) -> list[np.ndarray]:
    """Scale brightness of `frames` linearly to black (out) or up from black (in)."""
    n = len(frames)
    gains = [(1 - (i + 1) / n) if out else (i + 1) / n for i in range(n)]
    return [(f.astype(np.float32) * g).astype(np.uint8) for f, g in zip(frames, gains)]


def three_shot_frames(shot: int = 24) -> tuple[list[np.ndarray], list[int]]:
    """Shot A | hard cut | shot B, fade out, black, fade in | shot C; returns frames and true shot starts."""
    a = shot_frames(1, shot)
    b = shot_frames(2, shot)
    c = shot_frames(3, shot)
    black = [np.zeros_like(a[0])] * 4
    b = b[:-6] + fade(b[-6:], out=True)
    c = fade(c[:6], out=False) + c[6:]
    frames = a + b + black + c
    return frames, [0, shot, 2 * shot + 4]


def write_three_shot(path: Path, fps: float = 12, shot: int = 24) -> list[int]:
    frames, starts = three_shot_frames(shot)
    write_video(path, frames, fps)
    return starts


def write_codec_video(
    path: Path, codec: str, n: int = 12, pix_fmt: str = "yuv420p", size: tuple[int, int] = (96, 64), seed: int = 7
) -> None:
    """A short video in any encoder/pixel format: other codecs (mjpeg, ffv1), odd sizes (libx264 + yuv444p)."""
    frames = shot_frames(seed, n, *size)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode(None))


def write_audio_only(path: Path, seconds: float = 1.0) -> None:
    """An .mp4 holding only an AAC audio stream."""
    rate = 44100
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(rate * seconds)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_bad_corpus(folder: Path) -> dict[str, str]:
    """Bad inputs named *.mp4 (and one .mkv) in `folder`; returns {file name: expected quarantine kind}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    (folder / "zero.mp4").write_bytes(b"")
    expected["zero.mp4"] = "empty file"
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    expected["random.mp4"] = "not a video container"
    (folder / "text.mp4").write_text("this is not a video\n" * 20)
    expected["text.mp4"] = "not a video container"
    good = folder / "_whole.mp4"
    write_video(good, shot_frames(11, 24), 12)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    expected["truncated.mp4"] = "not a video container"
    write_audio_only(folder / "audio_only.mp4")
    expected["audio_only.mp4"] = "no video stream"
    write_video(folder / "single_frame.mp4", shot_frames(12, 1), 12)
    expected["single_frame.mp4"] = "too short"
    write_codec_video(folder / "mjpeg.mkv", "mjpeg", pix_fmt="yuvj420p")
    expected["mjpeg.mkv"] = "unsupported codec"
    return expected
