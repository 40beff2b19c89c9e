"""Benchmark: the cost of a post-training step, Flow-DPO over SFT and LoRA over full fine-tuning, side by side.

Four steps on the same batch, same weights, same optimizer (AdamW over the trainable parameters), timed
interleaved in one process (warm-up, then the median of several steps each):
  SFT  full   flow-matching forward + backward on P samples (the winners), optimizer step
  SFT  2P     the same on the whole batch of pairs: P winners + P losers (the same tensors DPO reads)
  SFT  LoRA   the same with LoRA adapters (base frozen)
  DPO  full   policy forward + backward on P winners + P losers in one batch, a frozen copy's
              forward on the same batch under no_grad, optimizer step
  DPO  LoRA   the same, the reference being the policy with its adapters switched off
Prints the table and the ratios: (a) DPO / SFT (goal <= 2.2), against an SFT step on one side of the pairs and
on the same 2P samples, with the FLOP ratio next to each (forward 1, backward 2: DPO = 2 x 3 + 2 x 1 = 8
units; SFT on P = 3, so 2.67 is the floor there; SFT on 2P = 6, floor 1.33), (b) LoRA / full.

    python bench/post_train.py                         # CPU: tiny preset, 2 pairs of 2x16x16 latents
    python bench/post_train.py --model small --pairs 1 --latent 4 32 32
    python bench/post_train.py --device cuda --model 1B --layers 4 --latent 14 90 160
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from mugv.training.megatron_compat import silence_megatron_import_warnings

silence_megatron_import_warnings()  # a script: before the imports below first import megatron

from mugv.diffusion.loss import flow_matching_loss  # noqa: E402
from mugv.diffusion.schedule import add_noise  # noqa: E402
from mugv.models.dit.config import get_preset  # noqa: E402
from mugv.models.dit.model import build_model  # noqa: E402
from mugv.models.dit.spec import default_block_spec  # noqa: E402
from mugv.training.config import LoRAConfig, OptimizerConfig  # noqa: E402
from mugv.training.distributed import init_parallel  # noqa: E402
from mugv.training.lora import apply_lora, lora_modules  # noqa: E402
from mugv.training.optimizer import AdamWOptimizer  # noqa: E402
from mugv.training.preference_loss import dpo_step_losses, shared_noise_and_timesteps  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="tiny", help="DiT preset (default tiny)")
    parser.add_argument("--layers", type=int, help="override the preset depth")
    parser.add_argument("--latent", type=int, nargs=3, metavar=("T", "H", "W"), default=(2, 16, 16))
    parser.add_argument("--pairs", type=int, default=2, help="preference pairs per step (SFT takes as many samples)")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--rank", type=int, help="LoRA rank (default: MUG-V's 64, at most hidden/8 so a tiny preset's "
                        "adapter stays small next to its base)")
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--beta", type=float, default=500.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads (default: all; on a machine others are loading, 1 avoids OpenMP stalls)")
    return parser.parse_args()


def make_optimizer(model: torch.nn.Module) -> AdamWOptimizer:
    optimizer = AdamWOptimizer(model, OptimizerConfig())
    for group in optimizer.param_groups:
        group["lr"] = 1e-5
    return optimizer


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, iters: int, device) -> dict[str, list[float]]:
    """Seconds of every timed step of each variant; the variants alternate (and reverse order) every iteration."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.model, **({"depth": args.layers} if args.layers else {}))
    rank = args.rank or min(64, cfg.hidden_size // 8)
    lora_cfg = LoRAConfig(enabled=True, rank=rank, alpha=args.alpha)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    init_parallel()  # the Megatron linears' forward all-reduces through a process group, even of one

    def model(lora: bool, frozen: bool = False):
        torch.manual_seed(0)
        built = build_model(cfg, default_block_spec()).to(device)
        if lora:
            apply_lora(built, lora_cfg)
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():  # a trained adapter: B non-zero
                for module in lora_modules(built).values():
                    module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=g) * 0.01)
        return built.eval().requires_grad_(False) if frozen else built.train()

    pairs, (frames, height, width) = args.pairs, args.latent
    g = torch.Generator().manual_seed(2)
    shape = (pairs, cfg.in_channels, frames, height, width)
    side = lambda: {"x0": torch.randn(shape, generator=g).to(device),  # noqa: E731
                    "y": torch.randn(pairs, 1, args.text_len, cfg.caption_channels, generator=g).to(device),
                    "mask": torch.ones(pairs, args.text_len, dtype=torch.long, device=device),
                    "fps": torch.full((pairs,), 24.0, device=device)}
    winner, loser = side(), side()
    noise, t = shared_noise_and_timesteps(shape, torch.Generator().manual_seed(3), device=device)

    def sft_step(policy, optimizer, batch=winner, noise=noise, t=t) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad()
            with autocast:
                out = policy(add_noise(batch["x0"], noise, t), t, batch["y"], batch["mask"], fps=batch["fps"])
            flow_matching_loss(out, batch["x0"], noise).backward()
            optimizer.step()
        return step

    both = {key: torch.cat([winner[key], loser[key]]) for key in winner}  # the 2P samples a DPO step reads

    def dpo_step(policy, reference, optimizer) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad()
            with autocast:
                loss, _ = dpo_step_losses(policy, reference, winner, loser, t, noise, beta=args.beta)
            loss.backward()
            optimizer.step()
        return step

    full_sft, lora_sft, full_dpo, lora_dpo = model(False), model(True), model(False), model(True)
    full_sft2 = model(False)
    reference = model(False, frozen=True)
    steps = {
        "SFT  full": sft_step(full_sft, make_optimizer(full_sft)),
        "SFT  2P": sft_step(full_sft2, make_optimizer(full_sft2), both, torch.cat([noise, noise]), torch.cat([t, t])),
        "SFT  LoRA": sft_step(lora_sft, make_optimizer(lora_sft)),
        "DPO  full": dpo_step(full_dpo, reference, make_optimizer(full_dpo)),
        "DPO  LoRA": dpo_step(lora_dpo, None, make_optimizer(lora_dpo)),
    }
    seconds = time_interleaved(steps, args.warmup, args.iters, device)
    median = {name: statistics.median(values) for name, values in seconds.items()}

    total = sum(p.numel() for p in full_sft.parameters())
    trainable = sum(p.numel() for p in lora_sft.parameters() if p.requires_grad)
    tokens = cfg.tokens(frames, height, width)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device {where}; preset {args.model}, depth {cfg.depth}, hidden {cfg.hidden_size}, {total:,} params; "
          f"LoRA rank {rank}: {trainable:,} trainable ({trainable / total:.1%})")
    print(f"{pairs} pairs of {tokens} tokens (latent {frames}x{height}x{width}), text {args.text_len}; "
          f"SFT steps on {pairs} samples; {args.iters} timed steps each after {args.warmup} warm-up")
    print(f"{'step':<12}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, values in seconds.items():
        print(f"{name:<12}{median[name]:>10.4f}{min(values):>10.4f}{max(values):>10.4f}")
    print("(a) DPO / SFT (goal <= 2.2):")
    print(f"    on the same 2P samples (FLOP floor 1.33): full / full {median['DPO  full'] / median['SFT  2P']:.2f}")
    print(f"    SFT on one side, P samples (FLOP floor 2.67): LoRA / LoRA {median['DPO  LoRA'] / median['SFT  LoRA']:.2f}   "
          f"full / full {median['DPO  full'] / median['SFT  full']:.2f}   "
          f"DPO LoRA / SFT full {median['DPO  LoRA'] / median['SFT  full']:.2f}")
    print("(b) LoRA / full fine-tune:")
    print(f"    SFT {median['SFT  LoRA'] / median['SFT  full']:.2f}   DPO {median['DPO  LoRA'] / median['DPO  full']:.2f}")
    fastest = {name: min(values) for name, values in seconds.items()}
    print(f"from the fastest steps (less sensitive to a loaded machine): DPO / SFT LoRA "
          f"{fastest['DPO  LoRA'] / fastest['SFT  LoRA']:.2f}, full {fastest['DPO  full'] / fastest['SFT  full']:.2f}; "
          f"LoRA / full SFT {fastest['SFT  LoRA'] / fastest['SFT  full']:.2f}, DPO {fastest['DPO  LoRA'] / fastest['DPO  full']:.2f}")


if __name__ == "__main__":
    main()
