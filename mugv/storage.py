"""Local paths and s3:// URIs behind one API: list, read, atomic write, sha256.

S3 endpoint and credentials come from the standard AWS environment/config
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, ...); they are never logged. Every S3 request is
retried with backoff (S3_RETRIES, the one retry policy), and a GET whose body is cut off is read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
S3_DELETE_BATCH = 1000  # most keys one DeleteObjects request takes
# every S3 request: retried with backoff on 5xx, SlowDown, throttling, timeouts and dropped connections
S3_RETRIES = {"mode": "standard", "max_attempts": 10}
S3_TIMEOUTS_S = {"connect_timeout": 10, "read_timeout": 60}


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri}")
    return bucket, key


@lru_cache(maxsize=None)
def _s3_client(endpoint: str | None):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client("s3", endpoint_url=endpoint or None,
                                          config=Config(retries=dict(S3_RETRIES), **S3_TIMEOUTS_S))


def s3_client():
    """A boto3 S3 client; the endpoint comes from AWS_ENDPOINT_URL(_S3) when set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return _s3_client(endpoint)


@dataclass(frozen=True)
class Entry:
    """One listed object: its URI and size in bytes."""

    uri: str
    size: int


def list_files(root: str | os.PathLike, extensions: list[str] | None = None) -> list[Entry]:
    """Every file under a folder (recursive) or an s3:// prefix, sorted by URI."""
    exts = {e.lower() for e in extensions} if extensions else None

    def wanted(name: str) -> bool:
        return exts is None or os.path.splitext(name)[1].lower() in exts

    out: list[Entry] = []
    if is_s3(root):
        bucket, prefix = split_s3(str(root))
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/") and wanted(obj["Key"]):
                    out.append(Entry(f"s3://{bucket}/{obj['Key']}", int(obj["Size"])))
    else:
        base = Path(root)
        if not base.is_dir():
            raise FileNotFoundError(f"no such folder: {base}")
        for p in base.rglob("*"):
            if p.is_file() and wanted(p.name):
                out.append(Entry(str(p), p.stat().st_size))
    return sorted(out, key=lambda e: e.uri)


def exists(uri: str | os.PathLike) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(str(uri))
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError:
            return False
    return Path(uri).exists()


def _read_object(bucket: str, key: str, consume):
    """`consume(body)` of one GET; a body cut off midway (after botocore's own retries of the request) is
    fetched again, up to S3_RETRIES' attempts."""
    from botocore.exceptions import ConnectionClosedError, IncompleteReadError, ReadTimeoutError, ResponseStreamingError

    attempts = S3_RETRIES["max_attempts"]
    for attempt in range(attempts):
        try:
            return consume(s3_client().get_object(Bucket=bucket, Key=key)["Body"])
        except (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ConnectionClosedError):
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.1 * 2**attempt, 5.0))


def read_bytes(uri: str | os.PathLike) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return _read_object(bucket, key, lambda body: body.read())
    return Path(uri).read_bytes()


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike) -> Iterator[Path]:
    """A local path for `uri`: the file itself, or a temporary download of an S3 object."""
    if not is_s3(uri):
        yield Path(uri)
        return
    bucket, key = split_s3(str(uri))
    suffix = os.path.splitext(key)[1]
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="mugv-s3-")
    os.close(fd)
    try:
        s3_client().download_file(bucket, key, tmp)
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `dest` (local rename or S3 put).

    A failure inside the block leaves `dest` untouched and removes the temporary file. `durable`
    (local only) fsyncs the file before the rename and the folder after it, so the new content
    survives a power loss once the block has returned. This is the package's one atomic write:
    everything that must never be seen half-written goes through it (or `replace_durably`).
    """
    dest_s = str(dest)
    if is_s3(dest_s):
        fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(dest_s)[1], prefix="mugv-put-")
        os.close(fd)
        try:
            yield Path(tmp)
            bucket, key = split_s3(dest_s)
            s3_client().upload_file(tmp, bucket, key)  # an S3 PUT is atomic
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    d = Path(dest_s)
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f".{d.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.open("xb").close()  # created with the process umask's mode, as a plain open() of `dest` would be
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
            replace_durably(tmp, d)
        else:
            os.replace(tmp, d)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def fsync_path(path: Path) -> None:
    """fsync a local file or folder (a folder's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename a local file or folder onto `dest` atomically, then fsync the folder holding it."""
    os.replace(src, dest)
    fsync_path(Path(dest).parent)


def write_bytes(uri: str | os.PathLike, data: bytes, durable: bool = False) -> None:
    with atomic_path(uri, durable) as tmp:
        tmp.write_bytes(data)


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8", durable: bool = False) -> None:
    write_bytes(uri, text.encode(encoding), durable)


def copy_file(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy between any two of local/S3, atomically at the destination."""
    with local_copy(src) as s, atomic_path(dest) as tmp:
        shutil.copyfile(s, tmp)


def remove_tree(root: str | os.PathLike) -> None:
    """Delete a folder, or every object under an s3:// prefix (a missing one is not an error)."""
    if is_s3(root):
        bucket, _ = split_s3(str(root))
        keys = [{"Key": split_s3(e.uri)[1]} for e in list_files(root)]
        for i in range(0, len(keys), S3_DELETE_BATCH):
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + S3_DELETE_BATCH]})
    else:
        shutil.rmtree(root, ignore_errors=True)


def sha256_stream(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(CHUNK), b""):
        h.update(block)
    return h.hexdigest()


def sha256(uri: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return _read_object(bucket, key, sha256_stream)
    with open(uri, "rb") as f:
        return sha256_stream(f)
