"""CheckpointDir: staging, atomic publish with `latest`, keep-k rotation; the VAE and DiT layouts on it."""

from __future__ import annotations

import pytest

from mugv.training.checkpoint_dir import LATEST, CheckpointDir, step_name


def _stage(folders: CheckpointDir, step: int, complete: bool = True):
    tmp = folders.staging(step)
    (tmp / "weights.bin").write_bytes(bytes([step]))
    if complete:
        (tmp / "marker.json").write_text("{}")
    return tmp


def test_publish_points_latest_and_rotation_keeps_the_newest(tmp_path):
    folders = CheckpointDir(tmp_path / "ck", keep=2, marker="marker.json")
    assert folders.latest() is None
    for step in (2, 4, 6):
        name = step_name(step)
        assert folders.publish(_stage(folders, step), name) == tmp_path / "ck" / name
        folders.rotate(keep_name=name)
        assert folders.latest() == tmp_path / "ck" / name
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [LATEST, "step_0000004", "step_0000006"]
    assert (tmp_path / "ck" / LATEST).read_text() == "step_0000006"


def test_unfinished_staging_is_never_published_and_is_cleared_by_the_next_save(tmp_path):
    folders = CheckpointDir(tmp_path / "ck", keep=2, marker="marker.json")
    folders.publish(_stage(folders, 1), step_name(1))
    killed = _stage(folders, 2, complete=False)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        folders.publish(killed, step_name(2))
    assert folders.latest() == tmp_path / "ck" / "step_0000001"
    folders.staging(3)
    assert not killed.exists()


def test_republishing_a_step_replaces_it(tmp_path):
    folders = CheckpointDir(tmp_path / "ck", keep=1, marker="marker.json")
    folders.publish(_stage(folders, 5), step_name(5))
    tmp = _stage(folders, 5)
    (tmp / "weights.bin").write_bytes(b"new")
    folders.publish(tmp, step_name(5))
    assert (folders.latest() / "weights.bin").read_bytes() == b"new"
