"""Atomic publication of a stage's outputs: write beside the destination, fsync, rename into place.

A stage writes a whole output folder into a sibling staging folder (`staged_dir`); only a complete one
is renamed onto the destination, so a reader (DVC, the next stage) sees the old folder, no folder, or
the complete new one, never a mix. Leftovers of a killed run (`.NAME.staging-*`, `.NAME.retired-*`)
are removed by the next run. Single files go through `atomic_write_bytes` (mugv.storage's atomic write).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from mugv import storage

STAGING = "staging"
RETIRED = "retired"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # renameat2 flag (Linux >= 3.15): swap two paths in one step


def sibling(final: str | os.PathLike, kind: str) -> Path:
    """A fresh hidden path beside `final`: `.NAME.<kind>-<random>`."""
    final = Path(final)
    return final.parent / f".{final.name}.{kind}-{uuid.uuid4().hex[:12]}"


def leftovers(final: str | os.PathLike) -> list[Path]:
    """The staging and retired folders a killed run left beside `final`."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    return sorted(p for kind in (STAGING, RETIRED) for p in final.parent.glob(f".{final.name}.{kind}-*"))


def remove_leftovers(final: str | os.PathLike) -> None:
    """Delete what a killed run left beside `final` (never `final` itself)."""
    for path in leftovers(final):
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (and `root`), so a rename of it publishes durable bytes."""
    root = Path(root)
    for folder, _, files in os.walk(root):
        for name in files:
            storage.fsync_path(Path(folder) / name)
        storage.fsync_path(Path(folder))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Make the complete folder `tmp` be `final`: fsync it, then swap it in (the old `final`, if any, is removed).

    With renameat2 the swap is one step (`final` is old or new at every instant); elsewhere the old
    folder is first renamed aside, so a kill in between leaves `final` absent, never partial.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    if final.exists() and final.is_dir() and _exchange(tmp, final):
        retired = tmp  # after the swap `tmp` holds the old folder
    else:
        retired = sibling(final, RETIRED)
        if final.exists():
            os.replace(final, retired)
        os.replace(tmp, final)
    storage.fsync_path(final.parent)
    if retired.exists():
        shutil.rmtree(retired) if retired.is_dir() else retired.unlink()
    return final


@contextlib.contextmanager
def staged_dir(final: str | os.PathLike, publish_on: tuple[type[BaseException], ...] = (),
               carry: bool = True) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; when the block returns (or raises one of `publish_on`,
    e.g. a failed data gate whose report must be seen) it is published as `final`, otherwise deleted and
    `final` left as it was. With `carry`, entries of the old `final` the block did not write are kept
    (`carry_foreign`); without, `final` becomes exactly what the block wrote. Leftovers of killed runs are
    removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final)
    tmp = sibling(final, STAGING)
    tmp.mkdir()
    try:
        yield tmp
    except publish_on:
        if carry:
            carry_foreign(final, tmp)
        publish_dir(tmp, final)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if carry:
        carry_foreign(final, tmp)
    publish_dir(tmp, final)


def carry_foreign(final: Path, tmp: Path) -> None:
    """Copy into `tmp` what `final` holds that the stage did not write (DVC's `.gitignore`, a user's file):
    replacing the folder replaces the stage's outputs only. Copied, not moved, so a kill loses nothing."""
    if not final.is_dir():
        return
    for entry in final.iterdir():
        if not (tmp / entry.name).exists() and not entry.is_symlink():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that it holds the old bytes or all of `data`, durably (temp file, fsync, rename)."""
    storage.write_bytes(path, data, durable=True)
