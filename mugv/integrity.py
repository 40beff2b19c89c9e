"""Sealed folders: a sha256 manifest written last, and checked before anything in the folder is opened."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mugv import storage

MANIFEST = "manifest.sha256.json"


class CheckpointIntegrityError(ValueError):
    """A checkpoint folder whose files do not match its sha256 manifest (or that has none): never loaded."""


def _folder_files(folder: Path) -> dict[str, Path]:
    """Every entry under `folder` but the manifest, by relative posix path (links and other non-files included)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.name != MANIFEST and not (p.is_dir() and not p.is_symlink())}


def write_manifest(folder: str | os.PathLike) -> Path:
    """Seal a complete checkpoint folder: `manifest.sha256.json` maps each file's relative path to its sha256.

    Written last (durably), before the folder is published: a loader checks it before opening anything else."""
    folder = Path(folder)
    files = {}
    for name, path in _folder_files(folder).items():
        if path.is_symlink() or not path.is_file():
            raise CheckpointIntegrityError(f"{path} is not a regular file: a checkpoint holds regular files only")
        files[name] = storage.sha256(path)
    storage.write_text(folder / MANIFEST, json.dumps({"sha256": files}, indent=1, sort_keys=True), durable=True)
    return folder / MANIFEST


def verify_manifest(folder: str | os.PathLike) -> None:
    """Raise CheckpointIntegrityError naming the first file of `folder` that its manifest does not vouch for.

    Refused: no manifest, an unreadable one, a file missing, changed (truncated, replaced), added, or one that is not
    a regular file. Nothing of the folder but the manifest (JSON) is parsed: call this before any unpickling load.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise CheckpointIntegrityError(f"{folder} has no {MANIFEST}: an unverified checkpoint is not loaded "
                                       "(written by another tool or an older mugv, or not complete)")
    try:
        expected = json.loads(manifest_path.read_text())["sha256"]
        if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
            raise TypeError("sha256 is not a mapping of path to digest")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointIntegrityError(f"{manifest_path} is not a valid manifest ({e})") from None
    present = _folder_files(folder)
    extra = sorted(set(present) - set(expected))
    if extra:
        raise CheckpointIntegrityError(f"{present[extra[0]]} is not in {MANIFEST}: the checkpoint was changed after it was written")
    for name, digest in sorted(expected.items()):
        path = folder / name
        if name not in present:
            raise CheckpointIntegrityError(f"{path} is missing: the checkpoint is incomplete")
        if path.is_symlink() or not path.is_file():
            raise CheckpointIntegrityError(f"{path} is not a regular file: a checkpoint holds regular files only")
        if storage.sha256(path) != digest:
            raise CheckpointIntegrityError(f"{path} does not match its sha256 in {MANIFEST}: damaged or altered")
