"""Checkpointer: exact round trip, rotation, atomicity under SIGKILL, data-set fingerprint and refusal; EMA, lr schedule."""

import json
import pickle
import shutil
import signal
import sys
import textwrap

import pandas as pd
import pytest
import torch

from mugv.latents.shards import INDEX
from mugv.training.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    dataset_fingerprint,
    load_checkpoint,
    resolve_checkpoint,
    run_identity,
)
from mugv.training.checkpoint_dir import write_manifest
from mugv.training.ema import EMA
from mugv.training.optimizer import AdamWOptimizer, OptimizerConfig
from mugv.training.config import LRScheduleConfig
from mugv.training.lr import LRSchedule
from tests.support.latent_set import make_latent_set
from tests.support.subprocesses import run_in_own_session

BUILD = """
import torch
from mugv.models.dit.model import MUGDiT
from mugv.models.dit.config import get_preset
from mugv.models.dit.spec import local_block_spec
from mugv.training.ema import EMA
from mugv.training.optimizer import AdamWOptimizer, OptimizerConfig
from mugv.training.distributed import init_parallel


def build(seed):
    init_parallel()
    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    model = MUGDiT(cfg, local_block_spec())
    optimizer = AdamWOptimizer(model, OptimizerConfig())
    ema = EMA(model, lambda: MUGDiT(cfg, local_block_spec(), perform_initialization=False), 0.9)
    return model, optimizer, ema


def train_step(model, optimizer, ema, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, 24, 2, 4, 4, generator=g), torch.randn(2, 1, 8, 384, generator=g)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    optimizer.zero_grad()
    model(x, torch.tensor([200.0, 700.0]), y).square().mean().backward()
    optimizer.step()
    ema.update(model)
"""
namespace: dict = {}
exec(BUILD, namespace)
build, train_step = namespace["build"], namespace["train_step"]


def _tensors(module_or_state) -> dict:
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else module_or_state
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_round_trip_is_exact(tmp_path):
    model, optimizer, ema = build(0)
    train_step(model, optimizer, ema, 1)
    saver = Checkpointer(tmp_path, CheckpointConfig(), "hash")
    path = saver.save(1, model, optimizer, ema, {"sampler": {"consumed": 4}, "stage": "images"})
    assert saver.latest() == path and resolve_checkpoint(tmp_path) == path

    model2, optimizer2, ema2 = build(1)
    common = load_checkpoint(path, model2, optimizer2, ema2)
    assert common["sampler"] == {"consumed": 4} and common["step"] == 1
    _assert_same(_tensors(model), _tensors(model2))
    _assert_same(_tensors(ema.model), _tensors(ema2.model))
    s1, s2 = optimizer.optimizer.state_dict()["state"], optimizer2.optimizer.state_dict()["state"]
    for pid in s1:
        _assert_same(s1[pid], s2[pid])
    # the next step after loading equals the next step of the original
    train_step(model, optimizer, ema, 2)
    train_step(model2, optimizer2, ema2, 2)
    _assert_same(_tensors(model), _tensors(model2))


def test_the_same_state_saved_twice_has_no_random_id_or_time(tmp_path):
    """Checkpoints are a DVC output hashed in dvc.lock: no random save id, no wall-clock time in them.

    Each save runs in its own process, as each pretrain stage of `dvc repro` does: every file, torch DCP's
    `.metadata` included, is the same bytes."""
    script = tmp_path / "save_once.py"
    script.write_text(BUILD + textwrap.dedent("""
        import sys
        from mugv.training.checkpoint import Checkpointer, CheckpointConfig

        if __name__ == "__main__":
            model, optimizer, ema = build(0)
            train_step(model, optimizer, ema, 1)
            Checkpointer(sys.argv[1], CheckpointConfig(), "hash").save(1, model, optimizer, ema, {"stage": "s"})
    """))
    saved = []
    for i in range(2):  # into the same folder, as a rerun does (torch DCP records the folder's path)
        returncode, log = run_in_own_session([sys.executable, str(script), str(tmp_path / "ck")],
                                             tmp_path / f"log{i}.txt", timeout=240)
        assert returncode == 0, log[-2000:]
        path = tmp_path / "ck" / "step_0000001"
        saved.append({p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()})
        shutil.rmtree(tmp_path / "ck")
    first, second = saved
    assert {".metadata", "meta.json"} <= set(first) and set(first) == set(second)
    assert first["meta.json"] == second["meta.json"]
    save_ids = [pickle.loads(files[".metadata"]).storage_meta.save_id for files in saved]  # our own files
    assert save_ids[0] == save_ids[1]
    assert first == second


