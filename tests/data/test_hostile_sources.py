"""Hostile ingest inputs: symlinked or FIFO sidecars, FIFOs in folders and manifests, manifests with bad bytes,
sidecars with bad bytes, entries escaping their root (`../`, absolute paths, symlinked folders, S3 prefixes), S3 buckets
outside the allow-list. Nothing hangs, nothing outside the root is read, good videos stay."""

import json
import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from mugv.data.captions import CaptionRequest, SidecarCaptioner
from mugv.data.sources import SourceNotAllowed, check_bucket, list_source, read_manifest, resolve_entry
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


def test_a_symlinked_folder_is_not_followed_out_of_the_root(tmp_path):
    _touch(tmp_path / "outside" / "secret.mp4")
    root = tmp_path / "set"
    _touch(root / "a.mp4")
    os.symlink(tmp_path / "outside", root / "linked")
    listing = list_source(str(root), EXTS)
    assert [Path(i.uri).name for i in listing.items] == ["a.mp4"]
    assert not any("secret" in q.uri for q in listing.quarantined)


def test_manifest_entries_through_a_symlinked_folder_cannot_escape(tmp_path):
    _touch(tmp_path / "outside" / "secret.mp4")
    root = tmp_path / "set"
    _touch(root / "inside" / "b.mp4")
    os.symlink(tmp_path / "outside", root / "linked")
    os.symlink(root / "inside", root / "alias")
    manifest = root / "list.csv"
    manifest.write_text(f"uri\nlinked/secret.mp4\nalias/b.mp4\n{tmp_path / 'outside' / 'secret.mp4'}\n"
                        "inside/../../outside/secret.mp4\n")
    listing = read_manifest(str(manifest))
    assert [i.uri for i in listing.items] == [str((root / "inside" / "b.mp4").resolve())]
    assert [q.kind for q in listing.quarantined] == ["escapes manifest root"] * 3


@pytest.mark.parametrize("entry", ["../other/a.mp4", "sub/../../other/a.mp4", "s3://data/other/a.mp4",
                                   "s3://elsewhere/set/a.mp4", "s3://data/set/../other/a.mp4", "/set/a.mp4",
                                   "file:///etc/passwd", "https://example.org/a.mp4"])
def test_an_s3_manifest_entry_stays_under_the_manifest_prefix(entry):
    assert resolve_entry("s3://data/set", entry) is None


def test_an_s3_manifest_entry_under_its_prefix_resolves():
    assert resolve_entry("s3://data/set", "sub/a.mp4") == "s3://data/set/sub/a.mp4"
    assert resolve_entry("s3://data/set", "s3://data/set/a.mp4") == "s3://data/set/a.mp4"


@pytest.mark.parametrize("source", ["s3://elsewhere/videos", "s3://elsewhere/list.jsonl"])
def test_an_s3_source_outside_the_allowed_buckets_is_refused_before_any_read(source, monkeypatch):
    from mugv import storage

    def no_reads(*args, **kwargs):
        raise AssertionError("a refused source was read")

    monkeypatch.setattr(storage, "list_files", no_reads)
    monkeypatch.setattr(storage, "read_bytes", no_reads)
    with pytest.raises(SourceNotAllowed, match="'elsewhere'.*ingest.allowed_buckets"):
        list_source(source, EXTS, ["data"])
    check_bucket(source, [])  # [] = any bucket
    check_bucket("s3://data/videos", ["data"])
    check_bucket(str(Path("local") / "folder"), ["data"])  # local sources are not bucket-limited


def test_mugv_ingest_refuses_a_bucket_outside_the_allow_list_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mugv.cli import app

    monkeypatch.chdir(tmp_path)  # a tracked run would land here; none may start
    (tmp_path / "params.yaml").write_text("ingest:\n  allowed_buckets: [data]\n")
    result = CliRunner().invoke(app, ["ingest", "s3://elsewhere/videos", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "'elsewhere'" in result.output and "allowed_buckets" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns.db").exists()
