"""A full disk during a checkpoint save: one clear line, the previous checkpoint stays `latest` and loads."""

import errno
import json
from pathlib import Path

import pytest
import torch

from mugv.training import checkpoint as ckpt
from mugv.training.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointSaveError,
    load_checkpoint,
    resolve_checkpoint,
)
from tests.training.test_checkpoint import _tensors, build, train_step


def _fill_disk_after(write, partial_bytes: bytes):
    """`write(folder, ...)` as it is, except that it then leaves a partial file in `folder` and fails with ENOSPC."""
    def failing(folder, *args, **kwargs):
        write(folder, *args, **kwargs)
        path = Path(folder) / "__0_1.distcp"
        path.write_bytes(partial_bytes)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return failing


@pytest.mark.parametrize("where", ["torch_dist data", "manifest"])
def test_disk_full_mid_save_keeps_the_previous_checkpoint(where, tmp_path, process_group, monkeypatch):
    model, optimizer, ema = build(0)
    root = tmp_path / "ck"
    checkpointer = Checkpointer(root, CheckpointConfig(every=1, keep=2), dataset_hash="d", run_id="r")
    train_step(model, optimizer, ema, 1)
    checkpointer.save(1, model, optimizer, ema, {"stage": "s"})
    saved = {k: v.clone() for k, v in _tensors(model).items()}

    train_step(model, optimizer, ema, 2)
    if where == "manifest":
        monkeypatch.setattr(ckpt, "write_manifest", _fill_disk_after(ckpt.write_manifest, b"{\"files\": {"))
    else:
        real_save = ckpt.dist_checkpointing.save
        monkeypatch.setattr(ckpt.dist_checkpointing, "save",
                            lambda state, folder, *a, **k: _fill_disk_after(lambda f: real_save(state, f, *a, **k),
                                                                            b"\0" * 100)(folder))
    with pytest.raises(CheckpointSaveError) as failure:
        checkpointer.save(2, model, optimizer, ema, {"stage": "s"})
    message = str(failure.value)
    assert "\n" not in message and "no space left on device" in message
    assert "step_0000002" in message and "step_0000001 stays the latest" in message
    assert failure.value.errno == errno.ENOSPC

    # the partial save is gone (its space is free), the previous checkpoint is latest and loads intact
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000001"]
    assert resolve_checkpoint(root).name == "step_0000001"
    monkeypatch.undo()
    fresh, fresh_optimizer, fresh_ema = build(7)
    common = load_checkpoint(checkpointer.resumable(), fresh, fresh_optimizer, fresh_ema)
    assert common["step"] == 1
    assert all(torch.equal(saved[k], v) for k, v in _tensors(fresh).items())
    assert json.loads((root / "step_0000001" / ckpt.META).read_text())["step"] == 1


def test_the_cli_reports_a_full_disk_in_one_line(monkeypatch, capsys):
    from mugv import cli

    def full(*args, **kwargs):
        raise CheckpointSaveError("checkpoint step_0000002 not saved: no space left on device (x); "
                                  "step_0000001 stays the latest")

    monkeypatch.setattr(cli, "_params", full)
    with pytest.raises(SystemExit) as exit_:
        cli.app(["synth", "out"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "step_0000001 stays the latest" in err and "Traceback" not in err