def test_write_results_reach_the_metadata_in_one_order_whichever_writer_finishes_first():
    """Megatron's writer processes report in the order they finish; a save takes their results in a fixed order."""
    import queue

    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.storage import WriteResult

    from mugv.training.checkpoint import deterministic_save

    def result(fqn):
        return WriteResult(index=MetadataIndex(fqn), size_in_bytes=1, storage_data=fqn)

    def retrieved():
        writer = object.__new__(FileSystemWriterAsync)
        writer.write_buckets = [None, None]
        writer.results_queue = queue.Queue()
        writer.results_queue.put({1: [result("b.weight"), result("b.bias")], 0: [result("a.weight")]})  # 1 done first
        return [r.index.fqn for r in writer.retrieve_write_results()]

    assert retrieved() == ["b.weight", "b.bias", "a.weight"]  # Megatron's own: completion order
    with deterministic_save("run/step_0000001"):
        assert retrieved() == ["a.weight", "b.bias", "b.weight"]
    assert retrieved() == ["b.weight", "b.bias", "a.weight"]  # undone


def test_rotation_keeps_the_newest(tmp_path):
    model, optimizer, ema = build(0)
    saver = Checkpointer(tmp_path, CheckpointConfig(keep=2), "hash")
    for step in (1, 2, 3, 4):
        saver.save(step, model, optimizer, ema, {})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000003", "step_0000004"]
    assert (tmp_path / "latest").read_text() == "step_0000004"


