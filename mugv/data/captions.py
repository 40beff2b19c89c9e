"""Clip captions: the Captioner interface and its backends (sidecar .txt, manifest field, none)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mugv import storage
from mugv.data.sources import not_a_regular_file, sidecar_uri

log = logging.getLogger(__name__)
_TIMED_LINE = re.compile(r"^\s*\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s*(.*?)\s*$")


@dataclass(frozen=True)
class CaptionRequest:
    """Everything a captioner may look at for one written clip.

    `frames` is an evenly spaced RGB sample [K, H, W, 3] uint8 of the clip, present only when
    the captioner asks for it (`sample_frames > 0`); a VLM backend captions from it (and may
    re-read `clip_path`, the written H.264 file).
    """

    source_uri: str
    clip_path: Path
    start_s: float
    end_s: float
    manifest_caption: str | None = None
    frames: np.ndarray | None = None


class Captioner(Protocol):
    """Captions one clip at a time; built once per worker process, so it may cache or hold a model."""

    sample_frames: int  # how many frames the clip's CaptionRequest should carry (0: none)

    def caption(self, request: CaptionRequest) -> str: ...


@dataclass(frozen=True)
class TimedCaption:
    start_s: float
    end_s: float
    text: str


def parse_sidecar(text: str) -> list[TimedCaption] | str:
    """A sidecar's timed lines `[START-END] caption`, or its whole text when no line is timed."""
    timed = [m for m in (_TIMED_LINE.match(line) for line in text.splitlines()) if m]
    if not timed:
        return " ".join(text.split())
    return [TimedCaption(float(m[1]), float(m[2]), m[3]) for m in timed]


def best_overlap(lines: list[TimedCaption], start_s: float, end_s: float) -> str:
    """The text of the line overlapping [start_s, end_s) the most; the earliest on ties; '' if none overlaps."""
    best, best_overlap_s = "", 0.0
    for line in lines:
        overlap = min(end_s, line.end_s) - max(start_s, line.start_s)
        if overlap > best_overlap_s:
            best, best_overlap_s = line.text, overlap
    return best


def refused_sidecar(video_uri: str, uri: str) -> str | None:
    """Why a local sidecar may not be read, or None: a symlink (its target could be any file), a sidecar that is
    not a regular file (a FIFO would block), or one that does not sit in the video's own folder."""
    if storage.is_s3(uri):
        return None
    path = Path(uri)
    if path.is_symlink():
        return "is a symlink"
    if not path.exists():
        return None
    not_regular = not_a_regular_file(path)
    if not_regular:
        return not_regular
    if path.resolve().parent != Path(video_uri).resolve().parent:
        return "resolves outside the video's folder"
    return None


def decode_sidecar(data: bytes, uri: str) -> str:
    """A sidecar's text; bytes that are not UTF-8 (and NULs) are replaced, with a warning, and the video kept."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning("caption sidecar %s is not valid UTF-8 (byte %d): bad bytes replaced", uri, e.start)
        text = data.decode("utf-8", errors="replace")
    if "\0" in text:
        log.warning("caption sidecar %s holds NUL bytes: removed", uri)
        text = text.replace("\0", "")
    return text


class SidecarCaptioner:
    """Captions from `<video>.txt` beside each video (local or S3); a missing sidecar gives ''.

    The sidecar is read for each clip (no cache), so an edited sidecar is never served stale. A sidecar that
    `refused_sidecar` names (a symlink, a FIFO, outside the video's folder) is never opened: '' with a warning.
    """

    sample_frames = 0

    def caption(self, request: CaptionRequest) -> str:
        uri = sidecar_uri(request.source_uri)
        refused = refused_sidecar(request.source_uri, uri)
        if refused:
            log.warning("caption sidecar %s not read (%s): empty caption", uri, refused)
            return ""
        sidecar = parse_sidecar(decode_sidecar(storage.read_bytes(uri), uri)) if storage.exists(uri) else ""
        if isinstance(sidecar, str):
            return sidecar
        return best_overlap(sidecar, request.start_s, request.end_s)


class ManifestCaptioner:
    """The `caption` field of the video's manifest line ('' when there is none)."""

    sample_frames = 0

    def caption(self, request: CaptionRequest) -> str:
        return request.manifest_caption or ""


class NoCaptioner:
    """Leaves captions empty (a later stage captions the clips)."""

    sample_frames = 0

    def caption(self, request: CaptionRequest) -> str:
        return ""


def make_captioner(name: Literal["sidecar", "manifest", "none"]) -> Captioner:
    """The captioner backend named by `IngestConfig.captioner`."""
    backends = {"sidecar": SidecarCaptioner, "manifest": ManifestCaptioner, "none": NoCaptioner}
    if name not in backends:
        raise ValueError(f"unknown captioner {name!r}; one of {sorted(backends)}")
    return backends[name]()
