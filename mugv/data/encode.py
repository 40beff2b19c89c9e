"""Latent encoding: kept clips + captions -> bucketed, per-channel-normalised latent shards and text features."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from safetensors import safe_open

from mugv.diffusion.config import DEFAULT_NEGATIVE_PROMPT
from mugv.data.buckets import Bucket, assign, configured_buckets, crop_for
from mugv.latents.config import BucketConfig, EncodeConfig
from mugv.data.expectations_buckets import require_buckets
from mugv.data.ray_runner import in_process, ray_session
from mugv.latents.names import BUCKET_FILL, ENCODE_REPORT
from mugv.latents.shards import (
    INDEX,
    SHARDS,
    STATS,
    TEXT_NULL,
    ChannelStats,
    LatentStats,
    ShardInfo,
    ShardWriter,
    save_text_null,
    write_shard,
)
from mugv.data.video_io import VideoError, read_frames
from mugv.models.dit.config import PATCH_SIZE, video_tokens
from mugv.progress import LineProgress, stage_progress
from mugv.models.text.config import TextEncoderConfig
from mugv.models.text.model import DTYPES, TextEncoder

RAW_DIR = "raw-latents.tmp"


class LatentEncoder(Protocol):
    """What the stage needs of a video VAE."""

    compression: tuple[int, int, int]
    latent_channels: int

    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor: ...


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedSample:
    """One sample to encode: which clip, which frames [frame_start, frame_end), which bucket."""

    sample_id: str
    clip_id: str
    kind: str
    bucket: Bucket
    path: str
    caption: str
    fps: float
    frame_start: int
    frame_end: int
    src_height: int
    src_width: int


def _clip_rng(seed: int, clip_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{clip_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def caption_with_suffix(caption: str, row: pd.Series, cfg: EncodeConfig) -> str:
    """The caption as the text encoder sees it (optionally with MUG-V's aesthetic-score suffix)."""
    caption = "" if caption is None or (isinstance(caption, float) and np.isnan(caption)) else str(caption)
    if cfg.aesthetic_suffix == "none":
        return caption
    if cfg.aesthetic_suffix == "fixed":
        score = cfg.aesthetic_value
    else:
        if "aesthetic" not in row or pd.isna(row["aesthetic"]):
            raise ValueError(f"aesthetic_suffix=score needs an `aesthetic` column in qc.parquet (clip {row['clip_id']})")
        score = float(row["aesthetic"])
    return f"{caption.rstrip()} aesthetic score: {score:.1f}."


def plan_samples(
    kept: pd.DataFrame, clips_dir: str | os.PathLike, cfg: EncodeConfig
) -> tuple[list[PlannedSample], pd.DataFrame]:
    """Assign every kept clip to buckets; return the samples (sorted by bucket) and a per-clip table.

    The clip table has `clip_id`, `bucket` (video bucket name, None if unassigned) and `reason`.
    The video window start is drawn from a generator seeded by (seed, clip_id); image samples
    are `images_per_clip` evenly spaced key frames.
    """
    samples: list[PlannedSample] = []
    rows = []
    for _, row in kept.sort_values("clip_id").iterrows():
        clip_id, n = str(row["clip_id"]), int(row["num_frames"])
        h, w = int(row["height"]), int(row["width"])
        common = dict(
            clip_id=clip_id,
            path=str(Path(clips_dir) / row["path"]),
            caption=caption_with_suffix(row.get("caption"), row, cfg),
            fps=float(row["fps"]),
            src_height=h,
            src_width=w,
        )
        video = assign(h, w, n, cfg.buckets, video=True)
        rows.append({"clip_id": clip_id, "bucket": video.bucket().name if video.ok else None, "reason": video.reason})
        if video.ok:
            frames = video.frames
            start = int(_clip_rng(cfg.seed, clip_id).integers(0, n - frames + 1))
            samples.append(
                PlannedSample(f"{clip_id}-v", kind="video", bucket=video.bucket(), frame_start=start,
                              frame_end=start + frames, **common)
            )
        if cfg.images_per_clip:
            image = assign(h, w, n, cfg.buckets, video=False)
            if image.ok:
                k = min(cfg.images_per_clip, n)
                for j in range(k):
                    idx = int((j + 0.5) * n / k)
                    samples.append(
                        PlannedSample(f"{clip_id}-i{j}", kind="image", bucket=image.bucket(1), frame_start=idx,
                                      frame_end=idx + 1, **common)
                    )
    samples.sort(key=lambda s: (s.bucket.frames, s.bucket.height * s.bucket.width, s.bucket.name, s.sample_id))
    clips = pd.DataFrame(rows, columns=["clip_id", "bucket", "reason"])
    return samples, clips


def plan_tables(
    samples: list[PlannedSample], clips: pd.DataFrame, cfg: BucketConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables the bucket gate validates: configured buckets, clips, planned samples."""
    buckets = pd.DataFrame(
        [{"bucket": b.name, "resolvable": b.resolvable(cfg)} for b in configured_buckets(cfg)], columns=["bucket", "resolvable"]
    )
    planned = pd.DataFrame([{"bucket": s.bucket.name, "kind": s.kind} for s in samples], columns=["bucket", "kind"])
    return buckets, clips, planned


# --------------------------------------------------------------------------- decode


def load_pixels(s: PlannedSample) -> torch.Tensor:
    """Decode the sample's frames, cover-resize (never up), center-crop: float [3, T, H, W] in [-1, 1]."""
    frames = read_frames(s.path, s.frame_start, s.frame_end)
    want = s.frame_end - s.frame_start
    if len(frames) < want:
        raise VideoError(f"decoded {len(frames)} of {want} frames [{s.frame_start}, {s.frame_end})")
    b = s.bucket
    src_h, src_w = frames.shape[1:3]
    crop = crop_for(src_h, src_w, b.height, b.width)
    if crop is None:
        raise VideoError(f"decoded size {src_h}x{src_w} differs from the index and would be upscaled to {b.name}")
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if (crop.resize_h, crop.resize_w) != (src_h, src_w):
        x = F.interpolate(x, size=(crop.resize_h, crop.resize_w), mode="bilinear", antialias=True, align_corners=False)
    x = x[:, :, crop.top : crop.top + crop.height, crop.left : crop.left + crop.width]
    x = (x / 127.5 - 1.0).clamp_(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()


def plan_batches(samples: list[PlannedSample], batch_size: int) -> list[list[PlannedSample]]:
    """Consecutive samples of one bucket, at most `batch_size` each: the VAE's batches, fixed before any decode
    (a sample that fails to decode leaves its batch one short), so every way of running them encodes the same
    batches and writes the same bytes."""
    batches: list[list[PlannedSample]] = []
    for s in samples:
        if batches and batches[-1][0].bucket == s.bucket and len(batches[-1]) < batch_size:
            batches[-1].append(s)
        else:
            batches.append([s])
    return batches


@dataclass
class EncodedBatch:
    """One planned batch after the VAE and the text encoder: the samples that decoded, their latents and caption
    features, and why the others did not."""

    samples: list[PlannedSample]
    latents: torch.Tensor | None  # float32 [len(samples), C, T, H, W] on the CPU; None when none decoded
    texts: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per sample: `text`, `text_mask`
    failed: dict[str, str] = field(default_factory=dict)
    decode_s: float = 0.0
    vae_s: float = 0.0
    text_s: float = 0.0
    captions_encoded: int = 0


DECODE_ERRORS = (VideoError, OSError, ValueError, RuntimeError)


def _run_vae(vae: LatentEncoder, pixels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    x = torch.stack(pixels).to(device)
    with torch.inference_mode():
        return vae.encode(x, sample=False).float().cpu()


def _text_tensors(features: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Keep only the valid (leading) tokens of one caption; the full-length mask says how many there were."""
    n = int(mask.sum())
    if not bool(mask[:n].all()):
        raise ValueError("text mask is not left-aligned; the tokenizer must pad on the right")
    return {"text": features[:n].to(dtype).clone(), "text_mask": mask.to(torch.int8)}


def caption_features(encoder: TextEncoder, captions: list[str], dtype: torch.dtype) -> list[dict[str, torch.Tensor]]:
    """Features of each caption, the distinct ones encoded in one call (in first-seen order): a batch's features
    depend on that batch alone, so every way of running the batches writes the same bytes."""
    distinct = list(dict.fromkeys(captions))
    feats, masks = encoder.encode(distinct)
    by_caption = {c: _text_tensors(f, m, dtype) for c, f, m in zip(distinct, feats, masks)}
    return [by_caption[c] for c in captions]


@dataclass(frozen=True)
class BatchModels:
    """What encodes a decoded batch: the VAE, the text encoder, the device and the dtype of caption features."""

    vae: LatentEncoder
    text_encoder: TextEncoder
    device: torch.device
    text_dtype: torch.dtype


def _decode_each(pending: Iterable[tuple[PlannedSample, Callable[[], torch.Tensor]]]) -> tuple[
        list[tuple[PlannedSample, torch.Tensor]], dict[str, str], float]:
    """Each sample's pixels (from its getter), or why it failed to decode; and the seconds it took."""
    ok: list[tuple[PlannedSample, torch.Tensor]] = []
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    for sample, pixels in pending:
        try:
            ok.append((sample, pixels()))
        except DECODE_ERRORS as e:
            failed[sample.sample_id] = f"decode: {e}"
    return ok, failed, time.perf_counter() - t0


def _encoded(models: BatchModels, decoded: list[tuple[PlannedSample, torch.Tensor]], failed: dict[str, str],
             decode_s: float) -> EncodedBatch:
    if not decoded:
        return EncodedBatch([], None, [], failed, decode_s)
    t0 = time.perf_counter()
    latents = _run_vae(models.vae, [p for _, p in decoded], models.device)
    t1 = time.perf_counter()
    captions = [s.caption for s, _ in decoded]
    texts = caption_features(models.text_encoder, captions, models.text_dtype)
    return EncodedBatch([s for s, _ in decoded], latents, texts, failed, decode_s, t1 - t0, time.perf_counter() - t1,
                        len(set(captions)))


def prefetch_map(
    fn: Callable, items: Iterable, workers: int, depth: int
) -> Iterator[tuple[object, Future]]:
    """Run fn over items in a thread pool, at most `depth` ahead; yield (item, future) in input order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode-decode") as pool:
        pending: deque = deque()
        it = iter(items)
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= depth:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield item, fut


def encode_here(batches: list[list[PlannedSample]], models: BatchModels, cfg: EncodeConfig) -> Iterator[EncodedBatch]:
    """The batches encoded in this process, with `cfg.decode_threads` threads decoding up to `cfg.prefetch`
    samples ahead of the VAE."""
    samples = [s for batch in batches for s in batch]
    decoded = prefetch_map(load_pixels, samples, cfg.decode_threads, max(cfg.prefetch, cfg.batch_size))
    for batch in batches:
        yield _encoded(models, *_decode_each((sample, fut.result) for sample, fut in islice(decoded, len(batch))))


@dataclass(frozen=True)
class BatchJob:
    """What a Ray task needs to encode one batch: where the VAE is, the text encoder, the device, the samples."""

    vae_path: str
    device: str
    text: TextEncoderConfig
    text_dtype: str
    samples: tuple[PlannedSample, ...]


@functools.lru_cache(maxsize=1)
def _worker_vae(path: str, device: str):
    """The VAE of a Ray worker, loaded once per worker process (safetensors) and reused by its later tasks."""
    from mugv.models.vae import load_vae

    torch.set_grad_enabled(False)
    return load_vae(path, map_location=device).eval()


@functools.lru_cache(maxsize=1)
def _worker_text_encoder(text_json: str, device: str) -> TextEncoder:
    """The text encoder of a Ray worker (its config as JSON), loaded once per worker process from local files."""
    from mugv.models.text.model import load_text_encoder

    return load_text_encoder(TextEncoderConfig.model_validate_json(text_json), device=device)


def _worker_models(job: BatchJob) -> BatchModels:
    text_encoder = _worker_text_encoder(job.text.model_dump_json(), job.device)
    return BatchModels(_worker_vae(job.vae_path, job.device), text_encoder, torch.device(job.device),
                       DTYPES[job.text_dtype])


def encode_batch_job(job: BatchJob) -> EncodedBatch:
    """Decode one batch, then encode its frames and captions, in a Ray worker (a Ray task's body)."""
    models = _worker_models(job)
    return _encoded(models, *_decode_each((sample, functools.partial(load_pixels, sample)) for sample in job.samples))


@dataclass(frozen=True)
class TextNullJob:
    """What a Ray task needs to encode the null caption and the negative prompt."""

    text: TextEncoderConfig
    text_dtype: str
    device: str
    negative_prompt: str


def text_null_job(job: TextNullJob) -> dict[str, torch.Tensor]:
    """The features of the null caption and the negative prompt, in a Ray worker (a Ray task's body)."""
    encoder = _worker_text_encoder(job.text.model_dump_json(), job.device)
    return text_null_tensors(encoder, job.negative_prompt, DTYPES[job.text_dtype])


def _ray_device(cfg: EncodeConfig) -> tuple[str, int]:
    """The device a Ray task's models run on and the GPUs it asks Ray for: ('cuda', 1) on CUDA (Ray assigns the
    GPU), else (cfg.device, 0)."""
    cuda = torch.device(cfg.device).type == "cuda"
    return ("cuda", 1) if cuda else (cfg.device, 0)


def encode_on_ray(batches: list[list[PlannedSample]], vae_path: str, cfg: EncodeConfig) -> Iterator[EncodedBatch]:
    """The batches as Ray tasks (one GPU each when the device is CUDA; Ray assigns it), yielded in order. A batch
    whose worker died or timed out is quarantined sample by sample with the reason; an exception escaping the
    VAE stops the stage, as it does in this process."""
    from mugv.data.ray_runner import iter_tasks

    device, gpus = _ray_device(cfg)
    jobs = [BatchJob(str(vae_path), device, cfg.text, cfg.text_dtype, tuple(batch)) for batch in batches]
    for job, outcome in zip(jobs, iter_tasks(encode_batch_job, jobs, cfg.ray, cfg.workers, num_gpus=gpus)):
        if outcome.result is not None:
            yield outcome.result
        elif outcome.error.startswith("worker error:"):
            raise RuntimeError(f"encoding a batch of {job.samples[0].bucket.name} failed: {outcome.error}")
        else:
            yield EncodedBatch([], None, [], {s.sample_id: f"encode: {outcome.error}" for s in job.samples})


def text_null_on_ray(cfg: EncodeConfig, negative_prompt: str) -> dict[str, torch.Tensor]:
    """`text_null_job` as one Ray task (a GPU on CUDA); its failure stops the stage."""
    from mugv.data.ray_runner import iter_tasks

    device, gpus = _ray_device(cfg)
    job = TextNullJob(cfg.text, cfg.text_dtype, device, negative_prompt)
    outcome = next(iter_tasks(text_null_job, [job], cfg.ray, cfg.workers, num_gpus=gpus))
    if outcome.result is None:
        raise RuntimeError(f"encoding the null caption and the negative prompt failed: {outcome.error}")
    return outcome.result


# --------------------------------------------------------------------------- report


@dataclass
class EncodeReport:
    """What the stage did: sample counts, where clips went, and how fast."""

    out_dir: str
    samples: int
    videos: int
    images: int
    shards: int
    frames: int
    seconds: float
    frames_per_s: float
    per_bucket: dict[str, int] = field(default_factory=dict)
    unassigned: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    unassigned_count: int = 0
    failed_count: int = 0
    fill_csv: str = ""


TIMING_FIELDS = ("seconds", "frames_per_s", "timings")  # vary run to run: MLflow and the console only


def write_report(report: EncodeReport, path: Path) -> None:
    """The report less its timings: a DVC output, so the same inputs must give the same bytes."""
    fields = {k: v for k, v in asdict(report).items() if k not in TIMING_FIELDS}
    path.write_text(json.dumps(fields, indent=1, sort_keys=True) + "\n")


def bucket_fill(index: pd.DataFrame, cfg: BucketConfig) -> pd.DataFrame:
    """Samples per configured bucket (empty ones included) with latent shape and DiT tokens per sample."""
    counts = index.groupby("bucket").size() if len(index) else pd.Series(dtype=int)
    shapes = index.groupby("bucket")[["latent_t", "latent_h", "latent_w"]].first() if len(index) else None
    rows = []
    for b in configured_buckets(cfg):
        n = int(counts.get(b.name, 0))
        t, h, w = (int(v) for v in shapes.loc[b.name]) if n else (None, None, None)
        rows.append(
            dict(bucket=b.name, resolution=b.resolution, height=b.height, width=b.width, frames=b.frames,
                 kind=b.kind, samples=n, latent_t=t, latent_h=h, latent_w=w,
                 tokens=video_tokens(t, h, w, PATCH_SIZE) if n else None)
        )
    table = pd.DataFrame(rows)
    for col in ("latent_t", "latent_h", "latent_w", "tokens"):
        table[col] = table[col].astype("Int64")
    return table


def fill_table(fill: pd.DataFrame) -> Table:
    """The used buckets as a rich table; the empty ones are counted in the caption."""
    used = fill[fill["samples"] > 0]
    table = Table(title="bucket fill", caption=f"{len(fill) - len(used)} of {len(fill)} configured buckets empty")
    for col in ("bucket", "kind", "samples", "latent (T,H,W)", "tokens"):
        table.add_column(col, justify="left" if col in ("bucket", "kind") else "right")
    for r in used.itertuples():
        table.add_row(r.bucket, r.kind, str(r.samples), f"{r.latent_t},{r.latent_h},{r.latent_w}", str(r.tokens))
    return table


# --------------------------------------------------------------------------- stage


def _progress(enabled: bool) -> Progress | LineProgress:
    return stage_progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), enabled=enabled, label="encode",
    )


def encode_clips(
    kept: pd.DataFrame,
    clips_dir: str | os.PathLike,
    vae: LatentEncoder,
    text_encoder: TextEncoder | None,
    out_dir: str | os.PathLike,
    cfg: EncodeConfig,
    progress: bool = True,
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
    vae_path: str | os.PathLike | None = None,
) -> EncodeReport:
    """Plan, gate, encode (pass 1: raw latents, caption features and running stats), normalise once (pass 2), index.

    Pass 1 runs in this process (`cfg.workers` 1; `text_encoder`, or `cfg.text` loaded here when None) or as one
    Ray task per batch, whose workers load the VAE from `vae_path` (the checkpoint `vae` was loaded from) and
    the text encoder from `cfg.text`: the captions are encoded beside the frames, so this process only
    gathers and writes. Each batch's captions are encoded together, so both write the same bytes.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    console = Console(quiet=not progress)
    timing: Counter = Counter()

    _check_vae_fits_buckets(vae, cfg.buckets)
    samples, clips = plan_samples(kept, clips_dir, cfg)
    require_buckets(*plan_tables(samples, clips, cfg.buckets), cfg.checks)
    timing["plan_s"] = time.perf_counter() - started

    out = Path(out_dir)
    _clear_outputs(out)

    max_bytes = int(cfg.max_shard_mb * (1 << 20))
    raw_writer = ShardWriter(out / RAW_DIR, max_bytes)
    stats = ChannelStats()
    rows: list[dict] = []
    failed: dict[str, str] = {}
    text_dtype = DTYPES[cfg.text_dtype]

    t_pass1 = time.perf_counter()
    batches = plan_batches(samples, cfg.batch_size)
    here = in_process(cfg.ray, cfg.workers)
    if here:
        if text_encoder is None:
            from mugv.models.text.model import load_text_encoder

            text_encoder = load_text_encoder(cfg.text, device=cfg.device)
        encoded = encode_here(batches, BatchModels(vae, text_encoder, torch.device(cfg.device), text_dtype), cfg)
    elif vae_path is None:
        raise ValueError("encode.workers other than 1 runs batches on Ray workers, which load the VAE from "
                         "its checkpoint: pass vae_path")
    else:
        encoded = encode_on_ray(batches, vae_path, cfg)
    with nullcontext() if here else ray_session(cfg.ray, cfg.workers), _progress(progress) as bar:
        task = bar.add_task("encode", total=len(samples))
        for batch in encoded:
            failed.update(batch.failed)
            for key in ("decode_s", "vae_s", "text_s", "captions_encoded"):
                timing[key] += getattr(batch, key)
            if batch.samples:
                t0 = time.perf_counter()
                z = batch.latents
                stats.update(z)
                for i, (s, text) in enumerate(zip(batch.samples, batch.texts)):
                    shard = raw_writer.add(s.sample_id, {"latent": z[i], **text})
                    rows.append(_index_row(s, z[i].shape, shard, int(text["text_mask"].sum())))
                timing["frames"] += sum(s.bucket.frames for s in batch.samples)
                timing["write_s"] += time.perf_counter() - t0
            bar.update(task, completed=len(rows) + len(failed))
        raw_shards = raw_writer.close()
        timing["pass1_s"] = time.perf_counter() - t_pass1
        if not rows:
            raise RuntimeError(f"no sample could be encoded ({len(failed)} failed to decode)")
        null_text = (text_null_tensors(text_encoder, negative_prompt, text_dtype) if here
                     else text_null_on_ray(cfg, negative_prompt))
        latent_stats = _choose_stats(stats, vae, cfg)
        latent_stats.save(out / STATS)

        t_pass2 = time.perf_counter()
        task2 = bar.add_task("normalise", total=len(raw_shards))
        final = _normalise_shards(out, raw_shards, latent_stats, DTYPES[cfg.latent_dtype], lambda: bar.advance(task2))
        timing["pass2_s"] = time.perf_counter() - t_pass2
    shutil.rmtree(out / RAW_DIR, ignore_errors=True)

    index = pd.DataFrame(rows)
    index["shard_sha256"] = index["shard"].map(final)
    index.to_parquet(out / INDEX, index=False)
    save_text_null(out / TEXT_NULL, null_text, {"negative_prompt": negative_prompt, "text_encoder": cfg.text.name,
                                                "max_length": str(cfg.text.max_length)})

    fill = bucket_fill(index, cfg.buckets)
    fill.to_csv(out / BUCKET_FILL, index=False)
    seconds = time.perf_counter() - started
    frames = int(timing.pop("frames", 0))
    report = EncodeReport(
        out_dir=str(out),
        samples=len(index),
        videos=int((index["kind"] == "video").sum()),
        images=int((index["kind"] == "image").sum()),
        shards=len(final),
        frames=frames,
        seconds=seconds,
        frames_per_s=frames / timing["pass1_s"] if timing["pass1_s"] else 0.0,
        per_bucket={k: int(v) for k, v in index.groupby("bucket").size().items()},
        unassigned={r.clip_id: r.reason for r in clips.itertuples() if pd.isna(r.bucket)},
        failed=failed,
        timings={k: round(float(v), 4) for k, v in timing.items()},
        unassigned_count=int(clips["bucket"].isna().sum()),
        failed_count=len(failed),
        fill_csv=str(out / BUCKET_FILL),
    )
    write_report(report, out / ENCODE_REPORT)
    console.print(fill_table(fill))
    return report


def _check_vae_fits_buckets(vae: LatentEncoder, buckets: BucketConfig) -> None:
    ct, ch, cw = vae.compression
    if buckets.temporal_stride != ct or buckets.spatial_multiple % ch or buckets.spatial_multiple % cw:
        raise ValueError(
            f"bucket config (temporal_stride {buckets.temporal_stride}, spatial_multiple {buckets.spatial_multiple}) "
            f"does not match the VAE's compression {tuple(vae.compression)}"
        )


def _clear_outputs(out: Path) -> None:
    """Remove what an earlier run left, so no index can point at shards of another run."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in (SHARDS, RAW_DIR):
        shutil.rmtree(out / folder, ignore_errors=True)
    for name in (INDEX, STATS, TEXT_NULL, ENCODE_REPORT, BUCKET_FILL):
        (out / name).unlink(missing_ok=True)


def _choose_stats(measured: ChannelStats, vae: LatentEncoder, cfg: EncodeConfig) -> LatentStats:
    """The stats every stored latent is standardised with: measured here, or shipped with the checkpoint."""
    dataset = measured.finalize()
    if cfg.latent_stats == "dataset":
        return dataset
    if not hasattr(vae, "latent_stats"):
        raise ValueError("latent_stats=checkpoint needs a VAE with latent_stats() (per-channel mean, std)")
    mean, std = vae.latent_stats()
    return LatentStats(mean=mean.tolist(), std=std.tolist(), count=dataset.count)


def _index_row(s: PlannedSample, shape: torch.Size, shard: str, text_len: int) -> dict:
    _, t, h, w = (int(v) for v in shape)
    return dict(
        sample_id=s.sample_id, clip_id=s.clip_id, kind=s.kind, bucket=s.bucket.name, height=s.bucket.height,
        width=s.bucket.width, num_frames=s.bucket.frames, latent_t=t, latent_h=h, latent_w=w, shard=shard,
        caption=s.caption, fps=s.fps, frame_start=s.frame_start, frame_end=s.frame_end, text_len=text_len,
    )


def _normalise_shards(
    out: Path, raw_shards: list[ShardInfo], stats: LatentStats, dtype: torch.dtype, step: Callable[[], None]
) -> dict[str, str]:
    """Rewrite each raw shard with (z - mean) / std latents under the same name; return name -> sha256."""
    checksums: dict[str, str] = {}
    for raw in raw_shards:
        tensors = {}
        with safe_open(str(out / RAW_DIR / raw.name), framework="pt") as f:
            for key in f.keys():
                value = f.get_tensor(key)
                tensors[key] = stats.normalize(value).to(dtype) if key.endswith(".latent") else value
        info = write_shard(out, raw.name, tensors, raw.samples)
        checksums[info.name] = info.sha256
        step()
    return checksums


def text_null_tensors(text_encoder: TextEncoder, negative_prompt: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`null.text`, `null.text_mask`, `negative.text`, `negative.text_mask`: the features classifier-free guidance
    needs, the two captions encoded in one call."""
    feats, masks = text_encoder.encode(["", negative_prompt])
    tensors = {}
    for i, which in enumerate(("null", "negative")):
        for key, value in _text_tensors(feats[i], masks[i], dtype).items():
            tensors[f"{which}.{key}"] = value
    return tensors
