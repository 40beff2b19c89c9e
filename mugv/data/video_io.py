"""Video files through PyAV: probe, decode frames, encode H.264, copy an H.264 stream as it is."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

if TYPE_CHECKING:
    from mugv.stages.ingest import IngestLimits


class VideoError(Exception):
    """A file that is not a usable video; the message is the quarantine reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns of a video's first video stream."""

    codec: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float

    def as_dict(self) -> dict:
        return asdict(self)


class RGBConverter:
    """Decoded frames -> RGB uint8 arrays [H, W, 3] through one cached swscale context (PyAV's
    `to_ndarray(format="rgb24")` builds a new one per frame, which doubles the cost of a decode)."""

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()


# frames of at least this many pixels decode with FFmpeg's frame + slice threads; below it the
# hand-offs between threads cost more than they save (measured at 128x96: 20% more CPU and
# several times the wall time on a busy machine)
THREADED_DECODE_PIXELS = 640 * 360


def _set_threading(stream) -> None:
    if stream.codec_context.width * stream.codec_context.height >= THREADED_DECODE_PIXELS:
        stream.thread_type = "AUTO"


def _fps(stream) -> float:
    """The stream's frame rate, 0.0 when unknown or broken (a zero time base or rate makes PyAV divide by zero)."""
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
    except (ZeroDivisionError, OverflowError, ValueError):
        return 0.0
    return fps if math.isfinite(fps) else 0.0


HEADER_ONLY = {"skip_frame": "all", "threads": "1"}  # stream-info probing decodes no picture
METADATA_ERRORS = "replace"  # tags that are not UTF-8 (damaged or hostile files) read with U+FFFD, not an exception

_clock = time.monotonic
_active_budget: ContextVar[tuple["IngestLimits", float] | None] = ContextVar("decode_budget", default=None)


@contextlib.contextmanager
def decode_budget(limits: "IngestLimits") -> Iterator[None]:
    """Within it, every decode pass of this module holds to `limits` frame by frame, since headers can lie: a
    decoded frame over the size limits, more than `max_frames` frames, more than `max_decoded_mb` of RGB, or
    `max_decode_s` seconds since entering (a stalled decode) ends the pass with a VideoError."""
    token = _active_budget.set((limits, _clock() + limits.max_decode_s))
    try:
        yield
    finally:
        _active_budget.reset(token)


def _budgeted(frames: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
    """`frames`, checked against the active `decode_budget` (if any) as each one arrives."""
    active = _active_budget.get()
    if active is None:
        yield from frames
        return
    limits, deadline = active
    n = decoded_bytes = 0
    for frame in frames:
        n += 1
        width, height = frame.width, frame.height
        if width > limits.max_width or height > limits.max_height or width * height > limits.max_pixels_per_frame:
            raise VideoError(f"too large: frame {n} decodes to {width}x{height} (max {limits.max_width}x"
                             f"{limits.max_height}, max_pixels_per_frame {limits.max_pixels_per_frame})")
        if n > limits.max_frames:
            raise VideoError(f"too long: more than {limits.max_frames} frames decoded (max_frames)")
        decoded_bytes += width * height * 3
        if decoded_bytes > limits.max_decoded_mb * 2**20:
            raise VideoError(f"too large: more than {limits.max_decoded_mb:g} MB decoded (max_decoded_mb)")
        if _clock() > deadline:
            raise VideoError(f"too slow: not done after {limits.max_decode_s:g} s (max_decode_s)")
        yield frame



def check_limits(path: str | os.PathLike, limits: "IngestLimits") -> None:
    """Raise VideoError (`too large: ...`, `too long: ...`, `unsupported codec: ...`, `bad timestamps: ...`,
    `too many streams: ...`) when the headers of `path` break `limits`. Decodes no frame: an 8192x8192 file
    costs a few MB to refuse."""
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path), options=HEADER_ONLY, metadata_errors=METADATA_ERRORS)
    except av.error.InvalidDataError as e:
        raise VideoError(f"not a video container: {e}") from None
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open: {e}") from None
    with container:
        if len(container.streams) > limits.max_streams:
            raise VideoError(f"too many streams: {len(container.streams)} (max_streams {limits.max_streams})")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        context = stream.codec_context
        codec = context.name if context else "unknown"
        if codec not in limits.allowed_codecs:
            raise VideoError(f"unsupported codec: {codec} (allowed: {', '.join(limits.allowed_codecs)})")
        width, height = (context.width, context.height) if context else (0, 0)
        if width > limits.max_width or height > limits.max_height:
            raise VideoError(f"too large: {width}x{height} (max {limits.max_width}x{limits.max_height})")
        if width * height > limits.max_pixels_per_frame:
            raise VideoError(f"too large: {width}x{height} = {width * height} pixels per frame "
                             f"(max_pixels_per_frame {limits.max_pixels_per_frame})")
        try:
            time_base = stream.time_base
        except ZeroDivisionError:
            raise VideoError("bad timestamps: zero time base") from None
        if time_base is not None and time_base <= 0:
            raise VideoError(f"bad timestamps: time base {time_base}")
        fps = _fps(stream)
        if fps < limits.min_fps:
            raise VideoError(f"bad timestamps: frame rate {fps:.6g} fps (min_fps {limits.min_fps:g})")
        seconds = float(stream.duration * time_base) if stream.duration and time_base else (
            container.duration / av.time_base if container.duration else 0.0)
        if seconds > limits.max_duration_s:
            raise VideoError(f"too long: {seconds:.1f} s (max_duration_s {limits.max_duration_s:g})")
        frames = max(int(stream.frames or 0), int(seconds * fps))
        if frames > limits.max_frames:
            raise VideoError(f"too long: {frames} frames (max_frames {limits.max_frames})")


