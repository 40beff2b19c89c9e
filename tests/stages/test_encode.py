"""The encode stage on real little mp4 clips with a stand-in VAE: index, normalisation, determinism, checksums."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mugv.latents.config import EncodeConfig
from mugv.data.encode import encode_clips, load_pixels, plan_samples
from mugv.stages.encode import read_kept
from mugv.data.expectations_buckets import BucketCheckConfig, BucketCheckError
from mugv.latents.shards import INDEX, STATS, LatentDataset, LatentStats, ShardChecksumError
from mugv.data.video_io import write_video
from mugv.models.text.model import TextEncoderConfig, load_text_encoder


class PoolVAE(torch.nn.Module):
    """Stand-in for the video VAE: 8x8x8 average pool + a 1x1x1 conv to 24 channels (offset, scaled)."""

    compression = (8, 8, 8)
    latent_channels = 24

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv3d(3, 24, 1)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            self.proj.weight.copy_(torch.randn(24, 3, 1, 1, 1, generator=gen) * 3)
            self.proj.bias.copy_(torch.linspace(-5, 5, 24))

    def encode(self, x, sample=False):
        if x.shape[2] % 8 == 1:  # MUG-V: the first frame is repeated to make latent 0 an image latent
            x = torch.cat([x[:, :, :1].expand(-1, -1, 7, -1, -1), x], dim=2)
        return self.proj(F.avg_pool3d(x, 8))


def _frames(rng, n, h, w):
    base = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    for t in range(n):
        yield np.roll(base, shift=3 * t, axis=1)


CLIPS = [  # clip_id, height, width, frames, keep
    ("a", 96, 128, 20, True),
    ("b", 128, 96, 12, True),
    ("c", 128, 128, 18, True),
    ("d", 96, 160, 10, True),
    ("e", 96, 128, 6, True),  # too short for a video bucket, still gives an image
    ("f", 96, 128, 20, False),  # rejected by qc: never encoded
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    clips_dir, qc_dir = root / "clips", root / "qc"
    (clips_dir / "v").mkdir(parents=True)
    qc_dir.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for cid, h, w, n, keep in CLIPS:
        write_video(clips_dir / "v" / f"{cid}.mp4", _frames(rng, n, h, w), fps=12)
        rows.append(dict(clip_id=cid, path=f"v/{cid}.mp4", fps=12.0, width=w, height=h, num_frames=n,
                         duration_s=n / 12, caption=f"clip {cid}: a textured pattern slides right",
                         aesthetic=5.0, keep=keep, reject_reason=None if keep else "static"))
    table = pd.DataFrame(rows)
    table.drop(columns=["keep", "reject_reason", "aesthetic"]).to_parquet(clips_dir / "clips.parquet")
    table.to_parquet(qc_dir / "qc.parquet")
    return clips_dir, qc_dir


@pytest.fixture(scope="module")
def text_encoder():
    return load_text_encoder(TextEncoderConfig(max_length=24))


def _cfg(**kw) -> EncodeConfig:
    base = dict(text=TextEncoderConfig(max_length=24), batch_size=2, max_shard_mb=0.02, images_per_clip=1, decode_threads=2,
                workers=1)
    base.update(kw)
    return EncodeConfig(**base)


@pytest.fixture(scope="module")
def encoded(data, text_encoder, tmp_path_factory):
    clips_dir, qc_dir = data
    out = tmp_path_factory.mktemp("latents")
    report = encode_clips(read_kept(clips_dir, qc_dir), clips_dir, PoolVAE(), text_encoder, out, _cfg(), progress=False)
    return out, report


def test_index_and_report(encoded):
    out, report = encoded
    index = pd.read_parquet(out / INDEX)
    videos = index[index["kind"] == "video"].set_index("clip_id")
    assert sorted(videos.index) == ["a", "b", "c", "d"]  # f rejected by qc, e too short
    assert videos.loc["a", "bucket"] == "128p_96x128_f17" and videos.loc["b", "num_frames"] == 9
    assert videos.loc["d", "bucket"] == "128p_80x144_f9"
    assert tuple(videos.loc["a", ["latent_t", "latent_h", "latent_w"]]) == (3, 12, 16)
    assert report.unassigned == {"e": "too short: 6 frames < 9"}
    assert report.videos == 4 and report.images == 5 and report.samples == len(index) == 9
    assert report.shards > 1 and index["shard"].nunique() == report.shards  # shard size is bounded
    assert (index["frame_end"] - index["frame_start"] == index["num_frames"]).all()
    written = json.loads((out / "encode_report.json").read_text())
    assert written["per_bucket"]["128p_96x128_f17"] == 1 and written["unassigned_count"] == 1
    assert not {"seconds", "frames_per_s", "timings"} & set(written)  # a DVC output: no timings
    fill = pd.read_csv(out / "bucket_fill.csv").set_index("bucket")
    assert fill["samples"].sum() == 9 and fill.loc["128p_80x144_f9", "tokens"] == 2 * 5 * 9


def test_images_emitted_as_single_latents(encoded):
    out, _ = encoded
    ds = LatentDataset(out)
    images = ds.index[ds.index["kind"] == "image"]
    assert sorted(images["clip_id"]) == ["a", "b", "c", "d", "e"]
    assert (images["latent_t"] == 1).all() and (images["num_frames"] == 1).all()
    sample = ds.get("e-i0")
    assert sample["latent"].shape == (24, 1, 12, 16) and sample["frame_start"] == 3


def test_normalised_exactly_once(encoded, data):
    out, _ = encoded
    ds = LatentDataset(out)
    latents = torch.cat([s["latent"].reshape(24, -1) for s in ds], dim=1)
    assert latents.mean(1).abs().max() < 1e-4
    assert (latents.std(1) - 1).abs().max() < 1e-3
    # stored = (vae(pixels) - mean) / std, once: denormalising gives back the raw VAE output
    stats = LatentStats.load(out / STATS)
    assert len(stats.mean) == 24 and stats.count == latents.shape[1]
    kept = read_kept(*data)
    sample = {s.sample_id: s for s in plan_samples(kept, data[0], _cfg())[0]}["c-v"]
    with torch.no_grad():
        raw = PoolVAE().encode(load_pixels(sample)[None])[0]
    assert torch.allclose(stats.denormalize(ds.get("c-v")["latent"]), raw, atol=1e-4)
    assert raw.mean(dim=(1, 2, 3)).abs().max() > 3  # the stand-in's raw latents are far from standardised


def test_checkpoint_stats_option(data, text_encoder, tmp_path):
    class ShippedStatsVAE(PoolVAE):
        def latent_stats(self):
            return torch.full((24,), 1.0), torch.full((24,), 2.0)

    clips_dir, qc_dir = data
    cfg = _cfg(latent_stats="checkpoint", images_per_clip=0, max_shard_mb=64)
    encode_clips(read_kept(clips_dir, qc_dir), clips_dir, ShippedStatsVAE(), text_encoder, tmp_path, cfg, progress=False)
    stats = LatentStats.load(tmp_path / STATS)
    assert stats.mean == [1.0] * 24 and stats.std == [2.0] * 24
    sample = {s.sample_id: s for s in plan_samples(read_kept(clips_dir, qc_dir), clips_dir, cfg)[0]}["a-v"]
    with torch.no_grad():
        raw = PoolVAE().encode(load_pixels(sample)[None])[0]
    assert torch.allclose(LatentDataset(tmp_path).get("a-v")["latent"], (raw - 1.0) / 2.0, atol=1e-5)


def test_text_features_and_null_embeddings(encoded, text_encoder):
    out, _ = encoded
    ds = LatentDataset(out)
    s = ds.get("a-v")
    assert s["text"].shape == (24, 384) and s["text_mask"].shape == (24,)
    n = int(s["text_mask"].sum())
    assert n == s["text_len"] and torch.all(s["text"][n:] == 0)
    expect, _ = text_encoder.encode([s["caption"]])
    assert torch.allclose(s["text"], expect[0], atol=1e-5)
    # a clip's video and image samples share the caption, encoded in each one's batch: the same features
    image = ds.get("a-i0")
    assert image["caption"] == s["caption"] and image["text_len"] == s["text_len"]
    assert torch.allclose(image["text"], s["text"], atol=1e-5)
    null = ds.text_null()
    assert int(null["null.text_mask"].sum()) == 2 and null["negative.text"].shape == (24, 384)
    assert int(null["negative.text_mask"].sum()) > 2


def test_deterministic(encoded, data, text_encoder, tmp_path):
    out, _ = encoded
    clips_dir, qc_dir = data
    encode_clips(read_kept(clips_dir, qc_dir), clips_dir, PoolVAE(), text_encoder, tmp_path, _cfg(), progress=False)
    first, second = pd.read_parquet(out / INDEX), pd.read_parquet(tmp_path / INDEX)
    pd.testing.assert_frame_equal(first, second)
    assert (out / STATS).read_text() == (tmp_path / STATS).read_text()


def test_corrupt_shard_detected(encoded, tmp_path):
    import shutil

    out, _ = encoded
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    ds = LatentDataset(copy)
    victim = ds.index.iloc[0]
    path = copy / victim["shard"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardChecksumError, match=victim["shard"]):
        LatentDataset(copy).get(victim["sample_id"])
    with pytest.raises(ShardChecksumError, match="corrupt"):
        LatentDataset(copy).verify_all()


def test_bucket_gate_stops_before_encoding(data, text_encoder, tmp_path):
    clips_dir, qc_dir = data
    cfg = _cfg(checks=BucketCheckConfig(min_assigned=1, max_unassigned_share=0.1, min_per_bucket=1))
    with pytest.raises(BucketCheckError, match="20% of 5 kept clips fit no bucket"):
        encode_clips(read_kept(clips_dir, qc_dir), clips_dir, PoolVAE(), text_encoder, tmp_path, cfg, progress=False)
    assert not (tmp_path / "shards").exists() and not (tmp_path / INDEX).exists()


def test_aesthetic_suffix(data):
    kept = read_kept(*data)
    fixed = plan_samples(kept, data[0], _cfg(aesthetic_suffix="fixed"))[0][0]
    assert fixed.caption.endswith("slides right aesthetic score: 6.0.")
    score = plan_samples(kept, data[0], _cfg(aesthetic_suffix="score"))[0][0]
    assert score.caption.endswith(" aesthetic score: 5.0.")


@pytest.mark.slow
def test_run_encode_with_a_vae_checkpoint(data, tmp_path):
    from mugv.stages.encode import run as run_encode
    from mugv.models.vae import VideoVAE, get_vae_preset, load_vae, save_vae

    torch.manual_seed(0)
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    clips_dir, qc_dir = data
    report = run_encode(clips_dir, qc_dir, tmp_path / "vae", tmp_path / "latents", _cfg(max_shard_mb=64), progress=False)
    assert report.videos == 4 and report.images == 5 and report.failed == {}
    ds = LatentDataset(tmp_path / "latents")
    assert ds.get("a-v")["latent"].shape == (24, 3, 12, 16) and ds.get("b-i0")["latent"].shape == (24, 1, 16, 12)
    latents = torch.cat([s["latent"].reshape(24, -1) for s in ds], dim=1)
    assert latents.mean(1).abs().max() < 1e-4 and (latents.std(1) - 1).abs().max() < 1e-3
    sample = {s.sample_id: s for s in plan_samples(read_kept(clips_dir, qc_dir), clips_dir, _cfg())[0]}["c-v"]
    with torch.inference_mode():
        raw = load_vae(tmp_path / "vae").encode(load_pixels(sample)[None])[0]
    assert torch.allclose(ds.stats.denormalize(ds.get("c-v")["latent"]), raw, atol=1e-4)


def test_text_null_has_the_same_bytes_in_every_process(tmp_path):
    """text_null.safetensors is a DVC output: safetensors' metadata order varies by process, the file must not."""
    import subprocess
    import sys

    write = (
        "import sys, torch; from mugv.latents.shards import save_text_null, load_text_null; "
        "t = {'null.text': torch.ones(2, 4), 'null.text_mask': torch.tensor([1, 1, 0], dtype=torch.int8), "
        "'negative.text': torch.zeros(3, 4), 'negative.text_mask': torch.ones(3, dtype=torch.int8)}; "
        "save_text_null(sys.argv[1], t, {'negative_prompt': 'ugly, \"blurry\"', 'text_encoder': 'minilm', "
        "'max_length': '3', 'z': 'é'}); assert load_text_null(sys.argv[1])['null.text'].shape == (3, 4)"
    )
    files = [tmp_path / f"text_null_{i}.safetensors" for i in range(4)]
    for path in files:
        subprocess.run([sys.executable, "-c", write, str(path)], check=True, capture_output=True)
    assert len({p.read_bytes() for p in files}) == 1


