"""Benchmark: one MUGDiT training step (forward + backward), our Megatron-Core model vs plain PyTorch.

Both models are the same architecture and size (the plain one, `mugv.models.dit.reference`, loads
our weights, strictly, and must give the same output), run on the same inputs in the same process, timed interleaved
(warm-up, then the median of several steps each). Prints the time ratio ours / plain (goal
<= 1.0) and each model's achieved FLOP/s (analytic count, `mugv.planning.flops`) as a fraction of
the dense matmul peak measured in the same run (goal >= 0.5 for a small preset at >= 1k tokens).

    python bench/dit_step.py                           # CPU: small preset, 1026 tokens, fp32
    python bench/dit_step.py --profile                 # + torch.profiler top ops of both models
    python bench/dit_step.py --device cuda             # GPU: 1B preset at 720p (50,402 tokens), bf16,
                                                       #   Transformer Engine linears when importable,
                                                       #   6 of the 56 layers: without recompute a layer
                                                       #   keeps ~8.5 GiB of activations at 50k tokens
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

from mugv.training.megatron_compat import silence_megatron_import_warnings

silence_megatron_import_warnings()  # a script: before the imports below first import megatron

from mugv.models.dit.config import get_preset  # noqa: E402
from mugv.models.dit.model import build_model  # noqa: E402
from mugv.models.dit.reference import ReferenceMUGDiT  # noqa: E402
from mugv.models.dit.spec import HAVE_TE, default_block_spec  # noqa: E402
from mugv.planning.flops import dit_flops, mfu  # noqa: E402
from mugv.training.distributed import init_parallel  # noqa: E402

# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    """Best FLOP/s over `reps` dense size^3 matmuls (after one warm-up): the machine's peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def train_step(model: nn.Module, inputs: dict) -> None:
    out = model(**inputs)
    out.square().mean().backward()
    for param in model.parameters():
        param.grad = None


def time_interleaved(models: dict[str, nn.Module], inputs: dict, warmup: int, iters: int, device) -> dict:
    """Seconds of every timed step of each model; the models alternate within every iteration."""
    for _ in range(warmup):
        for model in models.values():
            train_step(model, inputs)
    times = {name: [] for name in models}
    names = list(models)
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            train_step(models[name], inputs)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory_gib(model: nn.Module, inputs: dict) -> float:
    """GPU memory high-water mark of one training step."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, inputs)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def profile(model: nn.Module, inputs: dict, device: torch.device, rows: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    train_step(model, inputs)
    with torch_profile(activities=activities) as prof:
        train_step(model, inputs)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", help="DiT preset (default: small on CPU, 1B on CUDA)")
    parser.add_argument("--layers", type=int, help="override the preset depth (default: 6 for CUDA 1B, to fit 80 GB)")
    parser.add_argument("--latent", type=int, nargs=3, metavar=("T", "H", "W"),
                        help="latent grid (default: 4 32 32 = 1024 tokens on CPU, 14 90 160 = 720p 5 s on CUDA)")
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--matmul-size", type=int, help="peak probe size (default 2048 CPU, 8192 CUDA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (default: all; on a machine others are loading, 1 avoids OpenMP stalls)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the accelerator's spec dense peak (e.g. 989 for H100 SXM bf16): adds an MFU column")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of both models")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    preset = args.preset or ("1B" if on_gpu else "small")
    depth = args.layers or (6 if on_gpu and preset == "1B" else None)
    cfg = get_preset(preset, **({"depth": depth} if depth else {}))
    frames, height, width = args.latent or ((14, 90, 160) if on_gpu else (4, 32, 32))
    dtype = torch.bfloat16 if on_gpu else torch.float32

    init_parallel()  # the Megatron linears' forward all-reduces through a process group, even of one
    torch.manual_seed(0)
    ours = build_model(cfg, default_block_spec()).to(device=device, dtype=dtype)
    plain = ReferenceMUGDiT(cfg).to(device=device, dtype=dtype)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_plain = sum(p.numel() for p in plain.parameters())
    assert n_ours == n_plain, f"parameter counts differ: ours {n_ours}, plain {n_plain}"
    weights = {k: v for k, v in ours.state_dict().items() if not k.endswith("_extra_state")}
    plain.load_state_dict(weights, strict=True)

    inputs = dict(
        x=torch.randn(args.batch, cfg.in_channels, frames, height, width, device=device),
        timestep=torch.rand(args.batch, device=device) * 1000,
        y=torch.randn(args.batch, 1, args.text_len, cfg.caption_channels, device=device),
        mask=(torch.arange(args.text_len, device=device) < args.text_len * 2 // 5).expand(args.batch, -1),
    )
    with torch.no_grad():
        max_diff = (ours(**inputs) - plain(**inputs)).abs().max().item()
    tolerance = 5e-2 if on_gpu else 1e-3
    assert max_diff < tolerance, f"ours and plain disagree: max |diff| {max_diff:.3g}"

    tokens = cfg.tokens(frames, height, width)
    step_flops = args.batch * dit_flops(cfg, tokens, args.text_len).training()
    matmul_size = args.matmul_size or (8192 if on_gpu else 2048)
    models = {"ours (Megatron)": ours, "plain PyTorch": plain}
    peak_before = matmul_peak(device, dtype, matmul_size, reps=10)
    seconds = time_interleaved(models, inputs, args.warmup, args.iters, device)
    peak = max(peak_before, matmul_peak(device, dtype, matmul_size, reps=10))  # probed before and after

    linears = "Transformer Engine" if on_gpu and HAVE_TE else "Megatron local"
    print(f"device {device} ({torch.get_num_threads()} threads)" if not on_gpu else f"device {torch.cuda.get_device_name()}")
    print(f"preset {preset}, depth {cfg.depth}{' (reduced to fit)' if depth else ''}, hidden {cfg.hidden_size}, "
          f"{n_ours:,} params, {dtype}, linears: {linears}")
    print(f"batch {args.batch} x {tokens} tokens (latent {frames}x{height}x{width} + {cfg.start_end_tokens}), text {args.text_len}; "
          f"max |ours - plain| = {max_diff:.2e}")
    print(f"matmul peak (best {matmul_size}^3 {dtype}): {peak / 1e9:,.1f} GFLOP/s; "
          f"step = {step_flops / 1e9:,.2f} GFLOP (fwd+bwd, analytic)")
    header = f"{'model':<18}{'median s':>10}{'min s':>10}{'GFLOP/s':>10}{'of peak':>9}"
    header += f"{'MFU spec':>10}" if args.peak_tflops else ""
    print(header + (f"{'mem GiB':>9}" if on_gpu else "") + "   (rates from the median)")
    for name, values in seconds.items():
        rate = step_flops / statistics.median(values)
        row = f"{name:<18}{statistics.median(values):>10.4f}{min(values):>10.4f}{rate / 1e9:>10.1f}{mfu(rate, peak):>9.1%}"
        row += f"{mfu(rate, args.peak_tflops * 1e12):>10.1%}" if args.peak_tflops else ""
        print(row + (f"{peak_memory_gib(models[name], inputs):>9.1f}" if on_gpu else ""))
    ours_s, plain_s = seconds["ours (Megatron)"], seconds["plain PyTorch"]
    print(f"time ratio ours / plain: {statistics.median(ours_s) / statistics.median(plain_s):.3f} median, "
          f"{min(ours_s) / min(plain_s):.3f} min (goal <= 1.0)")
    if args.profile:
        for name, model in (("ours", ours), ("plain", plain)):
            print(f"\n--- profile: {name}\n{profile(model, inputs, device, rows=15)}")


if __name__ == "__main__":
    main()
