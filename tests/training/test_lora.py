"""LoRA on MUGDiT: identity at init, frozen base, merge, disable, adapter files, EMA, dist checkpoints, TP=2 = TP=1."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from mugv.models.dit.config import get_preset
from mugv.models.dit.model import build_model
from mugv.models.dit.spec import local_block_spec
from mugv.training.config import LoRAConfig, OptimizerConfig
from mugv.training.lora import (
    LoRALinear,
    apply_lora,
    full_lora_state_dict,
    load_lora_state_dict,
    lora_disabled,
    lora_modules,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)

CFG = LoRAConfig(enabled=True, rank=4, alpha=8.0)
TP = 2


def _tiny(seed: int = 0, **model_kwargs):
    torch.manual_seed(seed)
    return build_model(get_preset("tiny"), local_block_spec(), **model_kwargs)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(2, 24, 2, 4, 6, generator=g),  # 2 * 2 * 3 + 2 = 14 tokens: splits over 2 ranks
        "timestep": torch.tensor([100.0, 700.0]),
        "y": torch.randn(2, 1, 6, 384, generator=g),
        "mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]),
        "x_mask": torch.tensor([[False, True], [True, True]]),
        "weights": torch.randn(2, 48, 2, 4, 6, generator=g),
    }


def _forward(model, inputs) -> torch.Tensor:
    return model(inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"], x_mask=inputs["x_mask"])


def _random_b(model, seed: int = 2, std: float = 0.05) -> None:
    """Non-zero B factors, drawn whole (as at TP=1) so every layout can take its shard of the same values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B.normal_(0.0, std, generator=g)


@pytest.fixture(scope="module", autouse=True)
def _group(process_group):
    return process_group


def test_wrapped_model_at_init_equals_its_base_and_trains_only_the_adapters():
    model = _tiny()
    inputs = _inputs()
    model.requires_grad_(False)  # a frozen linear takes Megatron's frozen-weight path: compare like with like
    with torch.no_grad():
        base = _forward(model, inputs)
    names = apply_lora(model, CFG)
    with torch.no_grad():
        wrapped = _forward(model, inputs)
    assert torch.equal(wrapped, base)
    assert len(names) == 4 * 7  # qkv, proj, q, kv, proj, fc1, fc2 in each of the tiny preset's 4 blocks
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    module = lora_modules(model)["blocks.0.mlp.linear_fc1"]
    assert module.lora_A.shape == (4, 96) and module.lora_B.shape == (384, 4) and not module.lora_B.any()
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, CFG)


def test_targets_choose_the_wrapped_linears():
    model = _tiny()
    names = apply_lora(model, CFG.model_copy(update={"targets": ["linear_fc2", "linear_kv"]}))
    assert names == [f"blocks.{i}.{n}" for i in range(4) for n in ("cross_attention.linear_kv", "mlp.linear_fc2")]
    assert not isinstance(model.blocks[0].self_attention.linear_proj, LoRALinear)


def test_merge_equals_the_unmerged_forward_and_restores_the_plain_keys():
    model = _tiny()
    inputs = _inputs()
    plain_keys = list(model.state_dict())
    apply_lora(model, CFG)
    _random_b(model)
    with torch.no_grad():
        unmerged = _forward(model, inputs)
        with lora_disabled(model):
            base = _forward(model, inputs)
    merged_names = merge_lora(model)
    with torch.no_grad():
        merged = _forward(model, inputs)
    assert len(merged_names) == 28 and not lora_modules(model)
    assert (unmerged - base).abs().max() > 1e-3  # the adapter does change the output
    assert (merged - unmerged).abs().max() < 1e-5
    assert list(model.state_dict()) == plain_keys


def test_lora_disabled_is_the_frozen_base_and_switches_back():
    base_model = _tiny().requires_grad_(False)
    model = _tiny()
    inputs = _inputs()
    apply_lora(model, CFG)
    _random_b(model)
    with torch.no_grad():
        base = _forward(base_model, inputs)
        adapted = _forward(model, inputs)
        with lora_disabled(model):
            disabled = _forward(model, inputs)
        again = _forward(model, inputs)
    assert torch.equal(disabled, base)
    assert torch.equal(again, adapted) and not torch.equal(adapted, base)


