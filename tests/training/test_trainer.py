"""Trainer/run_pretrain: the loss falls, stages chain, a changed run restarts, exact resume after SIGKILL,
TP=2 / CP=2 / DP=2 over gloo match one process."""

import json
import random
import shutil
import signal
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from megatron.core import dist_checkpointing

from mugv.latents.shards import INDEX
from mugv.models.dit.config import get_preset
from mugv.training.config import CurriculumStage, LRScheduleConfig, ParallelConfig, PretrainConfig
from mugv.training.bucket_sampler import BatchingConfig
from mugv.training.dit_trainer import run_pretrain
from tests.support.latent_set import make_latent_set
from tests.support.subprocesses import run_in_own_session

WORKER = "tests/support/pretrain_worker.py"


def _cfg(images_steps=30, video_steps=12, **overrides) -> PretrainConfig:
    stages = [
        CurriculumStage(name="images", steps=images_steps,
                        batching=BatchingConfig(buckets=["*_f1"], tokens_per_batch=150),
                        lr=LRScheduleConfig(peak=2e-3, warmup_steps=3, min_ratio=0.2)),
        CurriculumStage(name="video", steps=video_steps,
                        batching=BatchingConfig(buckets=["*"], tokens_per_batch=150, image_fraction=0.25),
                        lr=LRScheduleConfig(peak=1e-3, warmup_steps=2)),
    ]
    base = dict(log_every=3, heldout={"samples": 3, "every": 10}, checkpoint={"every": 5, "keep": 2},
                ema={"decay": 0.9}, peak_flops=1e10, stages=stages)
    return PretrainConfig.model_validate({**base, **overrides})


def _losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latent_set(tmp_path_factory.mktemp("latents"))


@pytest.fixture(scope="module")
def curriculum(latents, tmp_path_factory):
    root = tmp_path_factory.mktemp("curriculum")
    cfg = _cfg()
    logged = []
    first = run_pretrain(latents, "images", None, root / "images", cfg, progress=False,
                         log=lambda metrics, step: logged.append((step, metrics)))
    second = run_pretrain(latents, "video", root / "images", root / "video", cfg, progress=False)
    return root, first, second, logged


def test_loss_falls_and_outputs_are_written(curriculum):
    root, first, _, logged = curriculum
    assert first["steps"] == 30
    assert first["loss_last"] < 0.9 * first["loss_first"]
    assert first["heldout_loss_end"] < first["heldout_loss_start"]
    assert 0 <= first["padding_waste"] < 0.25 and first["mfu"] > 0 and first["tokens_per_s"] > 0

    out = root / "images"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(3, 31, 3))
    assert [r["step"] for r in rows if "heldout_loss" in r] == [0, 10, 20, 30]
    assert [(step, m) for step, m in logged] == [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in rows]
    loss_csv = pd.read_csv(out / "plots" / "loss.csv")
    assert list(loss_csv.columns) == ["step", "loss"] and len(loss_csv) == 10
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000025", "step_0000030"]
    assert first["checkpoint"].endswith("step_0000030")


def test_next_stage_starts_from_previous_checkpoint(curriculum):
    _, first, second, _ = curriculum
    assert second["stage"] == "video" and second["steps"] == 12
    assert second["heldout_loss_start"] == first["heldout_loss_end"]


def _written_at(out: Path) -> int:
    checkpoints = out / "checkpoints"
    return (checkpoints / (checkpoints / "latest").read_text() / "meta.json").stat().st_mtime_ns


def test_a_rerun_resumes_its_own_checkpoint_and_restarts_after_a_change(curriculum, latents, tmp_path):
    """Checkpoints persist across `dvc repro`: the same run resumes; changed data or params start afresh."""
    root, first, *_ = curriculum
    out = tmp_path / "images"
    shutil.copytree(root / "images", out)
    finished = _written_at(out)
    again = run_pretrain(latents, "images", None, out, _cfg(), progress=False)
    assert again["steps"] == 30 and _written_at(out) == finished  # resumed at its last step: nothing retrained
    assert again["loss_last"] == first["loss_last"]

    data = tmp_path / "latents"
    shutil.copytree(latents, data)
    index = pd.read_parquet(data / INDEX)
    index.iloc[:-1].to_parquet(data / INDEX, index=False)
    resumed = run_pretrain(data, "images", None, out, _cfg(checkpoint={"allow_data_change": True}), progress=False)
    assert resumed["steps"] == 30 and _written_at(out) == finished
    fresh = run_pretrain(data, "images", None, out, _cfg(), progress=False)  # changed data: a new run
    assert fresh["steps"] == 30 and _written_at(out) > finished
    longer = run_pretrain(data, "images", None, out, _cfg(images_steps=32), progress=False)  # changed params
    assert longer["steps"] == 32
    assert [step for step, _ in _losses(out)] == [*range(3, 31, 3), 32]  # a fresh history, not appended


