"""Token-budget batches by bucket: seeded, resumable, split over data-parallel ranks, from the index table alone."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mugv.training.config import BatchingConfig
from mugv.models.dit.config import START_END_TOKEN_COUNT, video_tokens

INDEX_COLUMNS = ["sample_id", "bucket", "kind", "latent_t", "latent_h", "latent_w"]


def sample_tokens(
    latent_t: int, latent_h: int, latent_w: int, patch_size: tuple[int, int, int] = (1, 2, 2),
    start_end_tokens: int = START_END_TOKEN_COUNT,
) -> int:
    """Sequence length of one sample: its patch tokens plus the start and end tokens (`DiTConfig.tokens`)."""
    return video_tokens(latent_t, latent_h, latent_w, patch_size) + start_end_tokens


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch: its number in the global stream, its bucket, the index rows it holds, their tokens."""

    index: int
    bucket: str
    rows: tuple[int, ...]
    tokens: int
    is_image: bool


@dataclass(frozen=True)
class StepBatches:
    """What one optimizer step consumes: this rank's micro-batches and those of every DP rank."""

    local: list[MicroBatch]
    all: list[MicroBatch]
    tokens_per_batch: int

    @property
    def global_samples(self) -> int:
        return sum(len(m.rows) for m in self.all)

    @property
    def global_tokens(self) -> int:
        return sum(m.tokens for m in self.all)

    @property
    def padding_waste(self) -> float:
        """Share of the step's token budget left unused (batches hold whole samples of one bucket)."""
        return 1.0 - self.global_tokens / (len(self.all) * self.tokens_per_batch)


@dataclass(frozen=True)
class _Bucket:
    name: str
    rows: np.ndarray
    tokens: int
    batch_size: int
    is_image: bool

    @property
    def batches_per_epoch(self) -> float:
        return len(self.rows) / self.batch_size


