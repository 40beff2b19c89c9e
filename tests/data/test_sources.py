"""Ingest sources: folder listing, csv/jsonl manifests (malformed lines, escaping URIs), read-error reasons."""

import json
import os

import pytest
from botocore.exceptions import ClientError

from mugv.data.sources import describe_read_error, list_source, read_manifest, resolve_entry, sidecar_uri

EXTS = [".mp4", ".mkv"]


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_is_listed_recursively_and_symlinks_out_of_it_are_quarantined(tmp_path):
    root = tmp_path / "videos"
    _touch(root / "a.mp4")
    _touch(root / "deep" / "er" / "b.MKV")
    _touch(root / "notes.txt")
    outside = _touch(tmp_path / "elsewhere" / "secret.mp4")
    os.symlink(outside, root / "link.mp4")
    listing = list_source(str(root), EXTS)
    assert listing.kind == "folder"
    assert [os.path.relpath(i.uri, root) for i in listing.items] == ["a.mp4", "deep/er/b.MKV"]
    assert [(os.path.basename(q.uri), q.kind) for q in listing.quarantined] == [("link.mp4", "escapes source root")]
    assert listing.seen == 3


def test_csv_manifest_resolves_relative_entries_and_quarantines_bad_lines(tmp_path):
    root = tmp_path / "set"
    _touch(root / "a.mp4")
    _touch(root / "sub" / "b.mp4")
    outside = _touch(tmp_path / "outside.mp4")
    manifest = root / "list.csv"
    manifest.write_text(
        "uri,caption\n"
        "a.mp4,a cat\n"
        "sub/b.mp4,\"a dog, running\"\n"
        "sub/../a.mp4,same file through a detour\n"
        "../outside.mp4,escapes\n"
        f"{outside},absolute outside\n"
        f"{root / 'sub' / 'b.mp4'},absolute inside\n"
        "s3://bucket/x.mp4,other storage\n"
        "too,many,fields\n"
        ",no uri\n"
        "\n"
        "missing.mp4,listed but absent\n"
    )
    listing = read_manifest(str(manifest))
    assert listing.kind == "manifest"
    got = [(os.path.relpath(i.uri, root), i.manifest_caption) for i in listing.items]
    assert got == [
        ("a.mp4", "a cat"),
        ("a.mp4", "same file through a detour"),
        ("missing.mp4", "listed but absent"),
        ("sub/b.mp4", "a dog, running"),
        ("sub/b.mp4", "absolute inside"),
    ]
    kinds = sorted((q.kind, q.uri.rsplit("#", 1)[-1] if "#" in q.uri else os.path.basename(q.uri)) for q in listing.quarantined)
    assert kinds == [
        ("escapes manifest root", "outside.mp4"),
        ("escapes manifest root", "outside.mp4"),
        ("escapes manifest root", "x.mp4"),
        ("malformed manifest line", "L10"),
        ("malformed manifest line", "L9"),
    ]
    assert listing.seen == 10


def test_csv_manifest_without_uri_column_is_one_malformed_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,caption\na.mp4,x\n")
    listing = read_manifest(str(manifest))
    assert listing.items == []
    assert [q.reason for q in listing.quarantined] == ["malformed manifest line 1: header has no 'uri' column: ['path', 'caption']"]


def test_jsonl_manifest_quarantines_each_malformed_line(tmp_path):
    _touch(tmp_path / "a.mp4")
    manifest = tmp_path / "m.jsonl"
    lines = [
        json.dumps({"uri": "a.mp4", "caption": "hello"}),
        "{not json",
        json.dumps(["a.mp4"]),
        json.dumps({"caption": "no uri"}),
        json.dumps({"uri": "a.mp4", "caption": 3}),
        "",
        json.dumps({"uri": "../../etc/passwd.mp4"}),
        json.dumps({"uri": "a.mp4"}),
    ]
    manifest.write_text("\n".join(lines) + "\n")
    listing = read_manifest(str(manifest))
    assert [(os.path.basename(i.uri), i.manifest_caption) for i in listing.items] == [("a.mp4", "hello"), ("a.mp4", None)]
    reasons = sorted(q.reason for q in listing.quarantined)
    assert reasons[0] == "escapes manifest root: ../../etc/passwd.mp4"
    assert reasons[1].startswith("malformed manifest line 2: invalid JSON")
    assert reasons[2:] == [
        "malformed manifest line 3: expected a JSON object, got list",
        "malformed manifest line 4: no 'uri'",
        "malformed manifest line 5: 'caption' is not text",
    ]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("a.mp4", "s3://b/data/a.mp4"),
        ("sub/../a.mp4", "s3://b/data/a.mp4"),
        ("../a.mp4", None),
        ("../data2/a.mp4", None),
        ("/abs/a.mp4", None),
        ("s3://b/data/x/a.mp4", "s3://b/data/x/a.mp4"),
        ("s3://b/data/../other/a.mp4", None),
        ("s3://b/data2/a.mp4", None),
        ("s3://other/data/a.mp4", None),
        ("http://host/a.mp4", None),
    ],
)
def test_s3_manifest_entries_stay_under_the_manifest_prefix(uri, expected):
    assert resolve_entry("s3://b/data", uri) == expected


def test_read_errors_get_kinds():
    assert describe_read_error(FileNotFoundError(2, "No such file", "/x.mp4")) == ("missing", "missing: no such file")
    missing = ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
    assert describe_read_error(missing) == ("missing", "missing: no such S3 object (NoSuchKey)")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
    assert describe_read_error(denied) == ("unreadable", "unreadable S3 object: AccessDenied")
    assert describe_read_error(ValueError("not a read error")) is None


def test_sidecar_sits_beside_the_video():
    assert sidecar_uri("s3://b/v/clip.mp4") == "s3://b/v/clip.txt"
    assert sidecar_uri("/data/v/clip.MKV") == "/data/v/clip.txt"
