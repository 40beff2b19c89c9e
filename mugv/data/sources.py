"""Turn an ingest SOURCE (folder, s3:// prefix, or .csv/.jsonl manifest) into items to ingest plus quarantined entries."""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from mugv import storage

MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class SourceItem:
    """One video to ingest: where it is, and the caption its manifest line gave (if any)."""

    uri: str
    manifest_caption: str | None = None


@dataclass(frozen=True)
class Quarantined:
    """An input that was not ingested: its URI, a short kind to count by, and the full reason."""

    uri: str
    kind: str
    reason: str


@dataclass
class SourceListing:
    """What a SOURCE holds: items in URI order, and entries that failed before any read."""

    kind: str  # "folder", "s3", "manifest"
    items: list[SourceItem] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return len(self.items) + len(self.quarantined)


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES)


class SourceNotAllowed(ValueError):
    """An S3 source outside the allowed buckets (params `ingest.allowed_buckets`); refused before any listing."""


def check_bucket(uri: str, allowed_buckets: list[str]) -> None:
    """Raise SourceNotAllowed when `uri` is an s3:// URI whose bucket is not in `allowed_buckets` ([] = any)."""
    if allowed_buckets and storage.is_s3(uri):
        bucket = storage.split_s3(uri)[0]
        if bucket not in allowed_buckets:
            raise SourceNotAllowed(f"bucket {bucket!r} of {uri} is not in ingest.allowed_buckets "
                                   f"({', '.join(allowed_buckets)})")


def list_source(source: str, extensions: list[str], allowed_buckets: list[str] = ()) -> SourceListing:
    """Resolve SOURCE into items; nothing here reads a video, so this never fails on bad videos.

    A folder is listed recursively (files resolving outside it, e.g. through symlinks, are
    quarantined); an s3:// prefix is listed with `storage.list_files`; a manifest is parsed
    line by line (see `read_manifest`). An S3 source (prefix or manifest) outside `allowed_buckets`
    raises SourceNotAllowed before anything is read; a manifest's entries stay in its own bucket.
    """
    check_bucket(source, list(allowed_buckets))
    if is_manifest(source):
        return read_manifest(source)
    if storage.is_s3(source):
        entries = storage.list_files(source, extensions)
        return SourceListing("s3", items=[SourceItem(e.uri) for e in entries])
    root = Path(source).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {source}")
    wanted = {e.lower() for e in extensions} if extensions else None
    listing = SourceListing("folder")
    for path in sorted(Path(source).rglob("*"), key=str):
        if path.is_dir() or (wanted is not None and path.suffix.lower() not in wanted):
            continue
        uri = str(path)
        if not path.resolve().is_relative_to(root):
            listing.quarantined.append(Quarantined(uri, "escapes source root", "escapes source root"))
        elif not_regular := not_a_regular_file(path):
            listing.quarantined.append(Quarantined(uri, "not a regular file", not_regular))
        else:
            listing.items.append(SourceItem(uri))
    return listing


