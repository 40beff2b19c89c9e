"""Storage: local and s3:// listing, atomic writes, hashing (S3 on a moto server on 127.0.0.1)."""

import hashlib

import pytest

from mugv import storage


def test_local_list_read_write_hash(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.mp4").write_bytes(b"123")
    (tmp_path / "a" / "y.MOV").write_bytes(b"45")
    (tmp_path / "a" / "notes.txt").write_bytes(b"n")
    entries = storage.list_files(tmp_path, [".mp4", ".mov"])
    assert [e.uri.rsplit("/", 1)[1] for e in entries] == ["x.mp4", "y.MOV"]
    assert [e.size for e in entries] == [3, 2]
    assert storage.sha256(entries[0].uri) == hashlib.sha256(b"123").hexdigest()
    dest = tmp_path / "out" / "f.bin"
    storage.write_bytes(dest, b"hello")
    assert storage.read_bytes(dest) == b"hello"
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    dest = tmp_path / "table.parquet"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with storage.atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def test_durable_write_and_replace_fsync_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = storage.os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    storage.write_text(tmp_path / "a" / "latest", "step_1", durable=True)
    assert (tmp_path / "a" / "latest").read_text() == "step_1" and len(synced) == 2  # the file, then its folder
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["latest"]  # no temporary left
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "x").write_text("x")
    storage.replace_durably(tmp_path / "staged", tmp_path / "final")
    assert (tmp_path / "final" / "x").read_text() == "x" and not (tmp_path / "staged").exists() and len(synced) == 3
    storage.write_text(tmp_path / "plain", "p")
    assert len(synced) == 3  # not durable: no fsync
    (tmp_path / "opened").write_text("o")
    assert (tmp_path / "plain").stat().st_mode == (tmp_path / "opened").stat().st_mode  # the umask's mode, not 0600


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.list_files(tmp_path / "nope")


def test_split_s3():
    assert storage.split_s3("s3://bkt/a/b.mp4") == ("bkt", "a/b.mp4")
    with pytest.raises(ValueError):
        storage.split_s3("s3:///key")


def test_s3_roundtrip(s3_server, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="mugv-storage")
    storage.write_bytes("s3://mugv-storage/raw/v1.mp4", b"abc")
    storage.write_text("s3://mugv-storage/raw/sub/v2.mp4", "defg")
    storage.write_text("s3://mugv-storage/other/v3.mp4", "x")
    entries = storage.list_files("s3://mugv-storage/raw", [".mp4"])
    assert [(e.uri, e.size) for e in entries] == [
        ("s3://mugv-storage/raw/sub/v2.mp4", 4),
        ("s3://mugv-storage/raw/v1.mp4", 3),
    ]
    assert storage.read_bytes("s3://mugv-storage/raw/v1.mp4") == b"abc"
    assert storage.sha256("s3://mugv-storage/raw/v1.mp4") == hashlib.sha256(b"abc").hexdigest()
    assert storage.exists("s3://mugv-storage/raw/v1.mp4")
    assert not storage.exists("s3://mugv-storage/raw/nope.mp4")
    with storage.local_copy("s3://mugv-storage/raw/sub/v2.mp4") as p:
        assert p.read_text() == "defg"
    assert not p.exists()
    storage.copy_file("s3://mugv-storage/raw/v1.mp4", tmp_path / "v1.mp4")
    assert (tmp_path / "v1.mp4").read_bytes() == b"abc"
