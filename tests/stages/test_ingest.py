"""The ingest stage end to end: bad inputs quarantined, good clips kept, manifests, S3, workers, crashes."""

import shutil
from pathlib import Path

import boto3
import pandas as pd
import pytest
from tests.support.ingest_media import shot_frames, write_bad_corpus, write_codec_video, write_three_shot

from mugv import storage
from mugv.stages.ingest import CLIPS_TABLE, QUARANTINE_TABLE, clips_schema, quarantine_schema
from mugv.stages.ingest import Config as IngestConfig
from mugv.stages.ingest import run as run_ingest
from mugv.data.video_io import probe, write_video
from mugv.data import ray_runner
from mugv.data.ray_runner import CRASHED, Outcome

THREE_SHOT_SIDECAR = "[0.00-2.00] shot one\n[2.00-4.33] shot two\n[4.33-6.33] shot three\n"
GOOD_CLIPS = {  # file -> captions of its clips in order
    "good/three.mp4": ["shot one", "shot two", "shot three"],
    "good/odd_size.mp4": ["an odd-sized video"],
    "good/nested/plain.mp4": [""],
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """good/ videos (3-shot with timed sidecar, odd-sized with plain sidecar, a duplicate), bad/ inputs."""
    root = tmp_path_factory.mktemp("corpus")
    good = root / "good"
    (good / "nested").mkdir(parents=True)
    write_three_shot(good / "three.mp4")
    (good / "three.txt").write_text(THREE_SHOT_SIDECAR)
    write_codec_video(good / "odd_size.mp4", "libx264", n=16, pix_fmt="yuv444p", size=(95, 63))
    (good / "odd_size.txt").write_text("an odd-sized video\n")
    write_video(good / "nested" / "plain.mp4", shot_frames(21, 20), 8)
    shutil.copyfile(good / "three.mp4", good / "zz_copy_of_three.mp4")
    expected_bad = {f"bad/{name}": kind for name, kind in write_bad_corpus(root / "bad").items()}
    return root, expected_bad


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / CLIPS_TABLE), pd.read_parquet(out / QUARANTINE_TABLE)


def _rel(uri: str, root: Path) -> str:
    return str(Path(uri).relative_to(root))


def test_bad_inputs_are_quarantined_and_every_good_clip_is_kept(corpus, tmp_path):
    root, expected_bad = corpus
    out = tmp_path / "out"
    report = run_ingest(str(root), out, IngestConfig(workers=1), progress=False)
    clips, quarantine = _tables(out)

    assert {_rel(u, root): k for u, k in zip(quarantine.uri, quarantine.kind) if k != "duplicate"} == expected_bad
    dup = quarantine[quarantine.kind == "duplicate"]
    assert [_rel(u, root) for u in dup.uri] == ["good/zz_copy_of_three.mp4"]
    assert dup.reason.iloc[0] == f"duplicate of {root / 'good' / 'three.mp4'}"

    got = {f: list(clips[clips.source_uri == str(root / f)].caption) for f in GOOD_CLIPS}
    assert got == GOOD_CLIPS
    assert list(clips.clip_id) == sorted(clips.clip_id)
    for row in clips.itertuples():
        path = out / row.path
        assert row.path == f"clips/{row.clip_id}.mp4"
        assert row.clip_id.startswith(row.sha256[:16] + "_")
        assert storage.sha256(path) == row.clip_sha256
        assert storage.sha256(row.source_uri) == row.sha256
        info = probe(path)
        assert (info.width, info.height, info.num_frames) == (row.width, row.height, row.num_frames)
        assert row.width % 2 == 0 and row.height % 2 == 0
        assert row.end_frame - row.start_frame == row.num_frames >= 8
        assert row.duration_s == pytest.approx(row.num_frames / row.fps)
    odd = clips[clips.source_uri.str.endswith("odd_size.mp4")].iloc[0]
    assert (odd.width, odd.height) == (94, 62)
    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(Path(p).name for p in clips.path)

    assert report.sources_seen == 4 + len(expected_bad)
    assert report.sources_seen == report.videos_ingested + report.duplicates + report.quarantined
    assert (report.videos_ingested, report.duplicates, report.clips_written) == (3, 1, 5)
    assert report.quarantined_by_reason == {
        "empty file": 1,
        "no video stream": 1,
        "not a video container": 3,
        "too short": 1,
        "unsupported codec": 1,
    }
    assert not list(out.glob("*.tmp")) and not list((out / "clips").glob("*.tmp"))


