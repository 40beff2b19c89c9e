"""Checkpoints are loaded only when their sha256 manifest vouches for every file: a crafted pickle never runs, a
damaged latest checkpoint is passed over for the previous one."""

import logging
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from mugv.models.dit.config import get_preset
from mugv.models.dit.convert import load_megatron, save_megatron
from mugv.models.dit.model import MUGDiT
from mugv.models.dit.spec import local_block_spec
from mugv.training.checkpoint import CheckpointConfig, Checkpointer, load_checkpoint
from mugv.training.checkpoint_dir import MANIFEST, CheckpointIntegrityError, write_manifest


class _CreatesMarker:
    """Unpickling this creates the file at `path` (as a hostile `.metadata` would run any code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _crafted(marker) -> bytes:
    return pickle.dumps(_CreatesMarker(marker))


def _model() -> MUGDiT:
    torch.manual_seed(0)
    return MUGDiT(get_preset("tiny"), local_block_spec())


@pytest.fixture(scope="module")
def saved(process_group, tmp_path_factory):
    """A checkpoints root with two kept checkpoints (steps 1 and 2) of a tiny DiT."""
    root = tmp_path_factory.mktemp("ck")
    model = _model()
    saver = Checkpointer(root, CheckpointConfig(keep=2), "data", run_id="run")
    for step in (1, 2):
        saver.save(step, model, None, None, {"stage": "images"})
    return root


def _copy(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ck")
    return tmp_path / "ck"


def test_the_crafted_pickle_would_run(tmp_path):
    """The payload is live: unpickling it creates its marker (so the refusals below are what stops it)."""
    marker = tmp_path / "ran"
    pickle.loads(_crafted(marker))
    assert marker.exists()


def test_a_save_writes_a_manifest_of_every_file(saved):
    folder = saved / "step_0000002"
    assert (folder / MANIFEST).is_file()
    assert (folder / ".metadata").is_file() and (folder / "meta.json").is_file()
    Checkpointer(saved, CheckpointConfig(keep=2), "data", run_id="run").intact(folder)  # checks out


@pytest.mark.parametrize("keep_manifest", [True, False])
def test_a_crafted_metadata_is_refused_before_it_is_unpickled(saved, tmp_path, keep_manifest):
    ck = _copy(saved, tmp_path)
    marker = tmp_path / "ran"
    for step in ("step_0000001", "step_0000002"):
        (ck / step / ".metadata").write_bytes(_crafted(marker))
        if not keep_manifest:
            (ck / step / MANIFEST).unlink()
    with pytest.raises(CheckpointIntegrityError, match=r"\.metadata" if keep_manifest else MANIFEST):
        load_checkpoint(ck / "step_0000002", _model())
    with pytest.raises(CheckpointIntegrityError, match="no intact checkpoint"):
        Checkpointer(ck, CheckpointConfig(keep=2), "data", run_id="run").resumable()
    from mugv.inference.dit_loader import load_dit

    with pytest.raises(CheckpointIntegrityError):
        load_dit(ck)
    assert not marker.exists()


def test_an_added_file_is_refused(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    (ck / "step_0000002" / "extra.pt").write_bytes(b"x")
    with pytest.raises(CheckpointIntegrityError, match="extra.pt"):
        load_checkpoint(ck / "step_0000002", _model())


def test_a_truncated_shard_falls_back_to_the_previous_checkpoint(saved, tmp_path, caplog):
    ck = _copy(saved, tmp_path)
    shard = next((ck / "step_0000002").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    checkpointer = Checkpointer(ck, CheckpointConfig(keep=2), "data", run_id="run")
    with caplog.at_level(logging.WARNING, logger="mugv.training.checkpoint"):
        resumed = checkpointer.resumable()
    assert resumed == ck / "step_0000001"
    assert any("damaged" in r.getMessage() and shard.name in r.getMessage() for r in caplog.records)
    assert load_checkpoint(resumed, _model())["step"] == 1


def test_a_damaged_checkpoint_without_an_older_one_fails_clearly(saved, tmp_path):
    ck = _copy(saved, tmp_path)
    shutil.rmtree(ck / "step_0000001")
    shard = next((ck / "step_0000002").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointIntegrityError, match=f"no intact checkpoint.*{shard.name}"):
        Checkpointer(ck, CheckpointConfig(keep=2), "data", run_id="run").resumable()


def test_a_tampered_mirror_is_not_downloaded_into_place(saved, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(saved, mirror)
    (mirror / "step_0000002" / ".metadata").write_bytes(_crafted(tmp_path / "ran"))
    local = Checkpointer(tmp_path / "local", CheckpointConfig(keep=2), "data", mirror=str(mirror), run_id="run")
    with pytest.raises(CheckpointIntegrityError, match=r"mirror .*\.metadata"):
        local.pull_mirror()
    assert not (tmp_path / "local" / "latest").exists()
    assert not (tmp_path / "ran").exists()


def test_a_converted_megatron_folder_is_verified(process_group, tmp_path):
    out = tmp_path / "megatron"
    save_megatron(_model(), out)
    assert load_megatron(out) is not None
    marker = tmp_path / "ran"
    (out / ".metadata").write_bytes(_crafted(marker))
    with pytest.raises(CheckpointIntegrityError, match=r"\.metadata"):
        load_megatron(out)
    proc = subprocess.run([sys.executable, "-m", "mugv.cli", "convert", str(out), str(tmp_path / "o.safetensors"),
                           "--from", "megatron", "--to", "official"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and ".metadata" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_write_manifest_refuses_a_symlink(tmp_path):
    (tmp_path / "a").write_text("x")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(CheckpointIntegrityError, match="not a regular file"):
        write_manifest(tmp_path)
