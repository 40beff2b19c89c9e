"""MUGDiT checkpoint conversion: official MUG-V state dicts, mugv safetensors, Megatron torch_dist."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from safetensors.torch import load_file, save_file

from mugv.models.dit.model import MUGDiT, build_model, tensor_parallel_dims
from mugv.models.dit.config import DiTConfig
from mugv.integrity import verify_manifest, write_manifest

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMATS = ("official", "mugv", "megatron")

# Per-block renames official -> mugv. Fused projections are also re-ordered from the official
# [chunk, heads, head_dim] rows to heads-major [heads, chunk, head_dim], so TP splits whole heads.
_BLOCK_RENAMES = {
    "attn.qkv": "self_attention.linear_qkv",
    "attn.q_norm": "self_attention.q_layernorm",
    "attn.k_norm": "self_attention.k_layernorm",
    "attn.proj": "self_attention.linear_proj",
    "cross_attn.q_linear": "cross_attention.linear_q",
    "cross_attn.kv_linear": "cross_attention.linear_kv",
    "cross_attn.q_norm": "cross_attention.q_layernorm",
    "cross_attn.k_norm": "cross_attention.k_layernorm",
    "cross_attn.proj": "cross_attention.linear_proj",
    "mlp.fc1": "mlp.linear_fc1",
    "mlp.fc2": "mlp.linear_fc2",
}
_FUSED_CHUNKS = {"attn.qkv": 3, "cross_attn.kv_linear": 2}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


def _regroup_rows(tensor: torch.Tensor, outer: int, inner: int) -> torch.Tensor:
    """Rows laid out [outer, inner, head_dim] -> [inner, outer, head_dim]."""
    return tensor.unflatten(0, (outer, inner, -1)).transpose(0, 1).flatten(0, 2).contiguous()


# --------------------------------------------------------------------------- official <-> mugv layout


def infer_config(state_dict: dict[str, torch.Tensor], **overrides: object) -> DiTConfig:
    """DiTConfig of an official state dict, from its tensor shapes (heads from the Q-norm width)."""
    patch_weight = state_dict["x_embedder.proj.weight"]
    hidden, in_channels, *patch = patch_weight.shape
    depth = 1 + max(int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key)))
    fields: dict[str, object] = {
        "depth": depth,
        "hidden_size": hidden,
        "in_channels": in_channels,
        "patch_size": tuple(patch),
        "out_channels": state_dict["final_layer.linear.weight"].shape[0] // math.prod(patch),
        "caption_channels": state_dict["y_embedder.y_proj.fc1.weight"].shape[1],
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state_dict,
        "use_start_end_tokens": "start_token" in state_dict,
        "timestep_frequency_dim": state_dict["t_embedder.mlp.0.weight"].shape[1],
    }
    if fields["qk_norm"]:
        fields["num_heads"] = hidden // state_dict["blocks.0.attn.q_norm.weight"].shape[0]
    fields.update(overrides)
    if "num_heads" not in fields:
        raise ValueError("no Q-norm weights to infer heads from: pass num_heads=")
    return DiTConfig.model_validate(fields)


def official_to_mugv(state_dict: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """Official key names/layout -> full (unsharded) mugv state dict."""
    converted = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match and match.group(2) in _BLOCK_RENAMES:
            index, name, kind = match.groups()
            if name in _FUSED_CHUNKS:
                tensor = _regroup_rows(tensor, _FUSED_CHUNKS[name], config.num_heads)
            key = f"blocks.{index}.{_BLOCK_RENAMES[name]}.{kind}"
        converted[key] = tensor.contiguous()
    return converted


def mugv_to_official(state_dict: dict[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """Full mugv state dict -> official key names/layout."""
    back = {ours: theirs for theirs, ours in _BLOCK_RENAMES.items()}
    converted = {}
    for key, tensor in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match and match.group(2) in back:
            index, name, kind = match.groups()
            official_name = back[name]
            if official_name in _FUSED_CHUNKS:
                tensor = _regroup_rows(tensor, config.num_heads, _FUSED_CHUNKS[official_name])
            key = f"blocks.{index}.{official_name}.{kind}"
        converted[key] = tensor.contiguous()
    return converted


# --------------------------------------------------------------------------- full <-> TP-sharded model


def _tensors(state_dict: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.endswith("_extra_state")}


def load_full_state_dict(model: MUGDiT, state_dict: dict[str, torch.Tensor]) -> None:
    """Load an unsharded mugv state dict into a (possibly TP-sharded) model: each rank takes its slice."""
    tp = model.parallel.tp
    rank = parallel_state.get_tensor_model_parallel_rank() if tp > 1 else 0
    dims = tensor_parallel_dims(model)
    expected = _tensors(model.state_dict())
    if missing := set(expected) - set(state_dict):
        raise KeyError(f"missing from checkpoint: {sorted(missing)[:5]}")
    if unexpected := set(state_dict) - set(expected):
        raise KeyError(f"not in the model: {sorted(unexpected)[:5]}")
    local = {}
    for key, tensor in state_dict.items():
        if key in dims:
            tensor = tensor.chunk(tp, dim=dims[key])[rank]
        if tensor.shape != expected[key].shape:
            raise ValueError(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}")
        local[key] = tensor
    model.load_state_dict(local, strict=True)


def full_state_dict(model: MUGDiT) -> dict[str, torch.Tensor]:
    """The unsharded mugv state dict of a model (all-gathers TP shards; every rank gets it all)."""
    tp = model.parallel.tp
    dims = tensor_parallel_dims(model)
    full = {}
    for key, tensor in _tensors(model.state_dict()).items():
        tensor = tensor.detach()
        if key in dims and tp > 1:
            shards = [torch.empty_like(tensor) for _ in range(tp)]
            dist.all_gather(shards, tensor.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
            tensor = torch.cat(shards, dim=dims[key])
        full[key] = tensor.cpu().clone()
    return full


# --------------------------------------------------------------------------- public API


def from_official(state_dict: dict[str, torch.Tensor], **overrides: object) -> MUGDiT:
    """A MUGDiT (CPU, eval, current TP) holding official weights; config inferred from shapes."""
    config = infer_config(state_dict, **overrides)
    model = build_model(config, perform_initialization=False)
    load_full_state_dict(model, official_to_mugv(state_dict, config))
    return model.eval()


def to_official(model: MUGDiT) -> dict[str, torch.Tensor]:
    """Official key names and shapes, loadable by the official MUGDiT with strict=True."""
    return mugv_to_official(full_state_dict(model), model.dit_config)


def save_megatron(model: MUGDiT, directory: str | Path) -> None:
    """Megatron `torch_dist` checkpoint (reshardable to any TP) plus config.json."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), str(directory))
    if not dist.is_initialized() or dist.get_rank() == 0:
        (directory / CONFIG_FILE).write_text(model.dit_config.model_dump_json(indent=2))
        write_manifest(directory)  # last: load_megatron verifies it before unpickling `.metadata`
    if dist.is_initialized():
        dist.barrier()