def test_a_non_finite_step_stops_the_run_before_it_is_checkpointed(latents, tmp_path, monkeypatch):
    from mugv.training.dit_trainer import Trainer
    from mugv.training.guard import TrainingDiverged

    real = Trainer.loss

    def nan_at_step_3(self, *args):
        loss = real(self, *args)
        return loss * float("nan") if self.step == 3 else loss

    monkeypatch.setattr(Trainer, "loss", nan_at_step_3)
    cfg = _cfg(images_steps=8, checkpoint={"every": 2, "keep": 5})
    with pytest.raises(TrainingDiverged, match="step 3: non-finite loss"):
        run_pretrain(latents, "images", None, tmp_path, cfg, progress=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_0000002"]


def test_parallel_layout_is_validated_before_start():
    tiny = get_preset("tiny")  # 2 heads
    assert ParallelConfig(tp=2).data_parallel_size(tiny, 4) == 2
    with pytest.raises(ValueError, match="num_heads 2 is not divisible by tp=4"):
        ParallelConfig(tp=4).data_parallel_size(tiny, 4)
    with pytest.raises(ValueError, match="world size 3"):
        ParallelConfig(tp=2).data_parallel_size(tiny, 3)
    with pytest.raises(ValueError, match="pipeline"):
        ParallelConfig(pp=2).data_parallel_size(tiny, 2)
    with pytest.raises(ValueError, match="dp=2"):
        ParallelConfig(dp=2).data_parallel_size(tiny, 1)
    with pytest.raises(KeyError, match="no curriculum stage"):
        _cfg().stage("missing")


def _spec(path: Path, runs: list[dict], **extra) -> str:
    path.write_text(json.dumps({"threads": 1, "runs": runs, **extra}))
    return str(path)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(latents, tmp_path, one_thread):
    cfg = _cfg(images_steps=12, log_every=1, heldout={"samples": 2, "every": 100},
               checkpoint={"every": 3, "keep": 3})
    run_pretrain(latents, "images", None, tmp_path / "reference", cfg, progress=False)

    out = tmp_path / "killed"
    kill_after = random.choice([3, 6])
    pointer = out / "checkpoints" / "latest"

    def checkpoint_reached() -> bool:
        return pointer.exists() and int(pointer.read_text().split("_")[1]) >= kill_after

    run = {"latents": str(latents), "stage": "images", "out": str(out), "config": cfg.model_dump(mode="json")}
    spec = _spec(tmp_path / "spec.json", [run], step_pause_s=random.uniform(0.2, 0.4))
    code, log = run_in_own_session([sys.executable, WORKER, spec], tmp_path / "log.txt", timeout=300,
                                   kill_when=checkpoint_reached)
    assert code == -signal.SIGKILL, log[-3000:]
    killed_at = int(pointer.read_text().split("_")[1])
    assert kill_after <= killed_at < 12

    resumed = run_pretrain(latents, "images", None, out, cfg, progress=False)
    assert resumed["steps"] == 12
    assert _losses(out) == _losses(tmp_path / "reference")
    final = dist_checkpointing.load_plain_tensors(str(out / "checkpoints" / "step_0000012"))
    reference = dist_checkpointing.load_plain_tensors(str(tmp_path / "reference" / "checkpoints" / "step_0000012"))
    tensors = {k for k, v in reference.items() if isinstance(v, torch.Tensor)}
    assert any(k.startswith("optimizer.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    for key in tensors:
        assert torch.equal(final[key], reference[key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tp2_cp2_dp2_over_gloo_match_one_process(latents, tmp_path, one_thread):
    base = _cfg(images_steps=2, video_steps=4, log_every=1, heldout={"samples": 0},
                checkpoint={"every": 100})
    run_pretrain(latents, "images", None, tmp_path / "start", base, progress=False)

    def run(name: str, **overrides) -> dict:
        cfg = PretrainConfig.model_validate({**base.model_dump(mode="json"), **overrides})
        return {"latents": str(latents), "stage": "video", "out": str(tmp_path / name),
                "init_from": str(tmp_path / "start"), "config": cfg.model_dump(mode="json")}

    references = {"one": run("one"), "one_accum2": run("one_accum2", micro_batches=2)}
    for spec in references.values():
        run_pretrain(Path(spec["latents"]), "video", Path(spec["init_from"]), Path(spec["out"]),
                     PretrainConfig.model_validate(spec["config"]), progress=False)
    parallel = [run("tp2", parallel={"tp": 2}), run("cp2", parallel={"cp": 2}), run("dp2", parallel={"dp": 2})]
    spec = _spec(tmp_path / "spec.json", parallel)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), WORKER, spec]
    code, log = run_in_own_session(cmd, tmp_path / "log.txt", timeout=420)
    assert code == 0, log[-4000:]

    for name, reference in (("tp2", "one"), ("cp2", "one"), ("dp2", "one_accum2")):
        got, want = _losses(tmp_path / name), _losses(tmp_path / reference)
        assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]
        for (_, a), (_, b) in zip(got, want):
            assert a == pytest.approx(b, abs=1e-5), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Megatron's DDP and distributed optimizer need CUDA")
def test_megatron_distributed_optimizer_on_gpu_matches_torch_adamw(latents, tmp_path):
    """GPU path: Megatron DDP + distributed optimizer train like torch AdamW (fp32) and their checkpoint resumes."""
    from mugv.training.megatron_optimizer import MegatronDistributedOptimizer

    base = _cfg(images_steps=6, video_steps=2, log_every=1, heldout={"samples": 0}, checkpoint={"every": 3},
                bf16=False)
    megatron = run_pretrain(latents, "images", None, tmp_path / "megatron", base, progress=False)
    adamw_cfg = PretrainConfig.model_validate({**base.model_dump(mode="json"), "optimizer": {"distributed": False}})
    run_pretrain(latents, "images", None, tmp_path / "adamw", adamw_cfg, progress=False)
    got, want = _losses(tmp_path / "megatron"), _losses(tmp_path / "adamw")
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    from mugv.training.dit_trainer import Trainer

    trainer = Trainer(base, "images", latents, tmp_path / "megatron", progress=False)
    assert isinstance(trainer.optimizer, MegatronDistributedOptimizer)
    trainer.load_or_init()
    assert trainer.step == 6 and Path(megatron["checkpoint"]).exists()
    inner = trainer.optimizer.optimizer
    adam_states = [s for o in getattr(inner, "chained_optimizers", [inner]) for s in o.optimizer.state.values()]
    second_moments = [s["exp_avg_sq"] for s in adam_states]
    assert second_moments and all(bool(torch.isfinite(m).all()) for m in second_moments)
    assert sum(float(m.abs().sum()) for m in second_moments) > 0  # the saved moments, not a fresh state's zeros


def test_checkpoints_mirror_to_s3_and_a_fresh_node_resumes_from_there(latents, tmp_path, s3_server):
    """checkpoint.mirror: complete checkpoints are copied to S3 and rotated; no local checkpoint -> resume from S3."""
    import boto3

    from mugv import storage
    from mugv.training.dit_trainer import Trainer

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="mugv-ckpt")
    cfg = _cfg(images_steps=6, log_every=2, heldout={"samples": 0},
               checkpoint={"every": 2, "keep": 2, "mirror": "s3://mugv-ckpt/run"})
    run_pretrain(latents, "images", None, tmp_path / "node-a", cfg, progress=False)
    assert storage.read_text("s3://mugv-ckpt/run/images/latest") == "step_0000006"
    mirrored = {e.uri.split("/")[5] for e in storage.list_files("s3://mugv-ckpt/run/images") if "/step_" in e.uri}
    assert mirrored == {"step_0000004", "step_0000006"}

    trainer = Trainer(cfg, "images", latents, tmp_path / "node-b", progress=False)  # a node with an empty disk
    trainer.load_or_init()
    assert trainer.step == 6
    assert (tmp_path / "node-b" / "checkpoints" / "latest").read_text() == "step_0000006"
    want = Trainer(cfg, "images", latents, tmp_path / "node-a", progress=False)
    want.load_or_init()
    got, expected = trainer.model.state_dict(), want.model.state_dict()
    tensors = [name for name, value in expected.items() if isinstance(value, torch.Tensor)]
    assert tensors and all(torch.equal(got[name], expected[name]) for name in tensors)
