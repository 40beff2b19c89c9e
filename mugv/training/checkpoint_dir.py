"""Checkpoint folders of any format: stage in `step_N.tmp/`, seal with a sha256 manifest, publish atomically, point `latest`, keep the newest k."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mugv import storage

LATEST = "latest"
STAGING_SUFFIX = ".tmp"
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


def step_name(step: int) -> str:
    """The folder name of the checkpoint of `step`: `step_0000042`."""
    return f"step_{step:07d}"


class CheckpointDir:
    """The one way a trainer publishes a checkpoint under `root`, whatever the files inside.

    Layout: `root/step_XXXXXXX/` folders and `root/latest` naming the newest complete one. A
    writer fills `staging(step)` (a `step_XXXXXXX.tmp/` folder), writes `marker` last, then calls
    `publish`: the folder is renamed into place (fsynced) and only then `latest` is rewritten
    (atomically, fsynced). A save killed at any point leaves the previous checkpoint as latest;
    staging folders are never loaded and are removed by the next `staging` call. `rotate` keeps
    the newest `keep` complete checkpoints.
    """

    def __init__(self, root: str | os.PathLike, keep: int, marker: str) -> None:
        self.root = Path(root)
        self.keep = keep
        self.marker = marker

    def staging(self, step: int) -> Path:
        """An empty `step_N.tmp/` folder to write a checkpoint into (stale staging folders are removed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_staging()
        tmp = self.staging_path(step_name(step))
        tmp.mkdir()
        return tmp

    def staging_path(self, name: str) -> Path:
        """Where checkpoint `name` is written before `publish` (`root/name.tmp`)."""
        return self.root / f"{name}{STAGING_SUFFIX}"

    def remove_staging(self) -> None:
        """Delete every unfinished `*.tmp` entry under root (the leftovers of a killed save)."""
        for stale in self.root.glob(f"*{STAGING_SUFFIX}"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def publish(self, tmp: Path, name: str) -> Path:
        """Rename a complete staging folder to `root/name` (replacing one of that name); point `latest` at it."""
        if not (tmp / self.marker).exists():
            raise FileNotFoundError(f"{tmp} has no {self.marker}: not a complete checkpoint")
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        storage.replace_durably(tmp, final)
        storage.write_text(self.root / LATEST, name, durable=True)
        return final

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, or None when there is no pointer."""
        pointer = self.root / LATEST
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        if not (path / self.marker).exists():
            raise FileNotFoundError(f"{pointer} names {path.name}, which is not a complete checkpoint")
        return path

    def complete(self) -> list[Path]:
        """The published checkpoint folders (step_*, not staging) that hold the marker, newest first."""
        folders = [p for p in self.root.glob("step_*") if p.is_dir() and not p.name.endswith(STAGING_SUFFIX)]
        return sorted((p for p in folders if (p / self.marker).exists()), key=lambda p: p.name, reverse=True)

    def beyond_keep(self, names: set[str], keep_name: str) -> list[str]:
        """Checkpoint names (step_*, not staging) older than the newest `keep`, never `keep_name`."""
        complete = sorted(n for n in names if n.startswith("step_") and not n.endswith(STAGING_SUFFIX))
        return [n for n in complete[: -self.keep] if n != keep_name]

    def rotate(self, keep_name: str) -> None:
        """Delete the complete checkpoints beyond the newest `keep` (never `keep_name`)."""
        names = {p.name for p in self.root.glob("step_*") if p.is_dir()}
        for old in self.beyond_keep(names, keep_name):
            shutil.rmtree(self.root / old)

    def clear(self) -> None:
        """Remove every checkpoint and the pointer (a new run replaces a stale one)."""
        shutil.rmtree(self.root, ignore_errors=True)