class BucketBatchSampler:
    """An endless, seeded stream of single-bucket micro-batches, each as many samples as fit the budget.

    Micro-batch i picks its kind (image or video) to meet `image_fraction` exactly over any prefix
    of the stream, then a bucket with probability proportional to that bucket's batches per epoch
    (so every sample is seen equally often), then the next `batch_size` samples of the bucket's own
    endless stream of per-epoch permutations (no partial batches). An optimizer step takes
    `dp_size * micro_batches` consecutive micro-batches; DP rank r gets its `micro_batches` slice.
    The stream does not depend on the DP layout, so a resume on another DP size continues it.
    State is the number of micro-batches consumed plus one cursor per bucket.
    """

    def __init__(
        self,
        index: pd.DataFrame,
        cfg: BatchingConfig,
        seed: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        micro_batches: int = 1,
        exclude: frozenset[str] | set[str] = frozenset(),
        patch_size: tuple[int, int, int] = (1, 2, 2),
        start_end_tokens: int = START_END_TOKEN_COUNT,
    ) -> None:
        if not 0 <= dp_rank < dp_size or micro_batches < 1:
            raise ValueError(f"need 0 <= dp_rank < dp_size and micro_batches >= 1, got {dp_rank}, {dp_size}, {micro_batches}")
        self.cfg, self.seed = cfg, seed
        self.dp_rank, self.dp_size, self.micro_batches = dp_rank, dp_size, micro_batches
        self.buckets = self._plan(index, cfg, exclude, patch_size, start_end_tokens)
        self._check_mix()
        self.consumed = 0
        self.cursors = {b.name: 0 for b in self.buckets}
        self._perms: dict[tuple[str, int], np.ndarray] = {}

    # ------------------------------------------------------------------ plan

    @staticmethod
    def _plan(index: pd.DataFrame, cfg: BatchingConfig, exclude, patch_size, start_end_tokens) -> list[_Bucket]:
        available = sorted(index["bucket"].unique())
        chosen = [b for b in available if any(fnmatch.fnmatchcase(b, p) for p in cfg.buckets)]
        if not chosen:
            raise ValueError(f"bucket patterns {cfg.buckets} match none of the data set's buckets {available}")
        keep = index["bucket"].isin(chosen) & ~index["sample_id"].isin(list(exclude))
        rows = index.assign(_row=np.arange(len(index)))[keep]
        out = []
        for name, group in rows.groupby("bucket", sort=True):
            shapes = group[["latent_t", "latent_h", "latent_w"]].drop_duplicates()
            if len(shapes) != 1:
                raise ValueError(f"bucket {name} holds {len(shapes)} latent shapes; a bucket must have one")
            t, h, w = (int(v) for v in shapes.iloc[0])
            tokens = sample_tokens(t, h, w, patch_size, start_end_tokens)
            batch_size = cfg.tokens_per_batch // tokens
            if batch_size == 0:
                raise ValueError(
                    f"bucket {name}: one sample is {tokens} tokens, more than tokens_per_batch {cfg.tokens_per_batch}"
                )
            kinds = set(group["kind"])
            out.append(_Bucket(name, group["_row"].to_numpy(np.int64), tokens, batch_size, kinds == {"image"}))
        if not out:
            raise ValueError(f"buckets {chosen} have no samples left after excluding {len(exclude)} held-out ones")
        return out

    def _check_mix(self) -> None:
        fraction = self.cfg.image_fraction
        kinds = {b.is_image for b in self.buckets}
        if fraction is not None and 0 < fraction < 1 and len(kinds) < 2:
            have = "image" if True in kinds else "video"
            raise ValueError(f"image_fraction {fraction} needs image and video buckets; the chosen ones are all {have}")
        if (fraction == 1 and True not in kinds) or (fraction == 0 and False not in kinds):
            raise ValueError(f"image_fraction {fraction} asks for a kind of bucket the chosen buckets lack")

    def fingerprint(self) -> str:
        """Identifies the stream: seed, config and the samples per bucket (not the DP layout)."""
        plan = [(b.name, len(b.rows), int(b.rows.sum()), b.tokens) for b in self.buckets]
        text = json.dumps([self.seed, self.cfg.model_dump(), plan])
        return hashlib.sha256(text.encode()).hexdigest()

    def _choice_weights(self) -> np.ndarray:
        """Probability of each bucket per micro-batch."""
        fraction = self.cfg.image_fraction
        mass = np.array([b.batches_per_epoch for b in self.buckets])
        if fraction is None:
            return mass / mass.sum()
        is_image = np.array([b.is_image for b in self.buckets])
        out = np.zeros(len(mass))
        for flag, share in ((True, fraction), (False, 1.0 - fraction)):
            if is_image[is_image == flag].size:
                out[is_image == flag] = share * mass[is_image == flag] / mass[is_image == flag].sum()
        return out

    def expected_padding_waste(self) -> float:
        """Share of the token budget a micro-batch leaves unused, averaged over the bucket mix."""
        p = self._choice_weights()
        used = sum(pi * b.batch_size * b.tokens for pi, b in zip(p, self.buckets))
        return 1.0 - used / self.cfg.tokens_per_batch

    @property
    def num_samples(self) -> int:
        return sum(len(b.rows) for b in self.buckets)

    # ------------------------------------------------------------------ stream

    def _pick_bucket(self, i: int) -> _Bucket:
        fraction = self.cfg.image_fraction
        if fraction is None:
            candidates = self.buckets
        else:
            want_image = math.floor((i + 1) * fraction) > math.floor(i * fraction)
            candidates = [b for b in self.buckets if b.is_image == want_image]
        weights = np.array([b.batches_per_epoch for b in candidates])
        rng = np.random.default_rng([self.seed, i, 1])
        return candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]

    def _permutation(self, bucket: _Bucket, epoch: int) -> np.ndarray:
        key = (bucket.name, epoch)
        if key not in self._perms:
            for old in [k for k in self._perms if k[0] == bucket.name and k[1] < epoch]:
                del self._perms[old]
            rng = np.random.default_rng([self.seed, _stable_int(bucket.name), epoch, 2])
            self._perms[key] = rng.permutation(len(bucket.rows))
        return self._perms[key]

    def _take(self, i: int) -> MicroBatch:
        bucket = self._pick_bucket(i)
        start = self.cursors[bucket.name] * bucket.batch_size
        self.cursors[bucket.name] += 1
        n = len(bucket.rows)
        rows = []
        for position in range(start, start + bucket.batch_size):
            epoch, offset = divmod(position, n)
            rows.append(int(bucket.rows[self._permutation(bucket, epoch)[offset]]))
        return MicroBatch(i, bucket.name, tuple(rows), bucket.tokens * len(rows), bucket.is_image)

    def next_step(self) -> StepBatches:
        """The micro-batches of the next optimizer step for this DP rank, and the step's global totals."""
        per_step = self.dp_size * self.micro_batches
        taken = [self._take(self.consumed + j) for j in range(per_step)]
        self.consumed += per_step
        first = self.dp_rank * self.micro_batches
        return StepBatches(taken[first : first + self.micro_batches], taken, self.cfg.tokens_per_batch)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "cursors": dict(self.cursors), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue a saved stream. `strict=False` (the data set changed on purpose) keeps the position and the
        cursors of buckets that still exist, knowing the stream can no longer be the same."""
        if strict and state["fingerprint"] != self.fingerprint():
            raise ValueError(
                "sampler state was saved for another data set, seed or batching config; "
                "it cannot continue this stream"
            )
        self.consumed = int(state["consumed"])
        self.cursors = {name: int(state["cursors"].get(name, 0)) for name in self.cursors}
        self._perms.clear()