def test_optimizer_steps_change_the_adapters_and_leave_the_base_bit_identical():
    from mugv.training.optimizer import AdamWOptimizer

    model = _tiny()
    inputs = _inputs()
    apply_lora(model, CFG)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k and isinstance(v, torch.Tensor)}
    optimizer = AdamWOptimizer(model, OptimizerConfig())
    for group in optimizer.param_groups:
        group["lr"] = 1e-2
    for _ in range(3):
        optimizer.zero_grad()
        (_forward(model, inputs) * inputs["weights"]).mean().backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert all(module.lora_B.abs().sum() > 0 for module in lora_modules(model).values())


def test_adapter_round_trips_through_safetensors(tmp_path):
    model = _tiny()
    inputs = _inputs()
    apply_lora(model, CFG)
    _random_b(model)
    adapter = lora_state_dict(model)
    assert set(adapter) == {f"{n}.{f}" for n in lora_modules(model) for f in ("lora_A", "lora_B")}
    save_file(adapter, str(tmp_path / "adapter.safetensors"))

    other = _tiny()
    apply_lora(other, CFG, seed=7)  # different A: everything must come from the file
    load_lora_state_dict(other, load_file(str(tmp_path / "adapter.safetensors")))
    with torch.no_grad():
        assert torch.equal(_forward(other, inputs), _forward(model, inputs))
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(other, {k: v for k, v in adapter.items() if "blocks.0." not in k})
    with pytest.raises(ValueError, match="fits neither"):
        load_lora_state_dict(other, {**adapter, "blocks.0.mlp.linear_fc1.lora_A": torch.zeros(2, 96)})


def test_ema_of_a_lora_model_follows_the_adapters_and_merges_to_a_plain_model():
    from mugv.training.ema import EMA

    def build():
        fresh = _tiny(seed=3)
        apply_lora(fresh, CFG)
        return fresh

    model = build()
    ema = EMA(model, build, decay=0.5)
    _random_b(model)
    ema.update(model)
    for name, module in lora_modules(ema.model).items():
        assert torch.allclose(module.lora_B, 0.5 * lora_modules(model)[name].lora_B)
    merge_lora(ema.model)
    assert not any("lora_" in k or ".base." in k for k in ema.model.state_dict())


def test_dist_checkpoint_of_model_and_optimizer_round_trips(tmp_path):
    from megatron.core import dist_checkpointing

    from mugv.training.optimizer import AdamWOptimizer

    def build_with_optimizer(seed):
        model = _tiny(seed)
        apply_lora(model, CFG, seed=seed)
        optimizer = AdamWOptimizer(model, OptimizerConfig())
        return model, optimizer

    model, optimizer = build_with_optimizer(0)
    for group in optimizer.param_groups:
        group["lr"] = 1e-2
    _random_b(model)
    (_forward(model, _inputs()) * _inputs()["weights"]).mean().backward()
    optimizer.step()
    sharded = model.sharded_state_dict(prefix="model.")
    assert "model.blocks.0.mlp.linear_fc1.lora_B" in sharded and "model.blocks.0.mlp.linear_fc1.base.weight" in sharded
    dist_checkpointing.save({"model": sharded, "optimizer": optimizer.sharded_state_dict(sharded)}, str(tmp_path))

    restored, restored_optimizer = build_with_optimizer(5)
    target = restored.sharded_state_dict(prefix="model.")
    loaded = dist_checkpointing.load(
        {"model": target, "optimizer": restored_optimizer.sharded_state_dict(target, is_loading=True)}, str(tmp_path)
    )
    restored.load_state_dict({k[len("model."):]: v for k, v in loaded["model"].items()})
    restored_optimizer.load_state_dict(loaded["optimizer"])
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in model.state_dict().items() if torch.is_tensor(v))
    moments = [s["exp_avg"] for s in optimizer.optimizer.state.values()]
    restored_moments = [s["exp_avg"] for s in restored_optimizer.optimizer.state.values()]
    assert len(moments) == len(lora_parameters(model)) and all(map(torch.equal, moments, restored_moments))


# --------------------------------------------------------------------------- TP=2 over gloo == one process


