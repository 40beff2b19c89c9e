"""The MLflow server stops during pretraining and comes back: training goes on, and every metric reaches MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from mugv import tracking
from mugv.diffusion.config import FlowTrainingConfig, SamplerConfig
from mugv.models.text.config import TextEncoderConfig
from mugv.models.vae import VideoVAE, get_vae_preset, save_vae
from mugv.training.dit_trainer import Trainer
from tests.conftest import free_port
from tests.support.latent_set import TEXT_LEN, make_latent_set

STEPS = 16
DOWN_AT, BACK_BY = 4, STEPS - 2  # the server is stopped after step DOWN_AT; training waits for it only at BACK_BY


class Server:
    """A real `mlflow server` on 127.0.0.1 (SQLite, local artifacts) that a test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=open(self.folder / "server.log", "ab"),
            start_new_session=True)
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                return
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # gone at once, as a crashed server is
            self.proc.wait()
        self.proc = None

    @property
    def up(self) -> bool:
        return self.proc is not None


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_training_survives_an_mlflow_outage_and_no_metric_is_lost(server, tmp_path, monkeypatch, process_group):
    from mugv.stages import pretrain
    from mugv.training.bucket_sampler import BatchingConfig
    from mugv.training.config import CurriculumStage

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "RESEND_AFTER_S", 1.0)
    latents = make_latent_set(tmp_path / "latents")
    torch.manual_seed(0)
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")

    steps_while_down: list[int] = []
    restarted = threading.Event()
    step = Trainer.train_step

    def outage(self, batches):
        """The real step; after step DOWN_AT the server is killed and started again from another thread.
        The steps trained (and logged) before it is back are recorded."""
        result = step(self, batches)
        done = self.step + 1  # the step just trained: its metrics are logged when this returns
        if done == DOWN_AT:
            server.stop()
            threading.Thread(target=lambda: (server.start(), restarted.set()), daemon=True).start()
        elif done > DOWN_AT and not restarted.is_set():
            steps_while_down.append(done)
        if done == BACK_BY:
            assert restarted.wait(300), "the mlflow server did not come back"
        return result

    monkeypatch.setattr(Trainer, "train_step", outage)
    cfg = pretrain.Config(peak_flops=1e10, heldout={"samples": 0}, sample_prompts=["a red ball"], log_every=1,
                          sample_size=(1, 64, 64), checkpoint={"every": 8, "keep": 1},
                          stages=[CurriculumStage(name="s", steps=STEPS, batching=BatchingConfig(tokens_per_batch=150))])
    tracker = tracking.TrackingConfig(uri=server.url, experiment="outage")
    out = tmp_path / "run"
    result = pretrain.run(latents, out, cfg, tracker, stage="s", vae=tmp_path / "vae", flow=FlowTrainingConfig(),
                          sampler=SamplerConfig(steps=2), text=TextEncoderConfig(max_length=TEXT_LEN),
                          register=False, progress=False)

    assert result["steps"] == STEPS
    assert steps_while_down, "training did not go on while the server was away"
    (run,) = tracking.search_runs(tracker)
    assert run.info.status == "FINISHED"
    local = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {row["step"]: row["loss"] for row in local if "loss" in row}
    assert set(steps_while_down) <= set(logged)
    history = tracking._mlflow(tracker).MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert {m.step: m.value for m in history} == pytest.approx(logged)  # every step, the outage's too
    assert not (tmp_path / tracking.UNSENT_DIR).exists()