@pytest.mark.slow
def test_killed_save_leaves_previous_checkpoint_latest(tmp_path):
    script = tmp_path / "kill_mid_save.py"
    script.write_text(BUILD + textwrap.dedent(f"""
        import os, signal
        import mugv.training.checkpoint as checkpoint
        from mugv.training.checkpoint import Checkpointer, CheckpointConfig


        def write_then_die(path, text, write=checkpoint.storage.write_text, **kwargs):
            write(path, text, **kwargs)
            if path.name == "meta.json":
                os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            torch.set_num_threads(1)  # as the test's reference: the same sums in the same order
            model, optimizer, ema = build(0)
            saver = Checkpointer({str(tmp_path / "ck")!r}, CheckpointConfig(), "hash")
            train_step(model, optimizer, ema, 1)
            saver.save(1, model, optimizer, ema, {{}})
            train_step(model, optimizer, ema, 2)
            # killed after every byte and meta.json of step 2 are written, just before the rename
            checkpoint.storage.write_text = write_then_die
            saver.save(2, model, optimizer, ema, {{}})
    """))
    returncode, log = run_in_own_session([sys.executable, str(script)], tmp_path / "log.txt", timeout=240)
    assert returncode == -signal.SIGKILL, log[-2000:]
    ck = tmp_path / "ck"
    assert (ck / "step_0000002.tmp" / "meta.json").exists()  # complete data, yet not a checkpoint
    saver = Checkpointer(ck, CheckpointConfig(), "hash")
    assert saver.latest() == ck / "step_0000001"

    model, optimizer, ema = build(3)
    reference, ref_opt, ref_ema = build(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed run did
    try:
        train_step(reference, ref_opt, ref_ema, 1)
    finally:
        torch.set_num_threads(threads)
    load_checkpoint(saver.latest(), model, optimizer, ema)
    _assert_same(_tensors(reference), _tensors(model))
    saver.save(5, model, optimizer, ema, {})
    assert not list(ck.glob("*.tmp")) and saver.latest() == ck / "step_0000005"


def _checkpoint_of(ck, run: str, dataset: str) -> None:
    (ck / "step_0000001").mkdir(parents=True)
    (ck / "step_0000001" / "meta.json").write_text(json.dumps({"step": 1, "dataset_hash": dataset, "run": run}))
    write_manifest(ck / "step_0000001")  # sealed as a save seals it: unsealed folders are never resumed
    (ck / "latest").write_text("step_0000001")


def test_only_a_checkpoint_of_the_same_run_and_data_is_resumed(tmp_path, process_group):
    latents = make_latent_set(tmp_path / "latents")
    before = dataset_fingerprint(latents)
    assert dataset_fingerprint(latents) == before
    run = run_identity(stage={"name": "images", "steps": 3}, params={"seed": 0})
    ck = tmp_path / "ck"
    _checkpoint_of(ck, run, before)
    assert Checkpointer(ck, CheckpointConfig(), before, run_id=run).resumable() == ck / "step_0000001"

    index = pd.read_parquet(latents / INDEX)
    index.iloc[:-1].to_parquet(latents / INDEX, index=False)  # a sample removed
    after = dataset_fingerprint(latents)
    assert after != before
    assert Checkpointer(ck, CheckpointConfig(allow_data_change=True), after, run_id=run).resumable() is not None
    # changed data: a new run, the stale checkpoints go
    assert Checkpointer(ck, CheckpointConfig(), after, run_id=run).resumable() is None
    assert not ck.exists()

    # changed params (another run identity): a new run as well
    _checkpoint_of(ck, run, before)
    other = run_identity(stage={"name": "images", "steps": 4}, params={"seed": 0})
    assert other != run
    assert Checkpointer(ck, CheckpointConfig(allow_data_change=True), before, run_id=other).resumable() is None
    assert not ck.exists()


def test_ema_is_a_frozen_lerp_copy():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, lambda: torch.nn.Linear(3, 2), decay=0.9)
    assert torch.equal(ema.model.weight, model.weight) and not ema.model.weight.requires_grad
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, start + 0.1)
    with pytest.raises(ValueError):
        EMA(model, lambda: torch.nn.Linear(3, 2), decay=1.0)


def test_lr_schedule_warmup_cosine_constant_and_state():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    cosine = LRSchedule(optimizer, LRScheduleConfig(kind="cosine", peak=1.0, warmup_steps=4, min_ratio=0.1), 14)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        cosine.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert cosine.get_lr() == pytest.approx(0.1)
    resumed = LRSchedule(optimizer, cosine.cfg, 14)
    resumed.load_state_dict({"last_step": 9})
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[9])
    constant = LRSchedule(optimizer, LRScheduleConfig(kind="constant", peak=0.5, warmup_steps=2), 10)
    for _ in range(5):
        constant.step()
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_a_converted_start_is_identified_by_its_bytes_not_its_file_times(tmp_path):
    """The run identity of a stage that starts from a release: the same release exported again (new file times) is the
    same start, so its checkpoints resume and keep their bytes; changed weights are another start."""
    import os

    from mugv.training.dit_trainer import start_identity

    release = tmp_path / "release" / "dit"
    release.mkdir(parents=True)
    (release / "config.json").write_text('{"preset": "tiny"}')
    (release / "model.safetensors").write_bytes(b"weights v1")
    first = start_identity(release.parent)
    assert first is not None and [name for name, _ in first["files"]] == ["config.json", "model.safetensors"]
    os.utime(release / "model.safetensors", ns=(10**9, 10**9))  # exported again, same bytes
    assert start_identity(release.parent) == first
    (release / "model.safetensors").write_bytes(b"weights v2")
    assert start_identity(release.parent) != first
    assert start_identity(None) is None
