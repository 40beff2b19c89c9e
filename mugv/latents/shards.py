"""Latent data set on disk: safetensors shards with checksums, per-channel latent stats, and a lazy reader."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from mugv import storage
from mugv.latents.names import INDEX, SHARDS, STATS, TEXT_NULL  # noqa: F401  (the data set's file names)

CHUNK = 1 << 20


class ShardChecksumError(RuntimeError):
    """A shard's bytes do not match the sha256 recorded in the index."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def shard_name(i: int) -> str:
    return f"{SHARDS}/shard-{i:05d}.safetensors"


# --------------------------------------------------------------------------- stats


class ChannelStats:
    """Running per-channel mean and variance (Chan/Welford merge in float64) over latents [..., C, T, H, W]."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, z: torch.Tensor) -> None:
        """Add one latent [C, T, H, W] or a batch [B, C, T, H, W]."""
        z = z.detach().to(torch.float64)
        if z.dim() == 5:
            z = z.transpose(0, 1)
        flat = z.reshape(z.shape[0], -1)
        n = flat.shape[1]
        mean = flat.mean(dim=1)
        m2 = ((flat - mean[:, None]) ** 2).sum(dim=1)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def finalize(self, eps: float = 1e-6) -> "LatentStats":
        if self.mean is None or self.count < 2:
            raise ValueError("latent stats need at least two latent values per channel")
        std = torch.sqrt(self.m2 / (self.count - 1)).clamp_min(eps)
        return LatentStats(mean=self.mean.tolist(), std=std.tolist(), count=self.count)


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean/std of raw VAE latents over a data set; stored latents are (z - mean) / std."""

    mean: list[float]
    std: list[float]
    count: int

    def _shape(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = [-1] + [1] * (z.dim() - 1) if z.dim() == 4 else [1, -1, 1, 1, 1]
        mean = torch.tensor(self.mean, dtype=torch.float64).view(view)
        std = torch.tensor(self.std, dtype=torch.float64).view(view)
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._shape(z)
        return ((z.to(torch.float64) - mean) / std).to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._shape(z)
        return (z.to(torch.float64) * std + mean).to(z.dtype)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"mean": self.mean, "std": self.std, "count": self.count}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentStats":
        raw = json.loads(Path(path).read_text())
        if len(raw["mean"]) != len(raw["std"]):
            raise ValueError(f"{path}: mean and std have different lengths")
        return cls(mean=[float(x) for x in raw["mean"]], std=[float(x) for x in raw["std"]], count=int(raw["count"]))


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its path relative to the data set root, checksum, sample count and size."""

    name: str
    sha256: str
    samples: int
    bytes: int


def write_shard(root: str | os.PathLike, name: str, tensors: dict[str, torch.Tensor], samples: int) -> ShardInfo:
    """Write one safetensors shard atomically (temporary name, then rename) and hash it."""
    final = Path(root) / name
    with storage.atomic_path(final) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return ShardInfo(name, file_sha256(final), samples, final.stat().st_size)


class ShardWriter:
    """Buffers samples and writes a safetensors shard whenever the buffer reaches `max_shard_bytes`.

    Each sample contributes tensors under keys `<sample_id>.<field>`. Memory held is at most
    one shard plus one sample. Shards are written to a temporary name and renamed when complete.
    """

    def __init__(self, root: str | os.PathLike, max_shard_bytes: int):
        self.root = Path(root)
        (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.next_index = 0
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffer_bytes = 0
        self.buffer_samples = 0
        self.shards: list[ShardInfo] = []

    @property
    def current(self) -> str:
        """Name of the shard the next sample goes to."""
        return shard_name(self.next_index)

    def add(self, sample_id: str, tensors: dict[str, torch.Tensor]) -> str:
        """Queue one sample; return the shard it lands in."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.buffer_samples and self.buffer_bytes + size > self.max_shard_bytes:
            self.flush()
        for key, tensor in tensors.items():
            full = f"{sample_id}.{key}"
            if full in self.buffer:
                raise KeyError(f"duplicate tensor key {full}")
            self.buffer[full] = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
        self.buffer_bytes += size
        self.buffer_samples += 1
        return self.current

    def flush(self) -> ShardInfo | None:
        if not self.buffer:
            return None
        info = write_shard(self.root, self.current, self.buffer, self.buffer_samples)
        self.shards.append(info)
        self.buffer, self.buffer_bytes, self.buffer_samples = {}, 0, 0
        self.next_index += 1
        return info

    def close(self) -> list[ShardInfo]:
        self.flush()
        return self.shards