def load_megatron(directory: str | Path, **model_kwargs: object) -> MUGDiT:
    """Build a MUGDiT at the current TP size from a `torch_dist` checkpoint (resharding as needed)."""
    directory = Path(directory)
    verify_manifest(directory)
    config = DiTConfig.model_validate_json((directory / CONFIG_FILE).read_text())
    model = build_model(config, perform_initialization=False, **model_kwargs)
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(directory)))
    return model.eval()


def save_mugv(model: MUGDiT, directory: str | Path) -> None:
    """mugv format: DIR/model.safetensors (full state dict) + DIR/config.json."""
    directory = Path(directory)
    state = full_state_dict(model)
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(model.dit_config.model_dump_json(indent=2))


def load_mugv(directory: str | Path, **model_kwargs: object) -> MUGDiT:
    directory = Path(directory)
    config = DiTConfig.model_validate_json((directory / CONFIG_FILE).read_text())
    model = build_model(config, perform_initialization=False, **model_kwargs)
    load_full_state_dict(model, load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


MEGATRON_MARKER = "metadata.json"  # written by dist_checkpointing.save
TRAINING_ONLY_FIELDS = ("class_dropout_prob", "init_std")  # DiTConfig fields that shape no weight and no forward pass


def converted_format(path: str | Path) -> str | None:
    """'mugv' or 'megatron' for a folder `mugv convert` wrote (config.json beside model.safetensors, or beside
    a torch_dist checkpoint), else None (a training checkpoint has no config.json)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        return None
    if (path / WEIGHTS_FILE).is_file():
        return "mugv"
    if (path / MEGATRON_MARKER).is_file():
        return "megatron"
    return None


def load_converted(path: str | Path, **model_kwargs: object) -> MUGDiT:
    """The MUGDiT of a folder `mugv convert --to mugv` or `--to megatron` wrote, in eval mode."""
    loaders = {"mugv": load_mugv, "megatron": load_megatron}
    fmt = converted_format(path)
    if fmt is None:
        raise FileNotFoundError(f"{path} is not a converted DiT folder (config.json with model.safetensors or torch_dist)")
    return loaders[fmt](path, **model_kwargs)


def load_converted_into(model: MUGDiT, path: str | Path) -> None:
    """Load the weights of a converted folder into `model`, which must have the same DiTConfig (any TP size)."""
    path = Path(path)
    fmt = converted_format(path)
    if fmt is None:
        raise FileNotFoundError(f"{path} is not a converted DiT folder (config.json with model.safetensors or torch_dist)")
    saved = DiTConfig.model_validate_json((path / CONFIG_FILE).read_text())
    ours, theirs = model.dit_config.model_dump(), saved.model_dump()
    differ = ", ".join(f"{k}: {theirs[k]} there, {ours[k]} here" for k in ours
                       if ours[k] != theirs[k] and k not in TRAINING_ONLY_FIELDS)
    if differ:
        raise ValueError(f"{path} holds a DiT of other sizes than this run's model ({differ}); "
                         "set pretrain.model / pretrain.model_overrides to match it")
    if fmt == "mugv":
        load_full_state_dict(model, load_file(str(path / WEIGHTS_FILE)))
    else:
        verify_manifest(path)
        model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(path)))


def load_official_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Official weights: `.safetensors`, else a torch state dict loaded with weights_only=True."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def save_official_file(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)


def needs_process_group(src_format: str, dst_format: str, tp: int = 1) -> bool:
    """Megatron `torch_dist` checkpoints and TP > 1 need a process group; official <-> mugv at TP 1 does not."""
    return tp > 1 or "megatron" in (src_format, dst_format)


def convert_checkpoint(src: str | Path, dst: str | Path, src_format: str, dst_format: str, tp: int = 1) -> None:
    """Convert a DiT checkpoint between 'official' (.pt/.safetensors file), 'mugv' and 'megatron' (dirs).

    When `needs_process_group`, the caller starts the Megatron parallel state at this `tp` first
    (`mugv.training.distributed.init_parallel`); `tp` > 1 needs as many processes (torchrun);
    torch_dist checkpoints reshard on load anyway.
    """
    if src_format not in FORMATS or dst_format not in FORMATS:
        raise ValueError(f"formats must be among {FORMATS}, got {src_format!r} -> {dst_format!r}")
    if needs_process_group(src_format, dst_format, tp) and not parallel_state.model_parallel_is_initialized():
        raise RuntimeError(f"{src_format} -> {dst_format} at tp={tp} needs a process group: call init_parallel(tp={tp})")
    loaders: dict[str, Callable[[], MUGDiT]] = {
        "official": lambda: from_official(load_official_file(src)),
        "mugv": lambda: load_mugv(src),
        "megatron": lambda: load_megatron(src),
    }
    model = loaders[src_format]()
    if dst_format == "official":
        state = to_official(model)
        if not dist.is_initialized() or dist.get_rank() == 0:
            save_official_file(state, dst)
    elif dst_format == "mugv":
        save_mugv(model, dst)
    else:
        save_megatron(model, dst)
