"""The on-disk preference set that DPO and KTO train on: its layout, its writer (published atomically) and its loader.

Layout of a folder (N samples, P pairs):
    latents.safetensors  x0 float32 [N, C, T, h, w] in the DiT's standardised latent space, y float32 [N, 1, L, D]
                         text features (zero beyond each prompt's tokens), mask int64 [N, L], fps float32 [N]:
                         a sample goes into the DiT exactly as a row of a training batch (`mugv.training.batches`)
    samples.jsonl        a row per index: index, prompt, seed (null: human), video, reward and components (null:
                         human), source (reward | human), model, release_sha, sampler ({steps, cfg}; null: human),
                         label_file (null: reward). `video` is relative to the folder (reward: videos/...) or,
                         for a human label, to its label file.
    pairs.jsonl          winner, loser (sample indices), margin (reward difference; null: human), prompt, source
    labels.jsonl         index, desirable (bool), source
    rejected.jsonl       file, row (line or item number), reason: every human-label row that was not imported
    summary.json         counts, and the reward mean and standard error of the samples, winners and losers
    videos/              the reward-labelled samples as mp4
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mugv import storage
from mugv.eval.stats import mean_and_se

LATENTS = "latents.safetensors"
SAMPLES = "samples.jsonl"
PAIRS = "pairs.jsonl"
LABELS = "labels.jsonl"
REJECTED = "rejected.jsonl"
SUMMARY = "summary.json"
VIDEOS = "videos"
TENSORS = ("x0", "y", "mask", "fps")
SOURCES = ("reward", "human")
STAGING = ".staging"  # the folder is written as .<name>.staging beside it, then renamed into place


class PreferenceSetError(ValueError):
    """A preference folder that is missing, incomplete or inconsistent; the message names the file and the problem."""


def finite_or_none(value: Any) -> Any:
    """A JSON-safe copy of a number, list or mapping: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