@pytest.mark.slow
def test_two_workers_write_the_same_tables_as_one(corpus, tmp_path, local_ray):
    root, _ = corpus
    run_ingest(str(root), tmp_path / "w1", IngestConfig(workers=1), progress=False)
    run_ingest(str(root), tmp_path / "w2", IngestConfig(workers=2), progress=False)
    clips1, quarantine1 = _tables(tmp_path / "w1")
    clips2, quarantine2 = _tables(tmp_path / "w2")
    pd.testing.assert_frame_equal(clips1, clips2)
    pd.testing.assert_frame_equal(quarantine1, quarantine2)
    assert len(clips1) == 5


def test_a_video_over_the_frame_cache_is_decoded_again_into_the_same_clips(corpus, tmp_path, monkeypatch):
    from mugv.data import clip_writer

    root, _ = corpus
    run_ingest(str(root / "good"), tmp_path / "cached", IngestConfig(workers=1), progress=False)
    decoded_twice = []
    real_iter_frames = clip_writer.iter_frames
    monkeypatch.setattr(clip_writer, "iter_frames", lambda path: decoded_twice.append(path) or real_iter_frames(path))
    run_ingest(str(root / "good"), tmp_path / "redecoded", IngestConfig(workers=1, frame_cache_mb=0), progress=False)
    assert decoded_twice
    pd.testing.assert_frame_equal(_tables(tmp_path / "cached")[0], _tables(tmp_path / "redecoded")[0])


