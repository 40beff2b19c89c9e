"""Checkpoint folders of any format: stage in `step_N.tmp/`, seal with a sha256 manifest, publish atomically, point `latest`, keep the newest k."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mugv import storage
from mugv.integrity import MANIFEST, CheckpointIntegrityError, verify_manifest, write_manifest  # noqa: F401

LATEST = "latest"
STAGING_SUFFIX = ".tmp"
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
