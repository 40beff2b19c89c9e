"""Benchmark: one MUGDiT training step (forward + backward), our Megatron-Core model vs plain PyTorch.

Both models are the same architecture and size (the plain one loads our weights, strictly, and
must give the same output), run on the same inputs in the same process, timed interleaved
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
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mugv.models.dit.model import build_model
from mugv.models.dit.config import DiTConfig, get_preset
from mugv.models.dit.spec import HAVE_TE, default_block_spec
from mugv.planning.flops import START_END_TOKENS, dit_flops, mfu, video_tokens

# --------------------------------------------------------------------------- plain PyTorch MUGDiT


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


class ScalarEmbedder(nn.Module):
    def __init__(self, hidden: int, frequency_dim: int) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class CaptionProjection(nn.Module):
    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(y), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.y_proj = CaptionProjection(in_features, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.y_proj(F.layer_norm(y, y.shape[-1:], eps=self.eps))
        return F.layer_norm(y, y.shape[-1:], eps=self.eps)


class PatchEmbed(nn.Module):
    """Conv3d weights applied as one matmul over non-overlapping patches (kernel == stride)."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, hidden: int) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv3d(in_channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (pt, ph, pw), (b, c, t, h, w) = self.patch, x.shape
        x = F.pad(x, (0, -w % pw, 0, -h % ph, 0, -t % pt))
        nt, nh, nw = x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw
        patches = x.reshape(b, c, nt, pt, nh, ph, nw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4)
        return F.linear(patches.flatten(1, 3), self.proj.weight.flatten(1), self.proj.bias)


class QKNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs as a complex product; x [b, s, heads, d], rotation [b, s, 1, d/2] complex."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.linear_qkv = nn.Linear(hidden, 3 * hidden)
        self.q_layernorm = QKNorm(hidden // heads, eps)
        self.k_layernorm = QKNorm(hidden // heads, eps)
        self.linear_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.linear_qkv(x).view(b, s, self.heads, 3, -1).unbind(3)  # heads-major, as ours
        q = rotate(self.q_layernorm(q), rotation)
        k = rotate(self.k_layernorm(k), rotation)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.linear_proj(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_kv = nn.Linear(hidden, 2 * hidden)
        self.q_layernorm = QKNorm(hidden // heads, eps)
        self.k_layernorm = QKNorm(hidden // heads, eps)
        self.linear_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_layernorm(self.linear_q(x).view(b, s, self.heads, -1))
        k, v = self.linear_kv(text).view(b, text.shape[1], self.heads, 2, -1).unbind(3)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), self.k_layernorm(k).transpose(1, 2), v.transpose(1, 2),
            attn_mask=text_mask[:, None, None, :],
        )
        return self.linear_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.linear_fc1 = nn.Linear(hidden, ffn)
        self.linear_fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate="tanh"))


def per_token(
    x: torch.Tensor, frame_params: torch.Tensor, edge_params: torch.Tensor, frames: int,
    op: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """Apply op(tokens, *params) with per-frame params to the video tokens, t=0 params to start/end.

    x [b, 1 + T*S + 1, h]; frame_params [k, b, T, 1, h]; edge_params [k, b, 1, h]. The params
    broadcast over the S tokens of a frame, so no per-token parameter tensor is materialised.
    """
    video = op(x[:, 1:-1].unflatten(1, (frames, -1)), *frame_params).flatten(1, 2)
    start = op(x[:, :1], *edge_params)
    end = op(x[:, -1:], *edge_params)
    return torch.cat([start, video, end], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)


def gate(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return x * g


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        h, eps = cfg.hidden_size, cfg.norm_eps
        self.eps = eps
        self.scale_shift_table = nn.Parameter(torch.zeros(6, h))
        self.self_attention = SelfAttention(h, cfg.num_heads, eps)
        self.cross_attn_norm = nn.LayerNorm(h, eps=eps)
        self.cross_attention = CrossAttention(h, cfg.num_heads, eps)
        self.mlp = FeedForward(h, cfg.mlp_hidden_size)

    def forward(self, x, text, text_mask, t_mod, t0_mod, noised_frames, rotation):
        b, frames = noised_frames.shape
        p = self.scale_shift_table[None] + t_mod.view(b, 6, -1)  # [b, 6, h]
        p0 = self.scale_shift_table[None] + t0_mod.view(b, 6, -1)
        frame_p = torch.where(noised_frames[:, None, :, None], p[:, :, None], p0[:, :, None])  # [b, 6, T, h]
        frame_p = frame_p.unsqueeze(3).transpose(0, 1)  # [6, b, T, 1, h]
        edge_p = p0.unsqueeze(2).transpose(0, 1)  # [6, b, 1, h]
        norm = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        attn = self.self_attention(per_token(norm, frame_p[0:2], edge_p[0:2], frames, modulate), rotation)
        x = x + per_token(attn, frame_p[2:3], edge_p[2:3], frames, gate)
        x = x + self.cross_attention(self.cross_attn_norm(x), text, text_mask)
        norm = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        mlp = self.mlp(per_token(norm, frame_p[3:5], edge_p[3:5], frames, modulate))
        return x + per_token(mlp, frame_p[5:6], edge_p[5:6], frames, gate)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.norm_eps
        self.scale_shift_table = nn.Parameter(torch.zeros(2, cfg.hidden_size))
        self.linear = nn.Linear(cfg.hidden_size, math.prod(cfg.patch_size) * cfg.out_channels)

    def forward(self, x, t_emb, t0_emb, noised_frames):
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).unbind(1)
        shift0, scale0 = (self.scale_shift_table[None] + t0_emb[:, None]).unbind(1)
        noised = noised_frames[:, :, None, None]
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps).unflatten(1, (noised_frames.shape[1], -1))
        x = modulate(x, torch.where(noised, shift[:, None, None], shift0[:, None, None]),
                     torch.where(noised, scale[:, None, None], scale0[:, None, None]))
        return self.linear(x.flatten(1, 2))


class PlainMUGDiT(nn.Module):
    """MUGDiT in plain PyTorch (nn.Linear, SDPA), batch-first; parameter names match ours."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if not cfg.use_start_end_tokens:
            raise ValueError("the plain reference implements the start/end-token layout only")
        h = cfg.hidden_size
        self.cfg = cfg
        self.start_token = nn.Parameter(torch.zeros(h))
        self.end_token = nn.Parameter(torch.zeros(h))
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, h)
        self.t_embedder = ScalarEmbedder(h, cfg.timestep_frequency_dim)
        self.fps_embedder = ScalarEmbedder(h, cfg.timestep_frequency_dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, h, cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)

    def rotation(self, batch: int, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Unit complex rotations [b, N, 1, d/2] of positions (h, w, t); start (0,0,0), end (H-1,W-1,T+1)."""
        t, h, w = grid
        dim = self.cfg.head_dim  # float32 frequencies, whatever dtype the model is cast to
        freqs = 1.0 / self.cfg.rope_theta ** (torch.arange(0, dim, 6, device=device)[: dim // 6].float() / dim)
        axes = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), torch.arange(1, t + 1, device=device),
            indexing="ij",
        )
        positions = torch.stack(axes, dim=-1).permute(2, 0, 1, 3).reshape(-1, 3)  # t-major, then h, w
        start = torch.tensor([[0, 0, 0]], device=device)
        end = torch.tensor([[h - 1, w - 1, t + 1]], device=device)
        positions = torch.cat([start, positions, end]).float()
        angles = (positions[..., None] * freqs).flatten(-2)
        return torch.polar(torch.ones_like(angles), angles)[None, :, None].expand(batch, -1, -1, -1)

    def forward(self, x, timestep, y, mask=None, fps=None):
        dtype = self.x_embedder.proj.weight.dtype
        b = x.shape[0]
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        in_size = x.shape[2:]
        grid = tuple(-(-n // p) for n, p in zip(in_size, self.cfg.patch_size))
        fps = torch.full((b,), self.cfg.default_fps, device=x.device) if fps is None else fps
        fps_emb = self.fps_embedder(fps)
        t_emb = self.t_embedder(timestep) + fps_emb
        t0_emb = self.t_embedder(torch.zeros_like(timestep)) + fps_emb
        t_mod, t0_mod = self.t_block(t_emb), self.t_block(t0_emb)
        text = self.y_embedder(y[:, 0])
        text_mask = torch.ones(b, y.shape[2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
        tokens = self.x_embedder(x)
        hidden = torch.cat([self.start_token.expand(b, 1, -1), tokens, self.end_token.expand(b, 1, -1)], dim=1)
        noised_frames = torch.ones(b, grid[0], dtype=torch.bool, device=x.device)
        rotation = self.rotation(b, grid, x.device)
        for block in self.blocks:
            hidden = block(hidden, text, text_mask, t_mod, t0_mod, noised_frames, rotation)
        out = self.final_layer(hidden[:, 1:-1], t_emb, t0_emb, noised_frames)
        (nt, nh, nw), (pt, ph, pw) = grid, self.cfg.patch_size
        out = out.reshape(b, nt, nh, nw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, -1, nt * pt, nh * ph, nw * pw)
        return out[:, :, : in_size[0], : in_size[1], : in_size[2]].float()


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

    torch.manual_seed(0)
    ours = build_model(cfg, default_block_spec()).to(device=device, dtype=dtype)
    plain = PlainMUGDiT(cfg).to(device=device, dtype=dtype)
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

    tokens = video_tokens(frames, height, width, cfg.patch_size) + START_END_TOKENS
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
    print(f"batch {args.batch} x {tokens} tokens (latent {frames}x{height}x{width} + 2), text {args.text_len}; "
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
