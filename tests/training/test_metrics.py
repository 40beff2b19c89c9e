"""MetricsHistory: the DiT's jsonl + (step, loss) curves and the VAE's full loss table, one writer."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd

from mugv.training.metrics import MetricsHistory
from mugv.training.vae_trainer import LOSS_COLUMNS, _write_history


def test_dit_rows_go_to_jsonl_and_the_curve_they_belong_to(tmp_path):
    logged = []
    history = MetricsHistory(tmp_path, log=lambda m, s: logged.append((s, m)))
    history.write({"heldout_loss": 2.0}, 0)
    history.write({"loss": 1.5, "lr": 1e-3}, 5)
    history.write({"loss": 1.25, "lr": 1e-3}, 10)
    assert (tmp_path / "plots" / "loss.csv").read_bytes() == b"step,loss\r\n5,1.5\r\n10,1.25\r\n"
    assert (tmp_path / "plots" / "heldout.csv").read_bytes() == b"step,heldout_loss\r\n0,2.0\r\n"
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 5, 10]
    assert [s for s, _ in logged] == [0, 5, 10]
    history.truncate_after(5)
    assert pd.read_csv(tmp_path / "plots" / "loss.csv")["step"].tolist() == [5]


def test_vae_loss_table_is_byte_identical_to_a_dict_writer_table(tmp_path):
    rows = [{"step": 0, "phase": "spatial", "loss": 0.5, "grad_norm": 1.0, "status": "ok", "l1": 0.5},
            {"step": 1, "phase": "temporal", "loss": float("nan"), "grad_norm": float("inf"), "status": "skipped",
             "latent_l1": 0.1, "kl": 3.0}]
    expected = io.StringIO(newline="")
    writer = csv.DictWriter(expected, fieldnames=LOSS_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = _write_history(rows, tmp_path)
    assert path == tmp_path / "plots" / "loss.csv" and not (tmp_path / "metrics.jsonl").exists()
    assert path.read_bytes() == expected.getvalue().encode()
    assert _write_history([], tmp_path).read_bytes() == (",".join(LOSS_COLUMNS) + "\r\n").encode()  # a fresh table, header only


def _log_steps(history: MetricsHistory, steps) -> None:
    for step in steps:
        if step % 10 == 0:
            history.write({"heldout_loss": 2.0 - step / 100}, step)
        history.write({"loss": 1.0 / (step + 1), "lr": 1e-3, "mfu": float("nan")}, step)


def test_a_resumed_history_equals_an_uninterrupted_one_byte_for_byte(tmp_path):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    _log_steps(MetricsHistory(clean), range(1, 31))
    first = MetricsHistory(resumed)
    _log_steps(first, range(1, 26))  # killed after step 25, its checkpoint at step 20
    again = MetricsHistory(resumed)
    again.truncate_after(20)
    _log_steps(again, range(21, 31))
    for name in ("metrics.jsonl", "plots/loss.csv", "plots/heldout.csv"):
        assert (resumed / name).read_bytes() == (clean / name).read_bytes(), name


def test_curves_removed_before_a_rerun_come_back_whole_from_the_jsonl(tmp_path):
    """`dvc repro` removes a stage's plots before it reruns it, but not its persisted checkpoints: a run that resumes
    at its last step logs nothing new and must still leave the whole curves (DVC fails the stage otherwise)."""
    clean = tmp_path / "clean"
    _log_steps(MetricsHistory(clean), range(1, 31))
    expected = {name: (clean / "plots" / name).read_bytes() for name in ("loss.csv", "heldout.csv")}
    for name in expected:
        (clean / "plots" / name).unlink()
    MetricsHistory(clean).truncate_after(30)
    assert {name: (clean / "plots" / name).read_bytes() for name in expected} == expected
