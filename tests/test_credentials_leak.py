"""Credentials given through the environment never land anywhere: synth, ingest and qc tracked to a local MLflow run
with recognisable fake secrets in the environment, then every file written (MLflow database and artifacts, outputs,
metrics), the captured stdout/stderr and log records, and the DVC files are searched for them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# recognisable fake values, one per variable a deployment sets; none is a real credential
FAKE_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEH5LEAKPROBE1",
    "AWS_SECRET_ACCESS_KEY": "fakeH5secretKeyLeakProbe0000000000000000",
    "AWS_SESSION_TOKEN": "fakeH5sessionTokenLeakProbe",
    "MLFLOW_TRACKING_PASSWORD": "fakeH5mlflowPasswordLeakProbe",
    "MLFLOW_TRACKING_TOKEN": "fakeH5mlflowTokenLeakProbe",
    "HF_TOKEN": "hf_fakeH5hubTokenLeakProbe",
    "PREFECT_API_KEY": "pnu_fakeH5prefectKeyLeakProbe",
}
# MLFLOW_TRACKING_USERNAME is an identity, not a secret: MLflow records it as each run's user (`mlflow.user`)
IDENTITY = {"MLFLOW_TRACKING_USERNAME": "fakeH5mlflowUserProbe"}
DVC_FILES = ("dvc.yaml", "dvc.lock", "params.yaml")


def leaks(folder: Path, texts: dict[str, str]) -> list[str]:
    """'<where>: <variable>' for each fake secret found in a file under `folder` (bytes, any file) or in `texts`."""
    found = []
    needles = {name: value.encode() for name, value in FAKE_SECRETS.items()}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {name}" for name, needle in needles.items() if needle in data]
    for where, text in texts.items():
        found += [f"{where}: {name}" for name, value in FAKE_SECRETS.items() if value in text]
    return found


def test_the_search_finds_a_planted_secret(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "run.db").write_bytes(b"\x00\x01" + FAKE_SECRETS["AWS_SECRET_ACCESS_KEY"].encode() + b"\xff")
    assert leaks(tmp_path, {"stderr": f"token={FAKE_SECRETS['HF_TOKEN']}"}) == [
        "a/b/run.db: AWS_SECRET_ACCESS_KEY", "stderr: HF_TOKEN"]


@pytest.mark.slow
def test_no_credential_from_the_environment_is_written_logged_or_tracked(tmp_path, local_tracking, monkeypatch,
                                                                          capfd, caplog):
    from mugv.data.config import SynthConfig
    from mugv.stages import ingest, qc, synth

    for name, value in {**FAKE_SECRETS, **IDENTITY}.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.DEBUG):
        synth.run(tmp_path / "raw", SynthConfig(num_videos=3), local_tracking, progress=True,
                  metrics_path=tmp_path / "metrics" / "synth.json")
        ingest.run(str(tmp_path / "raw"), tmp_path / "ingest", ingest.Config(workers=1), local_tracking,
                   progress=True, metrics_path=tmp_path / "metrics" / "ingest.json")
        qc.run(tmp_path / "ingest", tmp_path / "qc", qc.Config(workers=1), local_tracking, progress=True,
               metrics_path=tmp_path / "metrics" / "qc.json")
    out, err = capfd.readouterr()

    database = tmp_path / "mlruns.db"
    assert database.stat().st_size > 0 and b"num_videos" in database.read_bytes()  # the runs were tracked here
    assert list(tmp_path.rglob("quarantine.parquet")) and list(tmp_path.rglob("qc.parquet"))
    texts = {"stdout": out, "stderr": err, "log records": caplog.text}
    texts.update({name: (ROOT / name).read_text() for name in DVC_FILES})
    assert not leaks(tmp_path, texts)
