"""Training checkpoints in Megatron torch_dist: atomic, rotated, reshardable, tied to the data set they were trained on."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch import nn

from mugv import storage
from mugv.latents.shards import INDEX
from mugv.training.checkpoint_dir import (
    LATEST,
    CheckpointDir,
    CheckpointIntegrityError,
    step_name,
    verify_manifest,
    write_manifest,
)
from mugv.training.config import CheckpointConfig

META = "meta.json"
CHECKPOINTS = "checkpoints"

log = logging.getLogger(__name__)


def dataset_fingerprint(latents_dir: str | os.PathLike) -> str:
    """sha256 over the index file's bytes and every shard checksum it records."""
    index_path = Path(latents_dir) / INDEX
    digest = hashlib.sha256()
    with open(index_path, "rb") as f:
        digest.update(hashlib.sha256(f.read()).digest())
    shards = pd.read_parquet(index_path, columns=["shard", "shard_sha256"]).drop_duplicates()
    for shard, sha in sorted(shards.itertuples(index=False)):
        digest.update(f"{shard}:{sha}\n".encode())
    return digest.hexdigest()


def _topology() -> dict:
    return {
        "world_size": dist.get_world_size(),
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _strip(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items()}


_verified: dict[str, tuple] = {}  # folder -> (name, size, mtime) of its files when its manifest last checked out


def _signature(folder: Path) -> tuple:
    return tuple(sorted((p.relative_to(folder).as_posix(), p.lstat().st_size, p.lstat().st_mtime_ns)
                        for p in folder.rglob("*")))


def _integrity_problem(path: Path) -> str | None:
    """Why `path` may not be loaded (its manifest does not vouch for its files), or None; rank 0 checks, all ranks learn."""
    problem = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        key = str(path.resolve())
        signature = _signature(path) if path.is_dir() else None
        if signature is None or _verified.get(key) != signature:
            try:
                verify_manifest(path)
                _verified[key] = signature
            except CheckpointIntegrityError as e:
                problem = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        problem = shared[0]
    return problem


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """Collective: `path` when its sha256 manifest vouches for every file; else CheckpointIntegrityError (one line,
    naming the file). Call it before anything of a checkpoint is unpickled (torch_dist's `.metadata`, `common.pt`)."""
    path = Path(path)
    problem = _integrity_problem(path)
    if problem is not None:
        raise CheckpointIntegrityError(problem)
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory from itself, a checkpoints root with a `latest` pointer, or a stage out dir."""
    path = Path(path)
    for root in (path / CHECKPOINTS, path):
        pointer = root / LATEST
        if pointer.exists():
            return root / pointer.read_text().strip()
    if (path / META).exists():
        return path
    raise FileNotFoundError(f"no checkpoint at {path} (neither a checkpoint nor a `{LATEST}` pointer)")


class Checkpointer:
    """Saves and loads the whole training state under `root`.

    Layout (a `CheckpointDir`): `root/step_XXXXXXX/` (a torch_dist checkpoint plus `meta.json`)
    and `root/latest` naming the newest complete one. A save writes into `step_XXXXXXX.tmp/`,
    writes `meta.json`, then `manifest.sha256.json` (the sha256 of every file), renames the folder and only
    then rewrites `latest`: nothing is loaded before its manifest checks out, since torch_dist's `.metadata`
    is a pickle. A damaged latest checkpoint is passed over for the previous kept one. A save killed at
    any point leaves the previous checkpoint as latest, and `*.tmp` folders are never loaded (they
    are removed by the next save). Model, EMA and optimizer are sharded tensors, so a checkpoint loads
    into any TP size; RNG states are per rank and restored only on the same layout.

    With a `mirror` (an s3:// prefix or a folder), each complete checkpoint is then copied there
    in the same layout, `meta.json` last and the mirror's `latest` after it, and rotated like the
    local ones; `pull_mirror` brings the mirror's latest back when the local root has none. The
    local root must be visible to every rank (Megatron's torch_dist writes one file per rank).
    """

    def __init__(self, root: str | os.PathLike, cfg: CheckpointConfig, dataset_hash: str,
                 mirror: str | None = None, run_id: str = "") -> None:
        self.root = Path(root)
        self.folders = CheckpointDir(self.root, cfg.keep, META)
        self.cfg = cfg
        self.dataset_hash = dataset_hash
        self.run_id = run_id  # what the run was started with (run_identity); a checkpoint of another run is not resumed
        self.mirror = (mirror.rstrip("/") if storage.is_s3(mirror) else str(Path(mirror))) if mirror else None

    @staticmethod
    def _is_writer() -> bool:
        return dist.get_rank() == 0

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        return self.folders.latest()

    # ------------------------------------------------------------------ state dicts

    @staticmethod
    def _sharded(model: nn.Module, optimizer, ema, with_rng: bool, is_loading: bool = False) -> dict:
        model_sd = model.sharded_state_dict(prefix="model.")
        state = {"model": model_sd}
        if optimizer is not None:
            state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading)
        if ema is not None:
            state["ema"] = ema.model.sharded_state_dict(prefix="ema.")
        if with_rng:
            state["rng"] = ShardedObject(
                "rng_state", _rng_state(), (dist.get_world_size(),), (dist.get_rank(),), replica_id=0
            )
        return state

    # ------------------------------------------------------------------ save

    def save(self, step: int, model: nn.Module, optimizer, ema, common: dict) -> Path:
        """Write a checkpoint of `step` (collective: every rank calls it); return its folder."""
        name = step_name(step)
        final, tmp = self.root / name, self.folders.staging_path(name)
        if self._is_writer():
            self.folders.staging(step)
        dist.barrier()
        state = self._sharded(model, optimizer, ema, with_rng=True)
        state["common"] = {**common, "step": step}
        previous = self.root / LATEST
        previous = previous.read_text().strip() if previous.exists() else None
        try:
            with deterministic_save(f"{self.run_id}/{name}"):
                dist_checkpointing.save(state, str(tmp))
            dist.barrier()
            if self._is_writer():
                # no wall-clock time: the checkpoints are a DVC output, hashed in dvc.lock
                meta = {"step": step, "dataset_hash": self.dataset_hash, "run": self.run_id, "topology": _topology()}
                storage.write_text(tmp / META, json.dumps(meta, indent=1), durable=True)
                write_manifest(tmp)  # last: it vouches for every file above
                self.folders.publish(tmp, name)
        except Exception as e:
            full = disk_full(e)
            if full is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # the partial save, so that the space is free again
            raise CheckpointSaveError(f"checkpoint {name} not saved: no space left on device ({full}); "
                                      f"{previous or 'no checkpoint'} stays the latest") from None
        if self._is_writer():
            self.folders.rotate(keep_name=name)
            if self.mirror:
                self._push_mirror(final)
        dist.barrier()
        return final

    # ------------------------------------------------------------------ mirror

    def _push_mirror(self, path: Path) -> None:
        """Copy a complete checkpoint to the mirror (meta.json last, then `latest`); rotate the mirror."""
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.name == META)
        for file in files:
            storage.copy_file(file, f"{self.mirror}/{path.name}/{file.relative_to(path).as_posix()}")
        storage.write_text(f"{self.mirror}/{LATEST}", path.name)
        names = {Path(e.uri[len(self.mirror) + 1 :]).parts[0] for e in storage.list_files(self.mirror)}
        for old in self.folders.beyond_keep(names, path.name):
            storage.remove_tree(f"{self.mirror}/{old}")

    def pull_mirror(self) -> Path | None:
        """Collective: with no local checkpoint, download the mirror's latest (rank 0); return it or None."""
        if not self.mirror:
            return self.latest()
        if self._is_writer() and not (self.root / LATEST).exists():
            pointer = f"{self.mirror}/{LATEST}"
            if storage.exists(pointer):
                name = storage.read_text(pointer).strip()
                prefix = f"{self.mirror}/{name}"
                tmp = self.folders.staging_path(name)
                shutil.rmtree(tmp, ignore_errors=True)
                for entry in storage.list_files(prefix):
                    storage.copy_file(entry.uri, tmp / entry.uri[len(prefix) + 1 :])
                if not (tmp / META).exists():
                    raise FileNotFoundError(f"{pointer} names {name}, which has no {META} on the mirror")
                try:
                    verify_manifest(tmp)
                except CheckpointIntegrityError as e:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise CheckpointIntegrityError(f"mirror {prefix}: {e}") from None
                self.folders.publish(tmp, name)
        dist.barrier()
        return self.latest()

    # ------------------------------------------------------------------ load

    def resumable(self) -> Path | None:
        """Collective: the latest checkpoint of this run (local, else from the mirror), or None.

        A checkpoint written by another run (other params, another starting checkpoint, or another
        latent data set unless `allow_data_change`) is not resumed: its folder is cleared and
        training starts afresh. That is what a rerun after a change means under `dvc repro`, which
        keeps (persists) the checkpoints so that a killed run resumes.
        """
        latest = self.intact(self.pull_mirror())
        if latest is None:
            return None
        meta = json.loads((latest / META).read_text())
        changed = [what for what, same in (
            ("the run's params or starting checkpoint", meta.get("run") == self.run_id),
            ("the latent data set", meta["dataset_hash"] == self.dataset_hash or self.cfg.allow_data_change),
        ) if not same]
        if not changed:
            return latest
        if self._is_writer():
            log.warning("%s was written with other %s: starting a new run and replacing %s",
                        latest, " and ".join(changed), self.root)
            self.folders.clear()
        dist.barrier()
        return None

    def intact(self, latest: Path | None) -> Path | None:
        """Collective: `latest` when its manifest checks out, else the newest older kept checkpoint that does
        (with a warning); CheckpointIntegrityError when none does."""
        if latest is None:
            return None
        older = [p for p in self.folders.complete() if p.name < latest.name]
        problems = []
        for candidate in [latest, *older]:
            problem = _integrity_problem(candidate)
            if problem is None:
                if problems and self._is_writer():
                    log.warning("latest checkpoint is damaged (%s): resuming from %s", problems[0], candidate.name)
                return candidate
            problems.append(problem)
        raise CheckpointIntegrityError(f"no intact checkpoint under {self.root} to resume: {problems[0]}"
                                       + (f" (and {len(older)} older ones fail too)" if older else ""))


def _write_result_key(result) -> tuple:
    """A total order of torch DCP WriteResults: by the MetadataIndex of the item written (fqn, offset, index)."""
    index = result.index
    return (index.fqn, tuple(index.offset) if index.offset is not None else (), -1 if index.index is None else index.index)


@contextlib.contextmanager
def deterministic_save(name: str) -> Iterator[None]:
    """During a save, make torch DCP's `.metadata` the same bytes for the same training state: the checkpoints are
    hashed in dvc.lock. Two workarounds, both undone on exit, neither read by a load:

    - torch.distributed.checkpoint.filesystem (torch 2.x) draws the save id it writes into `.metadata` from its
      module-level `_generate_uuid`; it becomes a uuid5 of `name`. On a torch without that function the id stays random.
    - megatron-core's FileSystemWriterAsync (0.16) collects its writer processes' results in the order they finish,
      and torch writes them into `.metadata` in that order (`storage_data`), so two saves of the same state differed
      whenever its two writers finished the other way round. `retrieve_write_results` is made to return them sorted
      by the item they wrote. On a megatron-core without that method nothing is changed.
    """
    from torch.distributed.checkpoint import filesystem

    original_uuid = getattr(filesystem, "_generate_uuid", None)
    fixed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mugv-checkpoint:{name}"))
    if original_uuid is not None:
        filesystem._generate_uuid = lambda: fixed
    writer = _megatron_async_writer()
    original_retrieve = getattr(writer, "retrieve_write_results", None)
    if original_retrieve is not None:
        def retrieve_sorted(self):
            results = original_retrieve(self)
            return sorted(results, key=_write_result_key) if isinstance(results, list) else results  # else an error

        writer.retrieve_write_results = retrieve_sorted
    try:
        yield
    finally:
        if original_uuid is not None:
            filesystem._generate_uuid = original_uuid
        if original_retrieve is not None:
            writer.retrieve_write_results = original_retrieve


def _megatron_async_writer():
    try:
        from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
    except ImportError:
        return None
    return FileSystemWriterAsync


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (the disk is full); the previous one stays the latest. One line."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def disk_full(error: BaseException) -> str | None:
    """What ran out of space when `error` (or an error it wraps, torch DCP's per-rank failures included)
    is ENOSPC/EDQUOT: the file or the message; None when it is another error."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e.filename or e.strerror or str(e)
        todo += [e.__cause__, e.__context__, *(getattr(e, "failures", None) or {}).values()]
    return None


def run_identity(**parts) -> str:
    """A digest of what a run is started with (JSON-able parts): equal digests, same run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load_checkpoint(path: Path, model: nn.Module, optimizer=None, ema=None, weights_only: bool = False) -> dict:
    """Load a checkpoint into `model` (and `optimizer`, `ema` when given); return its common state.

    `weights_only` loads model, EMA and optimizer but neither RNG states nor common state (a new
    curriculum stage starting from the previous one's checkpoint). RNG states are restored only
    when the checkpoint was written with the same parallel layout. The folder's manifest is checked first.
    """
    verify_checkpoint(path)
    meta = json.loads((path / META).read_text())
    same_layout = meta["topology"] == _topology()
    state = Checkpointer._sharded(model, optimizer, ema, with_rng=same_layout and not weights_only, is_loading=True)
    loaded = dist_checkpointing.load(state, str(path))
    model.load_state_dict(_strip(loaded["model"], "model."))
    if ema is not None:
        ema.model.load_state_dict(_strip(loaded["ema"], "ema."))
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if weights_only:
        return {"step": meta["step"]}
    if "rng" in loaded:
        torch.set_rng_state(loaded["rng"]["torch"])
        if "cuda" in loaded["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(loaded["rng"]["cuda"])
    return loaded["common"]