def _open_video(path: str | os.PathLike):
    """Open a video for decoding: (container, its first video stream, a header-only VideoInfo with
    num_frames from the container); raise VideoError with a reason if unusable. The caller closes the container."""
    if os.path.getsize(path) == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors=METADATA_ERRORS)
    except av.error.InvalidDataError as e:
        raise VideoError(f"not a video container: {e}") from None
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"cannot open: {e}") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else "unknown"
        try:
            av.codec.Codec(codec, "r")
        except Exception:
            raise VideoError(f"unsupported codec: {codec}") from None
        width, height, fps = stream.codec_context.width, stream.codec_context.height, _fps(stream)
        if fps <= 0:
            raise VideoError("unknown frame rate")
    except BaseException:
        container.close()
        raise
    n = int(stream.frames or 0)
    return container, stream, VideoInfo(codec=codec, width=width, height=height, fps=fps, num_frames=n,
                                         duration_s=n / fps)


def probe(path: str | os.PathLike, count_frames: bool = True) -> VideoInfo:
    """Open a video and describe its first video stream; raise VideoError with a reason if unusable.

    With `count_frames`, frames are counted by decoding (container metadata lies for
    truncated files); the decode also proves the stream is readable end to end, and the size
    is the decoded frames' size. `probed_frames` decodes with the same rules.
    """
    container, stream, info = _open_video(path)
    with container:
        width, height, n = info.width, info.height, info.num_frames
        if count_frames:
            n = 0
            for frame in _decode_checked(container, stream, info.codec):
                if n == 0:
                    width, height = frame.width, frame.height
                n += 1
        if width <= 0 or height <= 0:
            raise VideoError("video stream has no size")
    return VideoInfo(codec=info.codec, width=width, height=height, fps=info.fps, num_frames=n, duration_s=n / info.fps)


def _decode_checked(container, stream, codec: str) -> Iterator[av.VideoFrame]:
    """Every decodable frame; VideoError when not one decodes; a truncated tail ends it quietly."""
    n = 0
    try:
        for frame in _budgeted(container.decode(stream)):
            n += 1
            yield frame
    except av.error.FFmpegError as e:
        if n == 0:
            raise VideoError(f"undecodable stream ({codec}): {e}") from None
    if n == 0:
        raise VideoError(f"no decodable frames ({codec})")


@contextlib.contextmanager
def probed_frames(path: str | os.PathLike) -> Iterator[tuple[VideoInfo, Iterator[np.ndarray]]]:
    """`probe(path, count_frames=False)` and the RGB uint8 frames [H, W, 3] of the video, from one open of the file:
    the frames follow probe's decode rules (VideoError if none decodes, a truncated tail ends them quietly), so
    counting them gives probe's `num_frames` in the same pass that uses them."""
    container, stream, header = _open_video(path)
    with container:
        if header.width <= 0 or header.height <= 0:
            raise VideoError("video stream has no size")
        _set_threading(stream)
        rgb = RGBConverter()
        yield header, (rgb(frame) for frame in _decode_checked(container, stream, header.codec))