@dataclass
class PreferenceParts:
    """A preference set being collected: each sample's tensors and row; pairs, labels and rejected rows."""

    x0: list[torch.Tensor] = field(default_factory=list)  # [C, T, h, w] each
    y: list[torch.Tensor] = field(default_factory=list)  # [1, L, D] each
    mask: list[torch.Tensor] = field(default_factory=list)  # [L] each
    fps: list[float] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    pairs: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def add_sample(self, row: dict, x0: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, fps: float) -> int:
        """Append one sample (its row without `index`); return its index."""
        if self.x0 and (x0.shape != self.x0[0].shape or y.shape != self.y[0].shape):
            raise ValueError(f"a sample of latent {tuple(x0.shape)} and text {tuple(y.shape)} in a set of "
                             f"{tuple(self.x0[0].shape)} and {tuple(self.y[0].shape)}")
        index = len(self.samples)
        self.samples.append({"index": index, **row})
        self.x0.append(x0.detach().float().cpu())
        self.y.append(y.detach().float().cpu())
        self.mask.append(mask.detach().to(torch.int64).cpu())
        self.fps.append(float(fps))
        return index

    def extend(self, other: PreferenceParts) -> None:
        """Append another collection; its sample indices move past this one's."""
        offset = len(self.samples)
        for row, x0, y, mask, fps in zip(other.samples, other.x0, other.y, other.mask, other.fps):
            self.add_sample({k: v for k, v in row.items() if k != "index"}, x0, y, mask, fps)
        self.pairs += [{**p, "winner": p["winner"] + offset, "loser": p["loser"] + offset} for p in other.pairs]
        self.labels += [{**label, "index": label["index"] + offset} for label in other.labels]
        self.rejected += other.rejected

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stacked tensors of latents.safetensors (zero-size ones for an empty set)."""
        if not self.samples:
            return {"x0": torch.zeros(0), "y": torch.zeros(0), "mask": torch.zeros(0, dtype=torch.int64),
                    "fps": torch.zeros(0)}
        return {"x0": torch.stack(self.x0).contiguous(), "y": torch.stack(self.y).contiguous(),
                "mask": torch.stack(self.mask).contiguous(), "fps": torch.tensor(self.fps, dtype=torch.float32)}


def set_summary(parts: PreferenceParts) -> dict:
    """Counts and reward statistics of a collection (winners and losers: over the pairs that have rewards)."""
    rewards = {s["index"]: s["reward"] for s in parts.samples if s.get("reward") is not None}
    scored = [p for p in parts.pairs if p["winner"] in rewards and p["loser"] in rewards]

    def stats(values: list[float]) -> dict:
        mean, se = mean_and_se(values)
        return {"mean": mean, "se": se, "n": len(values)}

    return finite_or_none({
        "samples": len(parts.samples),
        "samples_by_source": dict(Counter(s["source"] for s in parts.samples)),
        "prompts": len({s["prompt"] for s in parts.samples}),
        "pairs": len(parts.pairs),
        "pairs_by_source": dict(Counter(p["source"] for p in parts.pairs)),
        "labels_desirable": sum(bool(label["desirable"]) for label in parts.labels),
        "labels_undesirable": sum(not label["desirable"] for label in parts.labels),
        "rejected": len(parts.rejected),
        "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in parts.rejected)),
        "reward": {"samples": stats(list(rewards.values())), "winners": stats([rewards[p["winner"]] for p in scored]),
                   "losers": stats([rewards[p["loser"]] for p in scored]),
                   "margin": stats([rewards[p["winner"]] - rewards[p["loser"]] for p in scored])},
    })


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(finite_or_none(row), allow_nan=False) + "\n" for row in rows))


def write_preference_set(folder: Path, parts: PreferenceParts) -> dict:
    """Write the latents and tables of `parts` into `folder` (its videos/ already there); return the summary."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(parts.tensors(), str(folder / LATENTS), metadata={"format": "pt"})
    for name, rows in ((SAMPLES, parts.samples), (PAIRS, parts.pairs), (LABELS, parts.labels),
                       (REJECTED, parts.rejected)):
        _write_jsonl(folder / name, rows)
    summary = set_summary(parts)
    (folder / SUMMARY).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """An empty folder beside `out` to write the set into; when the block succeeds it replaces `out` by a rename
    (a previous set removed), when the block fails it is removed and `out` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}{STAGING}")
    shutil.rmtree(staging, ignore_errors=True)  # the leftover of a killed run
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    storage.replace_durably(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def jsonl_rows(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, object) per non-blank line of a JSONL file; a line that is no JSON object gives its reason instead."""
    rows: list[tuple[int, dict | str]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((number, f"not valid JSON: {e.msg}"))
            continue
        rows.append((number, fields if isinstance(fields, dict) else "not valid JSON: not an object"))
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    """The objects of one of the set's own tables; PreferenceSetError at the first bad line."""
    rows = []
    for number, row in jsonl_rows(path):
        if isinstance(row, str):
            raise PreferenceSetError(f"{path}:{number}: {row}")
        rows.append(row)
    return rows


def _is_index(value: Any, n: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n


@dataclass
class PreferenceSet:
    """A preference folder, loaded and checked: `tensors` (x0, y, mask, fps), `pairs` int64 [P, 2] (winner,
    loser), `labels` [(index, desirable)], and the rows of every table."""

    folder: Path
    tensors: dict[str, torch.Tensor]
    samples: list[dict]
    pairs: torch.Tensor
    labels: list[tuple[int, bool]]
    pair_rows: list[dict]
    label_rows: list[dict]
    rejected: list[dict]
    summary: dict

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def fingerprint(self) -> str:
        """sha256 of the folder's files: the identity of this set (`mugv.tracking.folder_fingerprint`)."""
        from mugv.tracking import folder_fingerprint

        return folder_fingerprint(self.folder)

    @classmethod
    def load(cls, folder: str | Path) -> PreferenceSet:
        """Read and check a folder; PreferenceSetError naming the file for anything missing or inconsistent."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise PreferenceSetError(f"preference set {folder} does not exist (`mugv preference-data` writes one)")
        for name in (LATENTS, SAMPLES, PAIRS, LABELS, REJECTED, SUMMARY):
            if not (folder / name).is_file():
                raise PreferenceSetError(f"{folder} is not a complete preference set: it has no {name}")
        try:
            tensors = load_file(str(folder / LATENTS))
        except (SafetensorError, OSError) as e:
            raise PreferenceSetError(f"{folder / LATENTS} is not a readable safetensors file: {e}") from None
        missing = [k for k in TENSORS if k not in tensors]
        if missing:
            raise PreferenceSetError(f"{folder / LATENTS} has no {', '.join(missing)}")
        samples = _read_jsonl(folder / SAMPLES)
        n = len(samples)
        _check_tensors(folder / LATENTS, tensors, n)
        for i, row in enumerate(samples):
            if row.get("index") != i or row.get("source") not in SOURCES or not isinstance(row.get("prompt"), str):
                raise PreferenceSetError(f"{folder / SAMPLES}: row {i + 1} is not sample {i} with a prompt and a "
                                         f"source of {'|'.join(SOURCES)}: {row}")
        pair_rows = _read_jsonl(folder / PAIRS)
        for i, row in enumerate(pair_rows, 1):
            winner, loser = row.get("winner"), row.get("loser")
            if not (_is_index(winner, n) and _is_index(loser, n)) or winner == loser:
                raise PreferenceSetError(f"{folder / PAIRS}: row {i} pairs {winner!r} over {loser!r}, not two "
                                         f"different samples of 0..{n - 1}")
        label_rows = _read_jsonl(folder / LABELS)
        for i, row in enumerate(label_rows, 1):
            if not _is_index(row.get("index"), n) or not isinstance(row.get("desirable"), bool):
                raise PreferenceSetError(f"{folder / LABELS}: row {i} needs a sample index of 0..{n - 1} and a "
                                         f"boolean desirable, has {row}")
        pairs = torch.tensor([[r["winner"], r["loser"]] for r in pair_rows], dtype=torch.int64).reshape(-1, 2)
        return cls(folder=folder, tensors=tensors, samples=samples, pairs=pairs,
                   labels=[(r["index"], r["desirable"]) for r in label_rows], pair_rows=pair_rows,
                   label_rows=label_rows, rejected=_read_jsonl(folder / REJECTED),
                   summary=json.loads((folder / SUMMARY).read_text()))


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], n: int) -> None:
    """Shapes and dtypes of latents.safetensors against the N samples of samples.jsonl."""
    x0, y, mask, fps = (tensors[k] for k in TENSORS)
    if n == 0:
        if any(t.numel() for t in (x0, y, mask, fps)):
            raise PreferenceSetError(f"{path} holds tensors but {SAMPLES} has no sample")
        return
    problems = []
    if x0.ndim != 5 or x0.shape[0] != n or x0.dtype != torch.float32:
        problems.append(f"x0 {tuple(x0.shape)} {x0.dtype} (want float32 [{n}, C, T, h, w])")
    if y.ndim != 4 or y.shape[:2] != (n, 1) or y.dtype != torch.float32:
        problems.append(f"y {tuple(y.shape)} {y.dtype} (want float32 [{n}, 1, L, D])")
    if mask.ndim != 2 or mask.shape[0] != n or (y.ndim == 4 and mask.shape[1] != y.shape[2]) or mask.dtype != torch.int64:
        problems.append(f"mask {tuple(mask.shape)} {mask.dtype} (want int64 [{n}, L])")
    if fps.shape != (n,):
        problems.append(f"fps {tuple(fps.shape)} (want [{n}])")
    if problems:
        raise PreferenceSetError(f"{path} does not match the {n} samples of {SAMPLES}: {'; '.join(problems)}")
