"""MUGDiT tensor, sequence and context parallel over gloo match one process; torch_dist reshards 1 <-> 2."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from megatron.core import parallel_state
from safetensors.torch import load_file, save_file

from mugv.models.dit.convert import full_state_dict, load_megatron, load_mugv, save_megatron, save_mugv, to_official
from mugv.models.dit.model import build_model
from mugv.models.dit.config import get_preset
from mugv.models.dit.spec import local_block_spec

TP = 2


def _forward_backward(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Output, and the gradients of replicated params (patch embedding, adaLN t_block) for a fixed loss."""
    model.zero_grad()
    out = model(inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"], x_mask=inputs["x_mask"])
    (out * inputs["weights"]).sum().backward()
    return out.detach(), torch.cat([model.x_embedder.proj.weight.grad.flatten(), model.t_block[1].weight.grad.flatten()])


def _tp_worker(rank: int, workdir: str, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(TP), LOCAL_RANK=str(rank)
    )
    from mugv.training.distributed import destroy_parallel, init_parallel

    init_parallel(tp=TP)
    work = Path(workdir)
    inputs = load_file(str(work / "inputs.safetensors"))
    results = {}
    model = load_mugv(work / "mugv")
    results["tp_out"], results["tp_grad"] = _forward_backward(model, inputs)
    sequence_parallel = load_mugv(work / "mugv", sequence_parallel=True)
    results["sp_out"], results["sp_grad"] = _forward_backward(sequence_parallel, inputs)
    with torch.no_grad():
        resharded = load_megatron(work / "dist_tp1")
        results["from_dist_tp1"] = resharded(inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"], x_mask=inputs["x_mask"])
    save_megatron(model, work / "dist_tp2")
    results["official_from_tp2"] = _flat(to_official(model))

    init_parallel(tp=1, cp=TP)
    context_parallel = load_mugv(work / "mugv")
    results["cp_out"], _ = _forward_backward(context_parallel, inputs)
    grads = [param.grad for param in context_parallel.parameters()]
    for grad in grads:  # each CP rank holds the grads of its own tokens
        dist.all_reduce(grad, group=parallel_state.get_context_parallel_group())
    results["cp_grads"] = torch.cat([grad.flatten() for grad in grads])
    if rank == 0:
        save_file({k: v.contiguous() for k, v in results.items()}, str(work / "results.safetensors"))
    destroy_parallel()


def _flat(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state_dict[key].flatten() for key in sorted(state_dict)])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_tp2_sp_cp2_match_one_process_and_checkpoints_reshard(tmp_path):
    from mugv.training.distributed import init_parallel

    init_parallel()  # the one-process reference runs its forward through a process group of one
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"), local_block_spec())
    g = torch.Generator().manual_seed(1)
    inputs = {
        "x": torch.randn(2, 24, 2, 4, 6, generator=g),  # 2 * 2 * 3 + 2 = 14 tokens: splits over 2 ranks
        "timestep": torch.tensor([100.0, 700.0]),
        "y": torch.randn(2, 1, 6, 384, generator=g),
        "mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]),
        "x_mask": torch.tensor([[False, True], [True, True]]),
        "weights": torch.randn(2, 48, 2, 4, 6, generator=g),
    }
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    reference_out, reference_grad = _forward_backward(model, inputs)
    reference_grads = torch.cat([param.grad.flatten() for param in model.parameters()])
    save_mugv(model, tmp_path / "mugv")
    save_megatron(model, tmp_path / "dist_tp1")

    mp.spawn(_tp_worker, args=(str(tmp_path), _free_port()), nprocs=TP, join=True)

    results = load_file(str(tmp_path / "results.safetensors"))
    for name in ("tp_out", "sp_out", "from_dist_tp1", "cp_out"):
        assert (results[name] - reference_out).abs().max() < 1e-5, name
    for name in ("tp_grad", "sp_grad"):
        assert (results[name] - reference_grad).abs().max() < 1e-6 * reference_grad.abs().max(), name
    assert (results["cp_grads"] - reference_grads).abs().max() < 1e-6 * reference_grads.abs().max()
    assert torch.equal(results["official_from_tp2"], _flat(to_official(model)))  # TP shards gathered
    from_tp2 = full_state_dict(load_megatron(tmp_path / "dist_tp2"))
    original = full_state_dict(model)
    assert from_tp2.keys() == original.keys()
    assert all(torch.equal(from_tp2[key], original[key]) for key in original)