def _decoded(path: str | os.PathLike) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index, frame) of the first video stream, ending quietly where a truncated tail stops decoding."""
    with av.open(str(path), metadata_errors=METADATA_ERRORS) as container:
        stream = container.streams.video[0]
        _set_threading(stream)
        try:
            yield from enumerate(_budgeted(container.decode(stream)))
        except av.error.FFmpegError:
            return  # truncated tail: what decoded is what there is


def iter_frames(
    path: str | os.PathLike, start: int = 0, end: int | None = None, step: int = 1
) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames [H, W, 3] with index in [start, end) every `step` frames."""
    rgb = RGBConverter()
    for i, frame in _decoded(path):
        if end is not None and i >= end:
            break
        if i >= start and (i - start) % step == 0:
            yield rgb(frame)


def frames_at(path: str | os.PathLike, wanted: Iterable[int]) -> dict[int, np.ndarray]:
    """RGB uint8 frames [H, W, 3] at the `wanted` indices (index -> frame; a truncated tail
    leaves out what it lost). Decodes up to the last one, converting only the wanted frames."""
    wanted = set(wanted)
    last = max(wanted, default=-1)
    frames: dict[int, np.ndarray] = {}
    rgb = RGBConverter()
    for i, frame in _decoded(path):
        if i in wanted:
            frames[i] = rgb(frame)
        if i >= last:
            break
    return frames


def read_frames(
    path: str | os.PathLike, start: int = 0, end: int | None = None, step: int = 1
) -> np.ndarray:
    """Frames [T, H, W, 3] uint8 (see iter_frames)."""
    frames = list(iter_frames(path, start, end, step))
    if not frames:
        raise VideoError(f"no frames in [{start}, {end}) of {path}")
    return np.stack(frames)


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    crf: int = 18,
    codec: str = "libx264",
    preset: str = "veryfast",
) -> int:
    """Encode RGB uint8 frames [H, W, 3] to an H.264 mp4 (yuv420p); return the frame count.

    Width and height must be even (4:2:0 chroma). The same frames always give the same bytes:
    x264's macroblock-tree rate control is off, as it made output differ from run to run, and x264
    runs one thread: its frame threads made the bytes depend on the machine's core count and, on
    clip-sized frames, cost 25% more CPU (the data plane encodes clips side by side instead).
    """
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                h, w = frame.shape[:2]
                if w % 2 or h % 2:
                    raise ValueError(f"H.264 needs even sizes, got {w}x{h}")
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                options = {"crf": str(crf), "preset": preset, "threads": "1"}
                if codec == "libx264":
                    options["x264-params"] = "mbtree=0"
                stream.options = options
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
            vf.pts, vf.time_base = n, 1 / rate
            container.mux(stream.encode(vf))
            n += 1
        if stream is None:
            raise ValueError("no frames to write")
        container.mux(stream.encode(None))
    return n


MP4_DEMUXER = "mov,mp4,m4a,3gp,3g2,mj2"


def copy_video_stream(src: str | os.PathLike, dest: str | os.PathLike, frames: int) -> bool:
    """Write the first video stream of `src` packet for packet into a new mp4 at `dest` (no other stream, no
    metadata, no re-encode) when `src` is an H.264 4:2:0 mp4 or mov and each of its packets is one of the `frames`
    frames a decode of it gave (a truncated tail, a dropped frame or an edit list that hides frames make the counts
    differ); return False otherwise, and then whatever is at `dest` must be written over.

    The copy decodes to exactly the frames of `src`: a clip that is a whole source loses nothing to a second
    encode and costs no encode time."""
    try:
        with av.open(str(src), metadata_errors=METADATA_ERRORS) as source:
            stream = source.streams.video[0]
            ctx = stream.codec_context
            if source.format.name != MP4_DEMUXER or ctx.name != "h264" or ctx.pix_fmt != "yuv420p":
                return False
            copied = 0
            with av.open(str(dest), mode="w", format="mp4") as out:
                copy = out.add_stream_from_template(stream)
                copy.metadata.clear()  # the source's tags (a title, a location) do not travel into the data set
                for packet in source.demux(stream):
                    if packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    copied += 1
                    if copied > frames:
                        return False
                    packet.stream = copy
                    out.mux(packet)
    except (av.error.FFmpegError, ValueError):
        return False
    return copied == frames
