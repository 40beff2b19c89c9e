"""SIGKILL each stage at a seeded random point of its work, then rerun it: no partial output is ever published,
the rerun completes with outputs identical to an uninterrupted run's, and the killed run's MLflow run is closed."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch

from mugv import tracking
from mugv.atomic import leftovers
from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
from mugv.models.text.config import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from tests.stages.test_encode import CLIPS as ENCODE_CLIPS
from tests.stages.test_encode import _cfg as encode_cfg
from tests.stages.test_encode import data  # noqa: F401  (fixture: clips + qc.parquet for encode and train_vae)
from tests.stages.test_post_train import _opt, _pretrain_section, preference_dir, release  # noqa: F401
from tests.support.ingest_media import shot_frames, write_three_shot
from tests.support.latent_set import TEXT_LEN
from tests.support.qc_media import THRESHOLDS, make_clip_set
from tests.training.test_vae_train import small_cfg as vae_cfg

pytestmark = pytest.mark.slow
FRACTIONS = (0.25, 0.9)  # the kill comes once the run has written between these shares of a clean run's files


@dataclass
class Case:
    """How to run one stage into a folder, and which of that folder's entries are its published outputs."""

    run: Callable[[Path, tracking.TrackingConfig | None], object]
    outputs: tuple[str, ...] | None  # None: the whole folder is the stage's output
    mlflow_stage: str
    spawn: bool = False  # a fresh interpreter (picklable `run`): a fork would inherit this process's gloo group


def _digest(root: Path, outputs: tuple[str, ...] | None) -> dict[str, str]:
    """sha256 of every output file under `root`, the folder's own path in a file's bytes written as <out>."""
    files = [p for p in root.rglob("*") if p.is_file()]
    if outputs is not None:
        files = [p for p in files if p.relative_to(root).parts[0] in outputs]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes().replace(str(root).encode(), b"<out>"))
            .hexdigest() for p in sorted(files)}


def _child(run, out: Path, tracker) -> None:
    os.setsid()  # its own process group: the kill takes any helper it started too
    torch.set_num_threads(1)
    if tracker is not None:  # the parent's database connections are not the child's (SQLAlchemy's fork recipe)
        from mlflow.tracking._tracking_service.utils import _get_store

        _get_store().engine.dispose(close=False)
    run(out, tracker)
    os._exit(0)


def _files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _run_and_kill(case: Case, out: Path, tracker, after_files: int, timeout: float = 600) -> int:
    """Run the stage in a child process; SIGKILL its process group once it has written `after_files` files
    (staging folders included) beside `out`: a point inside its work; the child's exit code."""
    context = multiprocessing.get_context("spawn" if case.spawn else "fork")
    child = context.Process(target=_child, args=(case.run, out, tracker))
    child.start()
    deadline = time.monotonic() + timeout
    while child.is_alive() and _files(out.parent) < after_files:
        assert time.monotonic() < deadline, f"the child wrote {_files(out.parent)} of {after_files} files: stuck?"
        time.sleep(0.01)
    if child.exitcode is None:
        os.killpg(child.pid, signal.SIGKILL)
    child.join()
    return child.exitcode


def _assert_no_partial_output(out: Path, case: Case, clean: dict[str, str]) -> None:
    """Each published output is absent, or complete and identical to the uninterrupted run's."""
    names = case.outputs or (None,)
    for name in names:
        target = out if name is None else out / name
        if not target.exists():
            continue
        got = _digest(out, case.outputs if name is None else (name,))
        want = {k: v for k, v in clean.items() if name is None or k.split("/")[0] == name}
        assert got == want, f"{target} is published but differs from the uninterrupted run's"


# --------------------------------------------------------------------------- the stages, on tiny inputs


@pytest.fixture(scope="module")
def ingest_case(tmp_path_factory) -> Case:
    from mugv.stages import ingest

    source = tmp_path_factory.mktemp("source")
    for i in range(2):
        write_three_shot(source / f"three_{i}.mp4", shot=12 + i)
        from mugv.data.video_io import write_video

        write_video(source / f"plain_{i}.mp4", shot_frames(10 + i, 16), 8)
    return Case(lambda out, tracker: ingest.run(str(source), out, ingest.Config(workers=1), tracker, progress=False),
                None, "ingest")