def _gathered_grads(model, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-rank LoRA grads (keyed like lora_state_dict) -> whole tensors, the split ones gathered over TP."""
    out = {}
    for name, module in lora_modules(model).items():
        for factor in ("lora_A", "lora_B"):
            grad, param = grads[f"{name}.{factor}"].contiguous(), getattr(module, factor)
            if getattr(param, "tensor_model_parallel", False):
                parts = [torch.empty_like(grad) for _ in range(TP)]
                dist.all_gather(parts, grad)
                grad = torch.cat(parts, dim=param.partition_dim)
            out[f"{name}.{factor}"] = grad
    return out


def _lora_grads(model) -> dict[str, torch.Tensor]:
    """LoRA grads keyed like lora_state_dict; those marked sequence_parallel summed over TP (as Megatron's
    finalize_model_grads does)."""
    grads = {}
    for name, module in lora_modules(model).items():
        for factor in ("lora_A", "lora_B"):
            param = getattr(module, factor)
            grad = param.grad.clone()
            if getattr(param, "sequence_parallel", False):
                dist.all_reduce(grad)
            grads[f"{name}.{factor}"] = grad
    return grads


def _tp_worker(rank: int, workdir: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(TP), LOCAL_RANK=str(rank)
    )
    from mugv.models.dit.convert import full_state_dict, load_mugv
    from mugv.training.distributed import destroy_parallel, init_parallel

    init_parallel(tp=TP)
    work = Path(workdir)
    inputs = load_file(str(work / "inputs.safetensors"))
    full = load_file(str(work / "adapter.safetensors"))
    results = {}
    for label, sequence_parallel in (("tp", False), ("sp", True)):
        model = load_mugv(work / "mugv", sequence_parallel=sequence_parallel)
        apply_lora(model, CFG)
        for key, value in full_lora_state_dict(model).items():
            if key.endswith("lora_A"):  # A drawn whole then sliced: the same adapter as at TP=1
                results[f"{label}_init.{key}"] = value
        load_lora_state_dict(model, full)  # whole factors: each rank takes its shard
        for key, value in full_lora_state_dict(model).items():
            results[f"{label}_adapter.{key}"] = value
        out = _forward(model, inputs)
        (out * inputs["weights"]).sum().backward()
        results[f"{label}_out"] = out.detach()
        for key, grad in _gathered_grads(model, _lora_grads(model)).items():
            results[f"{label}_grad.{key}"] = grad
        if not sequence_parallel:
            merge_lora(model)
            with torch.no_grad():
                results["tp_merged_out"] = _forward(model, inputs)
            for key, value in full_state_dict(model).items():
                results[f"tp_merged.{key}"] = value
    if rank == 0:
        save_file({k: v.contiguous() for k, v in results.items()}, str(work / "results.safetensors"))
    destroy_parallel()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tp2_and_sequence_parallel_match_one_process(tmp_path):
    from mugv.models.dit.convert import full_state_dict, save_mugv

    model = _tiny()
    inputs = _inputs()
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    save_mugv(model, tmp_path / "mugv")
    apply_lora(model, CFG)
    initial_a = {k: v.clone() for k, v in lora_state_dict(model).items() if k.endswith("lora_A")}
    _random_b(model)
    adapter = full_lora_state_dict(model)
    assert all(torch.equal(v, lora_state_dict(model)[k]) for k, v in adapter.items())
    save_file(adapter, str(tmp_path / "adapter.safetensors"))
    out = _forward(model, inputs)
    (out * inputs["weights"]).sum().backward()
    grads = {f"{n}.{f}": getattr(m, f).grad for n, m in lora_modules(model).items() for f in ("lora_A", "lora_B")}
    merge_lora(model)
    merged = full_state_dict(model)

    mp.spawn(_tp_worker, args=(str(tmp_path), _free_port()), nprocs=TP, join=True)

    results = load_file(str(tmp_path / "results.safetensors"))
    for label in ("tp", "sp"):
        assert all(torch.equal(results[f"{label}_init.{k}"], v) for k, v in initial_a.items()), label
        assert all(torch.equal(results[f"{label}_adapter.{k}"], v) for k, v in adapter.items()), label
        assert (results[f"{label}_out"] - out.detach()).abs().max() < 1e-5, label
        for key, grad in grads.items():
            assert (results[f"{label}_grad.{key}"] - grad).abs().max() <= 1e-5 * grad.abs().max(), (label, key)
    assert (results["tp_merged_out"] - out.detach()).abs().max() < 1e-5
    for key, value in merged.items():  # each rank folded its own shard of B A into its shard of W
        assert (results[f"tp_merged.{key}"] - value).abs().max() < 1e-6, key
