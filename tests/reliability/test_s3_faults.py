"""S3 through a proxy that fails a seeded share of requests (500, 503, SlowDown, resets, cut-off bodies):
reads and writes retry, no partial object is ever visible, results equal the fault-free ones."""

import hashlib
import os

import boto3
import pytest
import torch

from mugv import storage
from mugv.training.checkpoint import CheckpointConfig, Checkpointer, load_checkpoint
from tests.support.fault_proxy import FaultProxy
from tests.training.test_checkpoint import _tensors, build, train_step

MULTIPART = 9 * 1024 * 1024  # over boto3's 8 MB multipart threshold
pytestmark = pytest.mark.slow  # an S3 server and a proxy


@pytest.fixture
def flaky_s3(s3_server, monkeypatch, request):
    """A fresh bucket; AWS_ENDPOINT_URL pointing at a fault proxy in front of moto (30% of requests fail,
    or the share the test is parametrized with)."""
    from botocore.retries.standard import ExponentialBackoff

    # botocore's own backoff, shortened (it waits up to 1, 2, 4 ... s): the retries are what is tested
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.01 * context.attempt_number)
    bucket = f"flaky-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    with FaultProxy(s3_server, rate=getattr(request, "param", 0.3), seed=7) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy, bucket


def _objects(s3_server: str, bucket: str) -> dict[str, bytes]:
    """Every object of `bucket`, read straight from moto (no proxy)."""
    client = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_reads_and_writes_retry_and_no_partial_object_is_visible(flaky_s3, s3_server, tmp_path):
    proxy, bucket = flaky_s3
    rng = torch.Generator().manual_seed(0)
    files = {f"set/part_{i}.bin": bytes(torch.randint(0, 256, (size,), generator=rng, dtype=torch.uint8).tolist())
             for i, size in enumerate([0, 1, 4096, 300_000])}
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MULTIPART))
    files["set/big.bin"] = big.read_bytes()

    for key, data in files.items():
        if key.endswith("big.bin"):
            storage.copy_file(big, f"s3://{bucket}/{key}")  # multipart upload
        else:
            storage.write_bytes(f"s3://{bucket}/{key}", data)
    assert _objects(s3_server, bucket) == files  # every object whole, none partial, nothing extra

    listed = storage.list_files(f"s3://{bucket}/set")
    assert {e.uri: e.size for e in listed} == {f"s3://{bucket}/{k}": len(v) for k, v in files.items()}
    for key, data in files.items():
        uri = f"s3://{bucket}/{key}"
        assert storage.read_bytes(uri) == data
        assert storage.sha256(uri) == hashlib.sha256(data).hexdigest()
        assert storage.exists(uri)
    with storage.local_copy(f"s3://{bucket}/set/big.bin") as local:
        assert local.read_bytes() == files["set/big.bin"]
    storage.remove_tree(f"s3://{bucket}/set")
    assert _objects(s3_server, bucket) == {}
    assert sum(proxy.faults.values()) >= 10 and len(proxy.faults) >= 4, proxy.faults  # the faults did happen


def test_an_outage_of_several_requests_in_a_row_is_ridden_out(s3_server, monkeypatch):
    """botocore's default (legacy: 5 attempts) gives up after 4 failures in a row; mugv's policy rides out 8."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.01 * context.attempt_number)
    bucket = f"outage-{os.urandom(4).hex()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    with FaultProxy(s3_server, rate=0.0, burst=8, kinds=("503", "reset", "slowdown", "500")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.write_bytes(f"s3://{bucket}/k", b"payload")
        assert proxy.faults.total() == 8
        proxy.burst = 8
        assert storage.read_bytes(f"s3://{bucket}/k") == b"payload"
        assert proxy.faults.total() == 16


@pytest.mark.parametrize("flaky_s3", [0.15], indirect=True)
def test_checkpoint_mirror_round_trip_through_faults_equals_the_fault_free_one(flaky_s3, s3_server, tmp_path,
                                                                                process_group):
    proxy, bucket = flaky_s3
    model, optimizer, ema = build(0)
    train_step(model, optimizer, ema, 1)
    mirror = f"s3://{bucket}/ckpt"
    writer = Checkpointer(tmp_path / "a", CheckpointConfig(every=1, keep=1), dataset_hash="d", run_id="r",
                          mirror=mirror)
    writer.save(1, model, optimizer, ema, {"stage": "s"})
    train_step(model, optimizer, ema, 2)
    writer.save(2, model, optimizer, ema, {"stage": "s"})  # rotates step 1 away on the mirror too

    local = tmp_path / "a" / "step_0000002"
    on_mirror = _objects(s3_server, bucket)
    assert on_mirror["ckpt/latest"] == b"step_0000002"
    assert {k for k in on_mirror if k != "ckpt/latest"} == {
        f"ckpt/step_0000002/{p.relative_to(local).as_posix()}" for p in local.rglob("*") if p.is_file()}
    for path in local.rglob("*"):
        if path.is_file():
            assert on_mirror[f"ckpt/step_0000002/{path.relative_to(local).as_posix()}"] == path.read_bytes()

    reader = Checkpointer(tmp_path / "b", CheckpointConfig(every=1, keep=1), dataset_hash="d", run_id="r",
                          mirror=mirror)
    fresh, fresh_optimizer, fresh_ema = build(5)
    pulled = reader.resumable()
    assert pulled is not None and pulled.name == "step_0000002"
    assert load_checkpoint(pulled, fresh, fresh_optimizer, fresh_ema)["step"] == 2
    expected = _tensors(model)
    assert all(torch.equal(expected[k], v) for k, v in _tensors(fresh).items())
    assert sum(proxy.faults.values()) >= 3, proxy.faults