@pytest.fixture(scope="module")
def qc_case(tmp_path_factory) -> Case:
    from mugv.data.config import ExpectationsConfig
    from mugv.stages import qc

    root = tmp_path_factory.mktemp("qc_in")
    make_clip_set(root)
    cfg = qc.Config(profile="test", profiles={"test": THRESHOLDS}, workers=1, expectations=ExpectationsConfig(min_kept=1))
    return Case(lambda out, tracker: qc.run(root, out, cfg, tracker, progress=False), None, "qc")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    save_vae(VideoVAE(get_vae_preset("tiny")), path)
    return path


@pytest.fixture(scope="module")
def encode_case(data, vae_dir) -> Case:  # noqa: F811
    from mugv.stages import encode

    assert len(ENCODE_CLIPS) >= 5
    clips_dir, qc_dir = data
    cfg = encode.Config(**encode_cfg(max_shard_mb=0.005, batch_size=1).model_dump())
    return Case(lambda out, tracker: encode.run(clips_dir, qc_dir, vae_dir, out, cfg, tracker, progress=False),
                None, "encode")


@pytest.fixture(scope="module")
def train_vae_case(tmp_path_factory) -> Case:
    from mugv.data.video_io import write_video
    from mugv.stages import train_vae
    from tests.training.test_vae_train import moving_square_clip

    root = tmp_path_factory.mktemp("vae_data")
    (root / "clips").mkdir()
    (root / "qc").mkdir()
    rows = []
    for i in range(4):
        write_video(root / "clips" / f"c{i}.mp4", moving_square_clip(20, 32, 48, seed=i), fps=8)
        rows.append({"clip_id": f"c{i}", "path": f"c{i}.mp4", "fps": 8.0, "width": 48, "height": 32,
                     "num_frames": 20, "keep": True, "reason": ""})
    pd.DataFrame(rows).to_parquet(root / "qc" / "qc.parquet")
    cfg = train_vae.Config(**vae_cfg(spatial_steps=6, temporal_steps=6, checkpoint_every=2).model_dump())
    return Case(lambda out, tracker: train_vae.run(root / "clips", root / "qc", out, cfg, tracker, progress=False),
                (train_vae.WEIGHTS, train_vae.VAE_CONFIG, train_vae.RECON_REPORT, train_vae.SAMPLES), "train_vae")


def _text(release_dir: Path) -> TextEncoderConfig:
    import json

    return TextEncoderConfig.model_validate(json.loads((release_dir / "release.json").read_text())["text_encoder"])


@pytest.fixture(scope="module")
def pretrain_case(release, process_group) -> Case:  # noqa: F811
    from mugv.stages import pretrain
    from mugv.training.bucket_sampler import BatchingConfig
    from mugv.training.config import CurriculumStage

    latents = release.parent / "latents"
    cfg = pretrain.Config(peak_flops=1e10, heldout={"samples": 0}, sample_prompts=["theme 0"], sample_size=(9, 48, 64),
                          checkpoint={"every": 2, "keep": 2}, stages=[
                              CurriculumStage(name="s", steps=6, batching=BatchingConfig(tokens_per_batch=150))])
    return Case(partial(_pretrain, latents=latents, vae=release / "vae", cfg=cfg), (pretrain.RELEASE, pretrain.SAMPLES),
                "pretrain@s", spawn=True)


def _pretrain(out, tracker, *, latents, vae, cfg):
    from mugv.stages import pretrain

    return pretrain.run(latents, out, cfg, tracker, stage="s", vae=vae, flow=FlowTrainingConfig(),
                        sampler=SamplerConfig(steps=2), text=TextEncoderConfig(max_length=TEXT_LEN), register=False,
                        progress=False)


