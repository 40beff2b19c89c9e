"""Hostile ingest inputs: symlinked or FIFO sidecars, FIFOs in folders and manifests, manifests with bad bytes,
sidecars with bad bytes, entries escaping their root. Nothing hangs, nothing outside the root is read, good videos stay."""

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from mugv.data.captions import CaptionRequest, SidecarCaptioner
from mugv.data.sources import list_source, read_manifest
from mugv.data.video_io import write_video
from mugv.stages.ingest import CLIPS_TABLE, QUARANTINE_TABLE
from mugv.stages.ingest import Config as IngestConfig
from mugv.stages.ingest import run as run_ingest
from tests.support.ingest_media import shot_frames

EXTS = [".mp4"]
SECRET = "the content of a file outside the source root"


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _caption(video: Path) -> str:
    return SidecarCaptioner().caption(CaptionRequest(str(video), video, 0.0, 1.0))


def test_a_symlinked_sidecar_is_never_read(tmp_path, caplog):
    secret = _touch(tmp_path / "outside" / "secret.txt", SECRET.encode())
    video = _touch(tmp_path / "videos" / "a.mp4")
    os.symlink(secret, tmp_path / "videos" / "a.txt")
    with caplog.at_level(logging.WARNING, logger="mugv.data.captions"):
        assert _caption(video) == ""
    assert any("symlink" in r.getMessage() for r in caplog.records)


def test_a_fifo_sidecar_is_never_opened(tmp_path):
    video = _touch(tmp_path / "videos" / "a.mp4")
    os.mkfifo(tmp_path / "videos" / "a.txt")
    assert _caption(video) == ""  # opening the FIFO for reading would block forever


def test_a_sidecar_with_bad_bytes_keeps_its_good_text(tmp_path, caplog):
    video = _touch(tmp_path / "videos" / "a.mp4")
    _touch(tmp_path / "videos" / "a.txt", b"a red \xff\xfe circle\x00 moves left\n")
    with caplog.at_level(logging.WARNING, logger="mugv.data.captions"):
        caption = _caption(video)
    assert caption.startswith("a red ") and caption.endswith("circle moves left")
    assert any("UTF-8" in r.getMessage() for r in caplog.records)


def test_a_fifo_in_a_folder_is_quarantined_not_opened(tmp_path):
    root = tmp_path / "videos"
    _touch(root / "a.mp4")
    os.mkfifo(root / "b.mp4")
    listing = list_source(str(root), EXTS)
    assert [Path(i.uri).name for i in listing.items] == ["a.mp4"]
    [q] = listing.quarantined
    assert Path(q.uri).name == "b.mp4" and q.kind == "not a regular file" and "FIFO" in q.reason


def test_manifest_entries_cannot_escape_or_name_a_fifo(tmp_path):
    root = tmp_path / "set"
    _touch(root / "a.mp4")
    os.mkfifo(root / "pipe.mp4")
    outside = _touch(tmp_path / "outside.mp4")
    os.symlink(outside, root / "link.mp4")
    manifest = root / "list.jsonl"
    manifest.write_text("\n".join(json.dumps({"uri": u}) for u in
                                  ["a.mp4", "pipe.mp4", "../outside.mp4", str(outside), "link.mp4", "sub/../../outside.mp4"]))
    listing = read_manifest(str(manifest))
    assert [Path(i.uri).name for i in listing.items] == ["a.mp4"]
    kinds = sorted(q.kind for q in listing.quarantined)
    assert kinds == ["escapes manifest root"] * 4 + ["not a regular file"]


@pytest.mark.parametrize("bad_line", [b'{"uri": "b\xff.mp4"}', b'{"uri": "b.mp4"}\x00', b"\xc3\x28"])
def test_a_manifest_line_with_bad_bytes_is_quarantined_and_the_others_go_on(tmp_path, bad_line):
    root = tmp_path / "set"
    _touch(root / "a.mp4")
    _touch(root / "c.mp4")
    manifest = root / "list.jsonl"
    manifest.write_bytes(b'{"uri": "a.mp4"}\n' + bad_line + b'\n{"uri": "c.mp4"}\n')
    listing = read_manifest(str(manifest))
    assert [Path(i.uri).name for i in listing.items] == ["a.mp4", "c.mp4"]
    [q] = listing.quarantined
    assert q.uri.endswith("#L2") and q.kind == "malformed manifest line"


def test_a_csv_manifest_with_bad_bytes_keeps_its_good_lines(tmp_path):
    root = tmp_path / "set"
    _touch(root / "a.mp4")
    manifest = root / "list.csv"
    manifest.write_bytes(b"uri,caption\na.mp4,ok\nb.mp4,bad \xff\nc\x00.mp4,nul\n")
    listing = read_manifest(str(manifest))
    assert [(Path(i.uri).name, i.manifest_caption) for i in listing.items] == [("a.mp4", "ok")]
    assert sorted(q.uri.rsplit("#", 1)[1] for q in listing.quarantined) == ["L3", "L4"]


def test_the_ingest_stage_goes_on_past_hostile_inputs(tmp_path):
    """End to end: a FIFO video, a symlinked sidecar and a bad manifest line do not stop or hang the stage."""
    root = tmp_path / "set"
    root.mkdir()
    write_video(root / "good.mp4", shot_frames(3, 12), 8)
    secret = _touch(tmp_path / "secret.txt", SECRET.encode())
    os.symlink(secret, root / "good.txt")
    os.mkfifo(root / "pipe.mp4")
    manifest = root / "list.jsonl"
    manifest.write_bytes(b'{"uri": "good.mp4"}\n{"uri": "pipe.mp4"}\n\xff\xfe\n{"uri": "../secret.txt"}\n')
    out = tmp_path / "out"
    report = run_ingest(str(manifest), out, IngestConfig(workers=1), progress=False)
    clips, quarantine = pd.read_parquet(out / CLIPS_TABLE), pd.read_parquet(out / QUARANTINE_TABLE)
    assert report.videos_ingested == 1 and len(clips) >= 1
    assert set(clips["caption"]) == {""}
    assert sorted(quarantine["kind"]) == ["escapes manifest root", "malformed manifest line", "not a regular file"]
