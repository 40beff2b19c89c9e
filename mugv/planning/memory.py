"""Memory per GPU of MUGDiT training for a parallel layout, and the smallest layout that fits a GPU.

    python -m mugv.planning.memory        # the table for H100-80GB / H200-141GB, 1B/4B/10B at 256p/480p/720p

Model of memory (bf16 training, Megatron-Core conventions):
- weights: bf16 params (2 B) + fp32 main grads (4 B) per parameter on the GPU, plus fp32 master
  weights and Adam moments (12 B) divided over the data-parallel ranks by the distributed optimizer;
  the block linears are split by TP, every layer by PP.
- activations, per layer and micro-batch of s tokens (s / CP per rank), hidden h, flash attention (no
  s^2 term): ACT_COEFF * s * h bytes, divided by TP with sequence parallel (without it only the
  TP-split part, ACT_TP_SPLIT of it, divides). ACT_COEFF = 34 (Korthikanti et al. 2022, self-attention
  + MLP) + 12 (cross-attention and adaLN modulation outputs) + text K/V. With full recomputation only
  each layer's input (2 s h bytes) stays, plus one layer's activations during its backward.
  With 1F1B pipelining the first stage holds PP micro-batches in flight: depth layers' worth in total.
- a fixed overhead (CUDA context, NCCL and allocator buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pydantic import Field

from mugv.models.dit.config import DiTConfig, get_preset
from mugv.models.vae.config import VAEConfig
from mugv.section import Section

GIB = 2**30
ACT_COEFF = 46
ACT_TP_SPLIT = 36 / 46
OVERHEAD_GIB = 5.0
GPUS_GIB = {"H100-80GB": 80.0, "H200-141GB": 141.0}
# 5 s clips (105 frames -> 14 latent frames) at each resolution (H x W pixels)
RESOLUTIONS = {"256p": (256, 448), "480p": (480, 848), "720p": (720, 1280)}
LATENT_FRAMES = 14


class Layout(Section):
    """One parallel layout and training setting."""

    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    cp: int = Field(1, ge=1)
    dp: int = Field(64, ge=1, description="data-parallel ranks sharing the optimizer state (distributed optimizer)")
    sequence_parallel: bool = True
    micro_batch: int = Field(1, ge=1)
    recompute: bool = False
    distributed_optimizer: bool = True


@cache
def parameter_split(preset: str) -> tuple[int, int]:
    """(parameters split by TP, replicated parameters) of a preset, from its shapes (`DiTConfig.parameter_split`).

    Split: column-parallel weights and biases, row-parallel weights (their bias is replicated).
    """
    return get_preset(preset).parameter_split()


def sequence_tokens(height: int, width: int, latent_frames: int = LATENT_FRAMES, preset: str = "10B") -> int:
    """Tokens of one clip: the preset's patches of the VAE latent (`VAEConfig`), plus its start/end tokens."""
    spatial = VAEConfig().spatial_factor
    return get_preset(preset).tokens(latent_frames, height // spatial, width // spatial)


@dataclass(frozen=True)
class MemoryEstimate:
    weights_gib: float
    optimizer_gib: float
    activations_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.optimizer_gib + self.activations_gib + self.overhead_gib


def estimate(preset: str, tokens: int, layout: Layout, text_len: int = 300) -> MemoryEstimate:
    """Peak memory of one GPU (the first pipeline stage) training `preset` on clips of `tokens` tokens."""
    cfg: DiTConfig = get_preset(preset)
    split, replicated = parameter_split(preset)
    params = (split / layout.tp + replicated) / layout.pp
    optimizer_bytes = 12 / layout.dp if layout.distributed_optimizer else 12
    s, h, b = tokens / layout.cp, cfg.hidden_size, layout.micro_batch
    tp_divisor = layout.tp if layout.sequence_parallel else 1 / (ACT_TP_SPLIT / layout.tp + 1 - ACT_TP_SPLIT)
    per_layer = (ACT_COEFF * s * h * b + 4 * text_len * h * b) / tp_divisor
    if layout.recompute:
        activations = cfg.depth * 2 * s * h * b / tp_divisor + per_layer
    else:
        activations = cfg.depth * per_layer
    return MemoryEstimate(params * 6 / GIB, params * optimizer_bytes / GIB, activations / GIB, OVERHEAD_GIB)


def candidate_layouts(heads: int, dp: int) -> list[Layout]:
    """Layouts the trainer supports (TP x CP, no pipeline split yet), from the least model parallelism to the
    most; at each size without recomputation first, and TP before CP."""
    out = [
        Layout(tp=tp, cp=cp, dp=dp, recompute=recompute)
        for tp in (1, 2, 4, 8) for cp in (1, 2, 4, 8) for recompute in (False, True) if heads % tp == 0
    ]
    return sorted(out, key=lambda lay: (lay.tp * lay.cp, lay.recompute, lay.cp))


def recommend(preset: str, tokens: int, gpu_gib: float, dp: int = 64, headroom: float = 0.9) -> Layout | None:
    """The first candidate layout whose estimate fits `headroom` of the GPU's memory (None if none does)."""
    for layout in candidate_layouts(get_preset(preset).num_heads, dp):
        if estimate(preset, tokens, layout).total_gib <= headroom * gpu_gib:
            return layout
    return None


def table(presets: tuple[str, ...] = ("1B", "4B", "10B"), dp: int = 64) -> list[dict]:
    rows = []
    for gpu, gib in GPUS_GIB.items():
        for preset in presets:
            for name, (height, width) in RESOLUTIONS.items():
                tokens = sequence_tokens(height, width, preset=preset)
                layout = recommend(preset, tokens, gib, dp)
                est = estimate(preset, tokens, layout) if layout else None
                rows.append({
                    "gpu": gpu, "preset": preset, "resolution": name, "tokens": tokens,
                    "layout": (f"TP{layout.tp} CP{layout.cp}{' recompute' if layout.recompute else ''}"
                               if layout else "does not fit"),
                    "total_gib": round(est.total_gib, 1) if est else None,
                    "no_parallel_gib": round(estimate(preset, tokens, Layout(dp=dp)).total_gib, 1),
                })
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="MUGDiT training memory per GPU (bf16, SP, distributed optimizer over DP=64, micro-batch 1)")
    for column in ("gpu", "preset", "res", "tokens", "TP1 GiB", "recommended", "GiB"):
        out.add_column(column)
    for r in table():
        out.add_row(r["gpu"], r["preset"], r["resolution"], str(r["tokens"]), str(r["no_parallel_gib"]),
                    r["layout"], str(r["total_gib"]))
    Console().print(out)


if __name__ == "__main__":
    main()