def test_long_shots_are_cut_into_pieces_that_keep_their_caption(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "out"
    run_ingest(str(root / "good"), out, IngestConfig(workers=1, max_frames=12), progress=False)
    clips, _ = _tables(out)
    three = clips[clips.source_uri.str.endswith("/three.mp4")]
    assert all(three.num_frames <= 12)
    assert list(three.clip_id.str[17:]) == ["0000_00", "0000_01", "0001_00", "0001_01", "0003_00", "0003_01"]
    assert list(three.caption) == ["shot one"] * 2 + ["shot two"] * 2 + ["shot three"] * 2
    assert list(three.start_frame) == [0, 12, 24, 36, 49, 61]


def test_empty_source_writes_empty_tables_with_the_schema(tmp_path):
    (tmp_path / "empty").mkdir()
    report = run_ingest(str(tmp_path / "empty"), tmp_path / "out", IngestConfig(workers=1), progress=False)
    import pyarrow.parquet as pq

    assert pq.read_schema(tmp_path / "out" / CLIPS_TABLE).names == clips_schema().names
    assert pq.read_schema(tmp_path / "out" / QUARANTINE_TABLE).names == quarantine_schema().names
    assert (report.sources_seen, report.clips_written) == (0, 0)


def test_manifest_source_with_manifest_captions(corpus, tmp_path):
    root, _ = corpus
    manifest = root / "list.jsonl"
    manifest.write_text(
        '{"uri": "good/nested/plain.mp4", "caption": "a caption from the manifest"}\n'
        '{"uri": "good/gone.mp4", "caption": "listed, never there"}\n'
        '{"uri": "../elsewhere.mp4"}\n'
        "not json at all\n"
        '{"uri": "bad/zero.mp4"}\n'
    )
    out = tmp_path / "out"
    report = run_ingest(str(manifest), out, IngestConfig(workers=1, captioner="manifest"), progress=False)
    clips, quarantine = _tables(out)
    assert list(clips.caption) == ["a caption from the manifest"]
    kinds = sorted(quarantine.kind)
    assert kinds == ["empty file", "escapes manifest root", "malformed manifest line", "missing"]
    assert (report.sources_seen, report.videos_ingested, report.quarantined) == (5, 1, 4)
    manifest.unlink()


def test_a_worker_crash_quarantines_that_video_only(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    real_map = ray_runner.map_tasks

    def map_with_a_crash(fn, tasks, cfg, workers=None, on_done=None):
        outcomes = real_map(fn, tasks, cfg, workers, on_done)  # three.mp4 writes its clips, then "dies"
        return [Outcome(error=CRASHED) if t.item.uri.endswith("/three.mp4") else o for t, o in zip(tasks, outcomes)]

    monkeypatch.setattr(ray_runner, "map_tasks", map_with_a_crash)
    out = tmp_path / "out"
    report = run_ingest(str(root / "good"), out, IngestConfig(workers=1), progress=False)
    clips, quarantine = _tables(out)
    crashed = quarantine[quarantine.kind == "worker crashed"]
    assert [Path(u).name for u in crashed.uri] == ["three.mp4"] and crashed.reason.iloc[0] == CRASHED
    assert sorted(Path(u).name for u in clips.source_uri) == ["odd_size.mp4", "plain.mp4"]
    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(Path(p).name for p in clips.path)
    assert report.quarantined_by_reason == {"worker crashed": 1}


def test_rerun_into_the_same_folder_leaves_only_the_new_clips(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "out"
    run_ingest(str(root / "good"), out, IngestConfig(workers=1), progress=False)
    run_ingest(str(root / "good" / "nested"), out, IngestConfig(workers=1), progress=False)
    clips, _ = _tables(out)
    assert len(clips) == 1
    assert [p.name for p in (out / "clips").iterdir()] == [Path(clips.path.iloc[0]).name]


@pytest.mark.slow
def test_ingest_from_s3_with_unreadable_objects(corpus, tmp_path, s3_server, monkeypatch, without_shared_ray):
    root, expected_bad = corpus
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="raw")
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".mp4", ".mkv", ".txt"):
            s3.upload_file(str(path), "raw", f"videos/{path.relative_to(root)}")
    s3.put_object(Bucket="raw", Key="videos/good/deleted_after_listing.mp4", Body=(root / "good/three.mp4").read_bytes()[:-1])

    real_list = storage.list_files

    def list_then_delete(prefix, extensions=None):
        entries = real_list(prefix, extensions)
        s3.delete_object(Bucket="raw", Key="videos/good/deleted_after_listing.mp4")
        return entries

    monkeypatch.setattr(storage, "list_files", list_then_delete)
    out = tmp_path / "out"
    report = run_ingest("s3://raw/videos", out, IngestConfig(workers=2), progress=False)
    clips, quarantine = _tables(out)
    got = {f: list(clips[clips.source_uri == f"s3://raw/videos/{f}"].caption) for f in GOOD_CLIPS}
    assert got == GOOD_CLIPS
    bad = {u.removeprefix("s3://raw/videos/"): k for u, k in zip(quarantine.uri, quarantine.kind) if k != "duplicate"}
    assert bad == {**expected_bad, "good/deleted_after_listing.mp4": "missing"}
    assert report.duplicates == 1

    monkeypatch.setattr(storage, "list_files", real_list)
    s3.put_object(
        Bucket="raw",
        Key="videos/list.csv",
        Body=b"uri,caption\ngood/three.mp4,from s3 manifest\ngood/not_there.mp4,absent\n../outside.mp4,x\n",
    )
    out2 = tmp_path / "out2"
    run_ingest("s3://raw/videos/list.csv", out2, IngestConfig(workers=1, captioner="manifest"), progress=False)
    clips2, quarantine2 = _tables(out2)
    assert list(clips2.caption) == ["from s3 manifest"] * 3
    assert dict(zip(quarantine2.uri, quarantine2.reason)) == {
        "s3://raw/videos/good/not_there.mp4": "missing: no such S3 object (NoSuchKey)",
        "../outside.mp4": "escapes manifest root: ../outside.mp4",
    }


class _FrameSamplingCaptioner:
    """A stand-in for a VLM backend: asks for frames and describes what it was given."""

    sample_frames = 3

    def caption(self, request):
        assert request.clip_path.exists()
        k, h, w, c = request.frames.shape
        return f"{k} frames {w}x{h}x{c} {request.frames.dtype} {request.end_s - request.start_s:.2f}s"


def test_a_frame_sampling_captioner_gets_frames_and_the_written_clip(corpus, tmp_path, monkeypatch):
    root, _ = corpus
    from mugv.data import clip_writer

    monkeypatch.setattr(clip_writer, "worker_captioner", lambda name: _FrameSamplingCaptioner())
    run_ingest(str(root / "good"), tmp_path / "out", IngestConfig(workers=1), progress=False)
    clips, _ = _tables(tmp_path / "out")
    odd = clips[clips.source_uri.str.endswith("odd_size.mp4")]
    assert list(odd.caption) == ["3 frames 94x62x3 uint8 1.33s"]
    assert all(c.startswith("3 frames ") for c in clips.caption)