def save_text_null(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the null-caption and negative-prompt embeddings used for classifier-free guidance.

    The same tensors and metadata give the same bytes (the file is a DVC output, hashed in dvc.lock):
    safetensors writes a header's metadata in hash-map order, which changes from process to process, so
    the metadata is put back in sorted order; the header keeps its length and the tensor offsets stay valid.
    """
    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    sorted_header = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(sorted_header) > length:
        raise AssertionError("a safetensors header grew when its metadata was sorted")
    Path(path).write_bytes(data[:8] + sorted_header.ljust(length, b" ") + data[8 + length :])


# --------------------------------------------------------------------------- reading


def pad_text(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Stored features hold only the valid tokens [text_len, D]; zero-pad them to the mask's length."""
    out = text.new_zeros(mask.shape[0], text.shape[-1])
    out[: text.shape[0]] = text
    return out


def _sample_bytes(sample: dict) -> int:
    """Memory held by a sample's tensors (the cache's size measure)."""
    return sum(v.numel() * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))


def load_text_null(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `text_null.safetensors` file, zero-padded: keys null/negative + .text/.text_mask."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for which in ("null", "negative"):
            mask = f.get_tensor(f"{which}.text_mask")
            out[f"{which}.text"] = pad_text(f.get_tensor(f"{which}.text"), mask)
            out[f"{which}.text_mask"] = mask.to(torch.int64)
    return out


class LatentDataset:
    """Read a latent data set sample by sample: lazy, memory-mapped shards, checksums verified on first use.

    `dataset[i]` / `dataset.get(sample_id)` return a dict with `latent` [C, T, H, W] (normalised),
    `text` [L, D] (zero-padded), `text_mask` [L] and the index row's fields. With `cache_mb` > 0,
    read samples stay in memory (least recently used out first): an epoch-based trainer then opens
    each shard entry once instead of once per step. Callers must not modify the returned tensors.
    """

    def __init__(self, root: str | os.PathLike, verify: bool = True, cache_mb: float = 0.0):
        self.root = Path(root)
        self._cache = None
        if cache_mb > 0:
            from cachetools import LRUCache

            self._cache = LRUCache(maxsize=int(cache_mb * 2**20), getsizeof=_sample_bytes)
        index = self.root / INDEX
        if not index.exists():
            raise FileNotFoundError(f"no latent index at {index}")
        import pandas as pd  # here, not at the top: generate reads no index and skips pandas' import

        self.index = pd.read_parquet(index)
        self.verify = verify
        self._row = {sid: i for i, sid in enumerate(self.index["sample_id"])}
        self._records = self.index.to_dict("records")  # a row as a dict without pandas' per-row cost (~5 ms)
        checksums = self.index.groupby("shard")["shard_sha256"].unique()
        for shard, values in checksums.items():
            if len(values) != 1:
                raise ShardChecksumError(f"{shard}: the index records {len(values)} different checksums")
        self.checksums: dict[str, str] = {shard: values[0] for shard, values in checksums.items()}
        self._verified: set[str] = set()
        self.stats = LatentStats.load(self.root / STATS)

    def __len__(self) -> int:
        return len(self.index)

    def verify_shard(self, shard: str) -> None:
        """Hash a shard and compare with the index; raise ShardChecksumError naming the shard on mismatch."""
        path = self.root / shard
        if not path.exists():
            raise ShardChecksumError(f"shard {shard} is missing from {self.root}")
        actual = file_sha256(path)
        if actual != self.checksums[shard]:
            raise ShardChecksumError(
                f"shard {shard} is corrupt: sha256 {actual[:16]}... != {self.checksums[shard][:16]}... in {INDEX}"
            )
        self._verified.add(shard)

    def verify_all(self) -> None:
        for shard in sorted(self.checksums):
            self.verify_shard(shard)

    def __getitem__(self, i: int) -> dict:
        if self._cache is None:
            return self._read(i)
        sample = self._cache.get(i)
        if sample is None:
            sample = self._read(i)
            if _sample_bytes(sample) <= self._cache.maxsize:
                self._cache[i] = sample
        return dict(sample)  # a fresh dict per call: callers may add keys, never share them

    def _read(self, i: int) -> dict:
        row = self._records[i]
        shard = row["shard"]
        if self.verify and shard not in self._verified:
            self.verify_shard(shard)
        sid = row["sample_id"]
        with safe_open(str(self.root / shard), framework="pt") as f:
            latent = f.get_tensor(f"{sid}.latent")
            text = f.get_tensor(f"{sid}.text")
            mask = f.get_tensor(f"{sid}.text_mask")
        sample = dict(row)
        sample.update(latent=latent, text=pad_text(text, mask), text_mask=mask.to(torch.int64))
        return sample

    def get(self, sample_id: str) -> dict:
        if sample_id not in self._row:
            raise KeyError(f"no sample {sample_id!r} in {self.root / INDEX}")
        return self[self._row[sample_id]]

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def text_null(self) -> dict[str, torch.Tensor]:
        """Null-caption and negative-prompt features, zero-padded: keys null/negative + .text/.text_mask."""
        return load_text_null(self.root / TEXT_NULL)