@pytest.fixture(scope="module")
def sft_case(release, process_group, tmp_path_factory) -> Case:  # noqa: F811
    from mugv.latents.shards import INDEX
    from mugv.stages import sft

    latents = release.parent / "latents"
    clips = sorted(pd.read_parquet(latents / INDEX)["clip_id"].unique())
    qc_table = tmp_path_factory.mktemp("sft_qc") / "qc.parquet"
    pd.DataFrame({"clip_id": clips, "keep": True, "aesthetic": 8.0, "sharpness": 500.0, "motion": 1.0}).to_parquet(qc_table)
    cfg = sft.Config.model_validate({"steps": 6, "batching": {"buckets": ["*"], "tokens_per_batch": 300},
                                     "lr": {"peak": 1e-3, "warmup_steps": 0, "min_ratio": 0.0},
                                     "curation": {"aesthetic_min": 5.0, "min_clips": 1}})
    return Case(partial(_sft, latents=latents, qc_table=qc_table, release=release, cfg=cfg,
                        section=_pretrain_section(heldout={"samples": 0})), (sft.CURATED, "release", "samples"), "sft",
                spawn=True)


def _sft(out, tracker, *, latents, qc_table, release, cfg, section):
    from mugv.stages import sft

    return sft.run(latents, qc_table, release, out, cfg, section, tracker, vae=release / "vae", flow=FlowTrainingConfig(),
                   sampler=SamplerConfig(steps=2), text=_text(release), register=False, progress=False,
                   metrics_path=None)


@pytest.fixture(scope="module")
def dpo_case(release, preference_dir, process_group) -> Case:  # noqa: F811
    return Case(partial(_dpo, preference_dir=preference_dir, release=release, opt=_opt("dpo", steps=6),
                        section=_pretrain_section(heldout={"samples": 0})), ("release", "samples"), "dpo", spawn=True)


def _dpo(out, tracker, *, preference_dir, release, opt, section):
    from mugv.stages import preference_opt

    return preference_opt.run(preference_dir, release.parent / "latents", release, out, opt, section, tracker,
                              vae=release / "vae", flow=FlowTrainingConfig(), sampler=SamplerConfig(steps=2),
                              text=_text(release), register=False, progress=False)


STAGES = ("ingest", "qc", "encode", "train_vae", "pretrain", "sft", "dpo")


@pytest.mark.parametrize("stage", STAGES)
def test_a_killed_stage_reruns_to_the_uninterrupted_outputs(stage, request, tmp_path, local_tracking, one_thread):
    case: Case = request.getfixturevalue(f"{stage}_case")
    case.run(tmp_path / "clean" / "out", None)
    clean = _digest(tmp_path / "clean" / "out", case.outputs)
    assert clean

    out = tmp_path / "killed" / "out"
    tracking.ensure_experiment(local_tracking)  # the database exists before the kill (a kill may not create it)
    written = _files(tmp_path / "clean")
    after_files = random.Random(stage).randint(max(1, int(FRACTIONS[0] * written)), int(FRACTIONS[1] * written))
    code = _run_and_kill(case, out, local_tracking, after_files)
    assert code == -signal.SIGKILL, f"{stage} finished before writing {after_files} files: no kill happened"
    _assert_no_partial_output(out, case, clean)
    killed_runs = tracking.search_runs(local_tracking, f"tags.`mugv.stage` = '{case.mlflow_stage}'")
    assert [r.info.status for r in killed_runs] == ["RUNNING"]  # what a SIGKILL leaves

    case.run(out, local_tracking)  # the rerun
    assert _digest(out, case.outputs) == clean
    assert not any(p for p in leftovers(out)) and not any(
        leftovers(out / name) for name in case.outputs or ())
    statuses = {r.info.run_id: r.info.status for r in tracking.search_runs(
        local_tracking, f"tags.`mugv.stage` = '{case.mlflow_stage}'")}
    assert statuses.pop(killed_runs[0].info.run_id) == "KILLED"
    assert list(statuses.values()) == ["FINISHED"]