def not_a_regular_file(path: str | os.PathLike) -> str | None:
    """Why a local path may not be opened for reading (a FIFO, socket, device: opening one can block), or None.

    A missing path gives None: it is reported as missing when it is read."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: what an open would reach
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISDIR: "a folder"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"not a regular file: {kind}, never opened"


def _manifest_root(manifest: str) -> str:
    if storage.is_s3(manifest):
        return manifest.rsplit("/", 1)[0]
    return str(Path(manifest).resolve().parent)


def resolve_entry(root: str, uri: str) -> str | None:
    """The absolute URI of a manifest entry, or None when it escapes the manifest's folder `root`.

    Relative entries resolve against `root`; absolute paths and s3:// URIs must lie under it.
    """
    if storage.is_s3(root):
        root_bucket, root_key = storage.split_s3(root)
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            if ".." in key.split("/"):
                return None
        elif uri.startswith("/") or "://" in uri:
            return None
        else:
            bucket, key = root_bucket, posixpath.normpath(posixpath.join(root_key, uri))
        prefix = root_key.rstrip("/") + "/" if root_key else ""
        if bucket != root_bucket or key.startswith("..") or not key.startswith(prefix):
            return None
        return f"s3://{bucket}/{key}"
    if storage.is_s3(uri) or "://" in uri:
        return None
    resolved_path = (Path(root) / uri).resolve()
    return str(resolved_path) if resolved_path.is_relative_to(Path(root)) else None


def _decode_lines(data: bytes) -> tuple[str, list[tuple[int, str]]]:
    """A manifest's text with each line that is not valid UTF-8, or holds a NUL byte, blanked (so the other lines
    keep their numbers and are parsed), and (line number, problem) for each blanked line."""
    lines, bad = data.split(b"\n"), []
    for n, line in enumerate(lines):
        problem = "a NUL byte" if b"\0" in line else None
        if problem is None:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = f"invalid UTF-8 at byte {e.start}"
        if problem is not None:
            lines[n] = b""
            bad.append((n + 1, problem))
    return b"\n".join(lines).decode("utf-8"), bad


def _rows_csv(text: str) -> list[tuple[int, dict | str]]:
    """(line number, row dict or error message) for each data line of a CSV with a header."""
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[int, dict | str]] = []
    try:
        header = next(reader)
    except StopIteration:
        return rows
    header = [h.strip() for h in header]
    if "uri" not in header:
        return [(1, f"header has no 'uri' column: {header}")]
    try:
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                rows.append((reader.line_num, f"expected {len(header)} fields, got {len(values)}"))
            else:
                rows.append((reader.line_num, dict(zip(header, values))))
    except csv.Error as e:
        rows.append((reader.line_num, f"csv error: {e}"))
    return rows


def _rows_jsonl(text: str) -> list[tuple[int, dict | str]]:
    rows: list[tuple[int, dict | str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((n, f"invalid JSON: {e.msg}"))
            continue
        rows.append((n, obj if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"))
    return rows


def read_manifest(manifest: str) -> SourceListing:
    """Parse a .csv (header with `uri`, optional `caption`) or .jsonl manifest (objects with the same keys).

    A malformed line is quarantined as `<manifest>#L<n>` ("malformed manifest line"); an entry
    resolving outside the manifest's folder is quarantined ("escapes manifest root"). Whether
    an entry exists is checked later, when it is read.
    """
    text, bad_lines = _decode_lines(storage.read_bytes(manifest))
    parse = _rows_csv if manifest.lower().endswith(".csv") else _rows_jsonl
    root = _manifest_root(manifest)
    listing = SourceListing("manifest")
    for line_no, problem in bad_lines:
        listing.quarantined.append(Quarantined(f"{manifest}#L{line_no}", "malformed manifest line",
                                               f"malformed manifest line {line_no}: {problem}"))
    for line_no, row in parse(text):
        where = f"{manifest}#L{line_no}"
        if isinstance(row, str):
            listing.quarantined.append(Quarantined(where, "malformed manifest line", f"malformed manifest line {line_no}: {row}"))
            continue
        uri = row.get("uri")
        caption = row.get("caption")
        if not isinstance(uri, str) or not uri.strip():
            listing.quarantined.append(
                Quarantined(where, "malformed manifest line", f"malformed manifest line {line_no}: no 'uri'")
            )
            continue
        if caption is not None and not isinstance(caption, str):
            listing.quarantined.append(
                Quarantined(where, "malformed manifest line", f"malformed manifest line {line_no}: 'caption' is not text")
            )
            continue
        resolved = resolve_entry(root, uri.strip())
        if resolved is None:
            listing.quarantined.append(Quarantined(uri, "escapes manifest root", f"escapes manifest root: {uri}"))
            continue
        not_regular = None if storage.is_s3(resolved) else not_a_regular_file(resolved)
        if not_regular:
            listing.quarantined.append(Quarantined(resolved, "not a regular file", not_regular))
            continue
        listing.items.append(SourceItem(resolved, caption.strip() if caption else None))
    listing.items.sort(key=lambda i: i.uri)
    return listing


def describe_read_error(exc: BaseException) -> tuple[str, str] | None:
    """(kind, reason) for an error raised while reading an input; None if it is not a read error."""
    if isinstance(exc, FileNotFoundError):
        return ("missing", "missing: no such file")
    if isinstance(exc, (IsADirectoryError, PermissionError)):
        return ("unreadable", f"unreadable: {exc.strerror or exc}")
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "")) or "unknown"
        if code in ("404", "NoSuchKey", "NotFound"):
            return ("missing", f"missing: no such S3 object ({code})")
        return ("unreadable", f"unreadable S3 object: {code}")
    if isinstance(exc, BotoCoreError):
        return ("unreadable", f"unreadable S3 object: {exc}")
    if isinstance(exc, OSError):
        return ("unreadable", f"unreadable: {exc.strerror or exc}")
    return None


def sidecar_uri(video_uri: str) -> str:
    """The caption sidecar beside a video: same name, `.txt` suffix (local or S3)."""
    base, _ = os.path.splitext(video_uri)
    return base + ".txt"