def _tree_bytes(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_batches_on_ray_write_the_same_bytes_whatever_the_number_of_workers(data, text_encoder, tmp_path,
                                                                           without_shared_ray):
    """Each planned batch is a Ray task whose worker loads the VAE from its checkpoint; an embedded Ray of 1 and
    of 2 CPUs write the same shards, index, stats and report, byte for byte, a clip that fails to decode
    included. (In-process runs match too when the test process has OMP_NUM_THREADS=1, as each worker runs with
    one thread; oneDNN's rounding depends on the threads.)"""
    import shutil

    from mugv.data.ray_runner import RayConfig, ray_session
    from mugv.models.vae import VideoVAE, get_vae_preset, load_vae, save_vae

    torch.manual_seed(0)
    save_vae(VideoVAE(get_vae_preset("tiny")), tmp_path / "vae")
    clips_dir, qc_dir = data
    broken = tmp_path / "clips"
    shutil.copytree(clips_dir, broken)
    (broken / "v" / "c.mp4").write_bytes(b"\x00" * 64)  # planned from the table, then fails to decode
    kept, vae = read_kept(broken, qc_dir), load_vae(tmp_path / "vae").eval()
    reports = {}
    for cpus in (1, 2):
        with ray_session(RayConfig(), workers=cpus):  # the stage's `workers: null` uses every CPU of this Ray
            reports[cpus] = encode_clips(kept, broken, vae, text_encoder, tmp_path / f"ray{cpus}", _cfg(workers=None),
                                         progress=False, vae_path=tmp_path / "vae")
    assert reports[1].failed == reports[2].failed and set(reports[1].failed) == {"c-v", "c-i0"}
    assert reports[1].samples == reports[2].samples == 7
    one, two = _tree_bytes(tmp_path / "ray1"), _tree_bytes(tmp_path / "ray2")
    written = [json.loads(files.pop("encode_report.json")) for files in (one, two)]
    for report in written:  # where each run wrote differs; nothing else may
        del report["out_dir"], report["fill_csv"]
    assert written[0] == written[1] and one == two


def test_a_batch_whose_worker_died_is_quarantined_and_the_stage_goes_on(data, text_encoder, tmp_path, monkeypatch,
                                                                         local_ray):
    """A Ray task that crashed its worker (retries spent) or timed out: its samples are failed with the reason;
    an exception escaping the VAE stops the stage as it would in this process."""
    from mugv.data import ray_runner
    from mugv.data.encode import BatchJob, encode_batch_job

    def first_batch_dies(fn, jobs, cfg, workers, on_done=None, num_gpus=0):
        for i, job in enumerate(jobs):  # the batches' tasks (the null caption's task runs)
            yield ray_runner.Outcome(error=ray_runner.CRASHED) if i == 0 and isinstance(job, BatchJob) else \
                ray_runner.Outcome(result=fn(job))

    monkeypatch.setattr(ray_runner, "iter_tasks", first_batch_dies)
    monkeypatch.setattr("mugv.data.encode._worker_vae", lambda path, device: PoolVAE())
    clips_dir, qc_dir = data
    report = encode_clips(read_kept(clips_dir, qc_dir), clips_dir, PoolVAE(), text_encoder, tmp_path / "out",
                          _cfg(workers=2), progress=False, vae_path="unused")
    first = plan_samples(read_kept(clips_dir, qc_dir), clips_dir, _cfg())[0][:2]  # batch_size 2, one bucket
    assert report.failed == {s.sample_id: f"encode: {ray_runner.CRASHED}" for s in first if s.bucket == first[0].bucket}
    assert report.samples == 9 - len(report.failed)

    def vae_bug(fn, jobs, cfg, workers, on_done=None, num_gpus=0):
        yield ray_runner.Outcome(error="worker error: RuntimeError: shapes do not match")

    def text_null_fails(fn, jobs, cfg, workers, on_done=None, num_gpus=0):
        for job in jobs:
            yield ray_runner.Outcome(result=fn(job)) if isinstance(job, BatchJob) else \
                ray_runner.Outcome(error="worker error: OSError: no tokenizer.json")

    monkeypatch.setattr(ray_runner, "iter_tasks", text_null_fails)
    with pytest.raises(RuntimeError, match="null caption and the negative prompt failed: worker error"):
        encode_clips(read_kept(clips_dir, qc_dir), clips_dir, PoolVAE(), text_encoder, tmp_path / "out3",
                     _cfg(workers=2), progress=False, vae_path="unused")

    monkeypatch.setattr(ray_runner, "iter_tasks", vae_bug)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        encode_clips(read_kept(clips_dir, qc_dir), clips_dir, PoolVAE(), text_encoder, tmp_path / "out2",
                     _cfg(workers=2), progress=False, vae_path="unused")
    assert encode_batch_job  # the task body Ray runs


def test_a_batch_encodes_each_distinct_caption_once_and_depends_on_nothing_else(text_encoder):
    """Repeated captions of a batch are encoded once and share their features; a batch's features are the same
    whichever batches ran before it (so Ray workers and this process write the same bytes)."""
    from mugv.data.encode import caption_features

    seen = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def encode(self, captions):
            seen.append(list(captions))
            return self.inner.encode(captions)

    batch = ["a red circle slides right", "a blue square falls", "a red circle slides right"]
    first = caption_features(Counting(text_encoder), batch, torch.float32)
    assert seen == [batch[:2]] and first[0] is first[2]
    assert first[0]["text"].shape == (int(first[0]["text_mask"].sum()), 384) and first[0]["text_mask"].shape == (24,)
    caption_features(Counting(text_encoder), ["a green star spins " * 6], torch.float32)  # another batch in between
    again = caption_features(Counting(text_encoder), batch, torch.float32)
    assert all(torch.equal(a["text"], b["text"]) and torch.equal(a["text_mask"], b["text_mask"])
               for a, b in zip(first, again))
    assert caption_features(text_encoder, batch, torch.bfloat16)[0]["text"].dtype == torch.bfloat16


def test_on_cuda_each_ray_task_asks_for_a_gpu_and_runs_its_models_there(data, monkeypatch):
    """encode.device cuda (or cuda:N): every batch task and the null caption's task request one GPU from Ray and
    put their models on the GPU Ray assigned ('cuda'); on the CPU they request none."""
    from mugv.data import ray_runner
    from mugv.data.encode import encode_on_ray, plan_batches, text_null_on_ray

    requests = []

    def record(fn, jobs, cfg, workers, on_done=None, num_gpus=0):
        requests.extend((type(job).__name__, job.device, num_gpus) for job in jobs)
        return iter([ray_runner.Outcome(result={})])

    monkeypatch.setattr(ray_runner, "iter_tasks", record)
    batches = plan_batches(plan_samples(read_kept(*data), data[0], _cfg())[0], 2)
    for device, expected in (("cuda:1", ("cuda", 1)), ("cpu", ("cpu", 0))):
        requests.clear()
        cfg = _cfg(device=device, workers=2)
        list(encode_on_ray(batches[:1], "vae", cfg))
        text_null_on_ray(cfg, "blurry")
        assert requests == [("BatchJob", *expected), ("TextNullJob", *expected)]
