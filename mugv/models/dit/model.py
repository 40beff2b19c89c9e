"""MUGDiT, the MUG-V video diffusion transformer, built from Megatron-Core pieces (read top to bottom)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)
from megatron.core.utils import init_method_normal
from torch import nn
from torch.utils.checkpoint import checkpoint

from mugv.models.dit.config import DiTConfig, ParallelDims
from mugv.models.dit.layers import DiTBlockSubmodules, rope_angles, rope_frequencies
from mugv.models.dit.parallel_tokens import TokenSharding, check_parallel_state, running_parallel_dims
from mugv.models.dit.spec import default_block_spec, local_block_spec


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def gated(branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return gate * branch


# A run of tokens [start, stop) whose samples all take the same timestep choice: True (the
# sample's t) or False (t=0) for every sample, or per-sample flags [B] bool.
TokenRun = tuple[int, int, "bool | torch.Tensor"]


def timestep_runs(noised: torch.Tensor, device: torch.device) -> list[TokenRun]:
    """Maximal runs of consecutive tokens whose noised flags [s, B, 1] agree, in token order.

    T2V gives three (start token, video, end token); I2V one more per change between
    conditioning and noised frames. Modulating run by run with [1, B, h] parameters avoids
    materialising [s, B, h] parameter tensors (and their gradients) for every token.
    """
    flags = noised[..., 0].cpu()
    changes = ((flags[1:] != flags[:-1]).any(dim=1).nonzero().flatten() + 1).tolist()
    bounds = [0, *changes, flags.shape[0]]
    runs: list[TokenRun] = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        row = flags[start]
        uniform = bool((row == row[0]).all())
        runs.append((start, stop, bool(row[0]) if uniform else row.to(device)))
    return runs


def _run_param(choice: "bool | torch.Tensor", param: torch.Tensor, param_t0: torch.Tensor) -> torch.Tensor:
    """[1, B, h]: the t parameters [B, h] or the t=0 ones, per the run's choice."""
    if choice is True:
        return param[None]
    if choice is False:
        return param_t0[None]
    return torch.where(choice[None, :, None], param, param_t0)


def per_run(
    op, runs: list[TokenRun], tokens: tuple[torch.Tensor, ...], params: tuple[tuple[torch.Tensor, torch.Tensor], ...]
) -> torch.Tensor:
    """op(*token slices, *[1, B, h] parameters) on each run of sequence-first tokens, concatenated.

    `params` are (t, t=0) pairs of [B, h] parameters. The tokens are cut with one `split` per
    tensor (backward: one cat), not a slice per run (backward: a zero-filled full-size gradient
    per slice, then summed).
    """
    if len(runs) == 1:
        return op(*tokens, *(_run_param(runs[0][2], p, p0) for p, p0 in params))
    lengths = [stop - start for start, stop, _ in runs]
    slices = zip(*(t.split(lengths) for t in tokens))
    return torch.cat(
        [op(*run_tokens, *(_run_param(choice, p, p0) for p, p0 in params)) for run_tokens, (_, _, choice) in zip(slices, runs)]
    )


def megatron_config(
    config: DiTConfig, parallel: ParallelDims = ParallelDims(), perform_initialization: bool = True,
    recompute: bool = False,
) -> TransformerConfig:
    """The Megatron TransformerConfig the parallel linears of a DiTConfig are built with, for a layout.

    `recompute` is Megatron's full, uniform, one-layer activation recomputation: only each block's
    input is kept through the forward pass and the block is re-run in the backward pass.
    """
    tp = parallel.tp
    init = init_method_normal(config.init_std)
    return TransformerConfig(
        num_layers=config.depth,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads,
        kv_channels=config.head_dim,
        ffn_hidden_size=config.mlp_hidden_size,
        tensor_model_parallel_size=tp,
        context_parallel_size=parallel.cp,
        sequence_parallel=parallel.sequence_parallel and tp > 1,
        use_cpu_initialization=True,  # built on CPU (or meta); callers move it, like Megatron's get_model
        perform_initialization=perform_initialization,
        init_method=init,
        output_layer_init_method=init,
        init_method_std=config.init_std,
        qk_layernorm=config.qk_norm,  # finalize_model_grads then sums q/k_layernorm grads over TP
        layernorm_epsilon=config.norm_eps,
        params_dtype=torch.float32,
        add_bias_linear=True,
        bias_activation_fusion=False,
        gradient_accumulation_fusion=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        cuda_graph_scope=[],  # the whole layer; the default "full" is a deprecated alias that warns
        recompute_granularity="full" if recompute else None,
        recompute_method="uniform" if recompute else None,
        recompute_num_layers=1 if recompute else None,
    )


# --------------------------------------------------------------------------- embedders


class TimestepEmbedder(nn.Module):
    """Scalar (diffusion time or fps) -> sinusoid [cos | sin] -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return F.pad(embedding, (0, dim % 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t, self.frequency_dim).to(self.mlp[0].weight.dtype))


class CaptionMLP(nn.Module):
    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TextEmbedder(nn.Module):
    """Text-encoder features -> LN (no affine) -> MLP -> LN (no affine)."""

    def __init__(self, in_features: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(in_features, eps=eps, elementwise_affine=False)
        self.y_proj = CaptionMLP(in_features, hidden_size)
        self.post_norm = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.post_norm(self.y_proj(self.pre_norm(text)))


class PatchEmbed3D(nn.Module):
    """Video latents [B, C, T, H, W] -> sequence-first tokens [T'H'W', B, hidden] (zero-pads the tail).

    The weights are a Conv3d's (kernel == stride), applied as one matmul over the flattened
    non-overlapping patches: the same sums, without the convolution's im2col and layout copies.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, patch in zip(reversed(x.shape[2:]), reversed(self.patch_size)):
            pads += [0, -size % patch]
        if any(pads):
            x = F.pad(x, pads)
        (batch, channels, frames, height, width), (pt, ph, pw) = x.shape, self.patch_size
        patches = x.view(batch, channels, frames // pt, pt, height // ph, ph, width // pw, pw)
        patches = patches.permute(2, 4, 6, 0, 1, 3, 5, 7).reshape(-1, batch, channels * pt * ph * pw)
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


# --------------------------------------------------------------------------- block


class MUGDiTBlock(MegatronModule):
    """adaLN-single block: gated self-attn, ungated cross-attn, gated MLP.

    Tokens flagged not-noised (I2V conditioning frames, start/end tokens) are modulated with the
    t=0 embedding instead of the sample's timestep.
    """

    def __init__(self, config: TransformerConfig, submodules: DiTBlockSubmodules, dit: DiTConfig, layer_number: int):
        super().__init__(config)
        hidden = dit.hidden_size
        self.layer_number = layer_number
        self.norm = nn.LayerNorm(hidden, eps=dit.norm_eps, elementwise_affine=False)
        self.self_attention = build_module(submodules.self_attention, config=config, qk_norm=dit.qk_norm, eps=dit.norm_eps)
        self.cross_attn_norm = nn.LayerNorm(hidden, eps=dit.norm_eps)
        self.cross_attention = build_module(submodules.cross_attention, config=config, qk_norm=dit.qk_norm, eps=dit.norm_eps)
        self.mlp = build_module(submodules.mlp, config=config)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden) / hidden**0.5)
        if config.sequence_parallel:  # replicated params that see only this rank's tokens
            for param in (*self.cross_attn_norm.parameters(), self.scale_shift_table):
                param.sequence_parallel = True

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        t_mod: torch.Tensor,
        t0_mod: torch.Tensor,
        runs: list[TokenRun],
        rope: torch.Tensor,
    ) -> torch.Tensor:
        """x [s, b, h]; t_mod/t0_mod [b, 6h]; runs of x's tokens (`timestep_runs`); text [l, b, h];
        text_mask [b, l]; rope [s, b, 1, head_dim/2] complex rotations."""
        batch = x.shape[1]
        table = self.scale_shift_table[None]
        params = (table + t_mod.view(batch, 6, -1)).unbind(1)
        params_t0 = (table + t0_mod.view(batch, 6, -1)).unbind(1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = zip(params, params_t0)
        attn = self.self_attention(per_run(modulate, runs, (self.norm(x),), (shift_msa, scale_msa)), rope)
        x = x + per_run(gated, runs, (attn,), (gate_msa,))
        x = x + self.cross_attention(self.cross_attn_norm(x), text, text_mask)
        mlp = self.mlp(per_run(modulate, runs, (self.norm(x),), (shift_mlp, scale_mlp)))
        return x + per_run(gated, runs, (mlp,), (gate_mlp,))


class FinalLayer(nn.Module):
    """LN (no affine) -> modulate with a 2 x h table + t embedding -> Linear to patch * out_channels."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int, eps: float) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, eps=eps, elementwise_affine=False)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, t0: torch.Tensor, runs: list[TokenRun]) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).unbind(1)
        shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).unbind(1)
        return self.linear(per_run(modulate, runs, (self.norm_final(x),), ((shift, shift0), (scale, scale0))))


# --------------------------------------------------------------------------- model


class MUGDiT(MegatronModule):
    """MUG-V diffusion transformer. Hidden states are sequence-first [s, b, h] as in Megatron-Core.

    `parallel` is the layout (default one process). Building needs no process group at
    tp = cp = 1; running the forward does (Megatron's row-parallel linear all-reduces through a
    group even of size 1), and a layout over several ranks needs the matching Megatron parallel
    state (`mugv.training.distributed.init_parallel`). Parameters are created on the CPU (or under
    a `torch.device("meta")` context): call `.cuda()` on a GPU.
    Tensor parallel splits heads and the MLP; with `sequence_parallel` the token sequence (incl.
    start/end tokens) is split across TP ranks between blocks. Context parallel (Megatron's CP
    group) splits the tokens into contiguous slices, each rotated by its slice of the RoPE table;
    self-attention gathers K/V over the group. Token count must divide by CP x (TP if sequence
    parallel). All of that token handling is `parallel_tokens.TokenSharding`.

    Gradient convention under CP (Megatron's): each CP rank's parameter grads cover its own
    tokens only; summing over the CP group gives the full gradient (Megatron's schedules scale
    the loss by CP size and DDP averages over the data x context parallel group).
    """

    def __init__(
        self,
        config: DiTConfig,
        spec: ModuleSpec | None = None,
        *,
        parallel: ParallelDims = ParallelDims(),
        perform_initialization: bool = True,
        recompute: bool = False,
    ) -> None:
        check_parallel_state(parallel)
        super().__init__(megatron_config(config, parallel, perform_initialization, recompute))
        self.dit_config = config
        self.parallel = parallel
        self.token_sharding = TokenSharding(parallel)
        hidden = config.hidden_size
        spec = spec or default_block_spec()

        self.x_embedder = PatchEmbed3D(config.patch_size, config.in_channels, hidden)
        self.t_embedder = TimestepEmbedder(hidden, config.timestep_frequency_dim)
        self.fps_embedder = TimestepEmbedder(hidden, config.timestep_frequency_dim)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.y_embedder = TextEmbedder(config.caption_channels, hidden, config.norm_eps)
        self.blocks = nn.ModuleList(
            build_module(spec, config=self.config, dit=config, layer_number=i + 1) for i in range(config.depth)
        )
        if config.use_start_end_tokens:
            self.start_token = nn.Parameter(torch.randn(hidden) * 0.02)
            self.end_token = nn.Parameter(torch.randn(hidden) * 0.02)
        self.final_layer = FinalLayer(hidden, math.prod(config.patch_size), config.out_channels, config.norm_eps)
        if perform_initialization:
            self._init_replicated_linears()

    def _init_replicated_linears(self) -> None:
        """Linears outside the Megatron parallel layers: N(0, init_std) weights, zero biases."""
        for module in (self.x_embedder, self.t_embedder, self.fps_embedder, self.t_block, self.y_embedder, self.final_layer):
            for layer in module.modules():
                if isinstance(layer, (nn.Linear, nn.Conv3d)):
                    nn.init.normal_(layer.weight, std=self.dit_config.init_std)
                    nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------- conditioning

    def embed_timesteps(self, timestep: torch.Tensor, fps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t + fps embedding, t=0 + fps embedding), each [B, h]."""
        fps_embedding = self.fps_embedder(fps)
        return self.t_embedder(timestep) + fps_embedding, self.t_embedder(torch.zeros_like(timestep)) + fps_embedding

    def embed_text(self, y: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """y [B, 1, L, D] and mask [B, L] (nonzero = real token) -> text [L, B, h], key mask [B, L] bool.

        In training, a caption is dropped (for classifier-free guidance) with probability
        class_dropout_prob: its features become zeros, a fixed null caption.
        """
        batch, length = y.shape[0], y.shape[2]
        if length > self.dit_config.model_max_length:
            raise ValueError(f"text has {length} tokens, model_max_length is {self.dit_config.model_max_length}")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=y.device)
        mask = mask.reshape(mask.shape[0], -1) != 0
        if mask.shape[0] != batch:
            mask = mask.repeat(batch // mask.shape[0], 1)
        y = y[:, 0]
        if self.training and self.dit_config.class_dropout_prob > 0:
            dropped = torch.rand(batch, device=y.device) < self.dit_config.class_dropout_prob
            y = torch.where(dropped[:, None, None], torch.zeros_like(y), y)
            mask = mask | dropped[:, None]
        return self.y_embedder(y).transpose(0, 1), mask

    def token_noised_mask(self, x_mask: torch.Tensor | None, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
        """[N, B, 1] bool: True where a token takes the sample's timestep, False where it takes t=0."""
        frames, height, width = grid
        if x_mask is None:
            x_mask = torch.ones(batch, frames, dtype=torch.bool)
        frame_noised = x_mask.reshape(x_mask.shape[0], frames).bool()
        if frame_noised.shape[0] != batch:
            frame_noised = frame_noised.repeat(batch // frame_noised.shape[0], 1)
        noised = frame_noised.repeat_interleave(height * width, dim=1)
        if self.dit_config.use_start_end_tokens:
            edge = torch.zeros(batch, 1, dtype=torch.bool, device=noised.device)
            noised = torch.cat([edge, noised, edge], dim=1)
        return noised.transpose(0, 1)[..., None]

    def rope_rotations(
        self, frame_indice: torch.Tensor | None, batch: int, grid: tuple[int, int, int], device: torch.device
    ) -> torch.Tensor:
        """Unit complex rotations cos + i sin [N, B, 1, head_dim/2] of the 3D positions (h, w, t) of every token.

        frame_indice [B, T+2]: the time position of the start token, of each latent frame, and of
        the end token (default 0..T+1). Start sits at (0, 0, first), end at (H-1, W-1, last).
        """
        frames, height, width = grid
        if frame_indice is None:
            frame_indice = torch.arange(frames + 2).expand(batch, -1)
        frame_indice = frame_indice.to(device).long().clamp(0, self.dit_config.max_frame_index)
        if frame_indice.shape[0] != batch:
            frame_indice = frame_indice.repeat(batch // frame_indice.shape[0], 1)
        t_pos = frame_indice[:, 1:-1, None, None].expand(batch, frames, height, width)
        h_pos = torch.arange(height, device=device)[None, None, :, None].expand_as(t_pos)
        w_pos = torch.arange(width, device=device)[None, None, None, :].expand_as(t_pos)
        positions = torch.stack([h_pos, w_pos, t_pos], dim=-1).flatten(1, 3)  # [B, THW, 3]
        if self.dit_config.use_start_end_tokens:
            zeros = torch.zeros_like(frame_indice[:, 0])
            start = torch.stack([zeros, zeros, frame_indice[:, 0]], dim=-1)[:, None]
            end = torch.stack([zeros + height - 1, zeros + width - 1, frame_indice[:, -1]], dim=-1)[:, None]
            positions = torch.cat([start, positions, end], dim=1)
        # float32 always (a buffer would follow a bf16 cast of the model and lose the angles)
        frequencies = rope_frequencies(self.dit_config.head_dim, self.dit_config.rope_theta).to(device)
        angles = rope_angles(positions, frequencies).transpose(0, 1)[:, :, None]
        return torch.complex(angles.cos(), angles.sin())

    # ----------------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
        x_mask: torch.Tensor | None = None,
        fps: torch.Tensor | None = None,
        frame_indice: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict [B, out_channels, T, H, W] (float32) for latents x [B, C, T, H, W].

        timestep [B] in [0, 1000]; y [B, 1, L, D] text features, mask [B, L] its valid tokens;
        x_mask [B, T] True for noised latent frames, False for clean conditioning frames (I2V),
        None = all noised; fps [B] or [1] (default config.default_fps); frame_indice [B, T+2].
        """
        dtype = self.x_embedder.proj.weight.dtype
        batch = x.shape[0]
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        in_size = tuple(x.shape[2:])
        grid = self.dit_config.patch_grid(*in_size)

        t_emb, t0_emb = self.embed_timesteps(timestep, self.per_sample_fps(fps, batch, x.device))
        t_mod, t0_mod = self.t_block(t_emb), self.t_block(t0_emb)
        text, text_mask = self.embed_text(y, mask)
        hidden = self.add_start_end_tokens(self.x_embedder(x))  # [N, B, h]
        noised = self.token_noised_mask(x_mask, batch, grid)
        rope = self.rope_rotations(frame_indice, batch, grid, x.device)

        hidden, noised, rope = self.token_sharding.split_context(hidden, noised, rope)
        hidden = self.run_blocks(hidden, text, text_mask, t_mod, t0_mod, noised, rope)
        out = self.final_layer(hidden, t_emb, t0_emb, timestep_runs(noised, x.device))
        out = self.token_sharding.gather_context(out)
        return self.unpatchify(self.drop_start_end_tokens(out), grid, in_size).float()

    def per_sample_fps(self, fps: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """fps [B] from [B], [1] or None (config.default_fps)."""
        if fps is None:
            fps = torch.full((batch,), self.dit_config.default_fps, device=device)
        fps = fps.reshape(-1).to(device)
        return fps.repeat(batch // fps.shape[0]) if fps.shape[0] != batch else fps

    def add_start_end_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The learned start and end tokens around the video tokens [N, B, h] (when the config has them)."""
        if not self.dit_config.use_start_end_tokens:
            return hidden
        batch = hidden.shape[1]
        return torch.cat([self.start_token.expand(1, batch, -1), hidden, self.end_token.expand(1, batch, -1)], dim=0)

    def drop_start_end_tokens(self, out: torch.Tensor) -> torch.Tensor:
        return out[1:-1] if self.dit_config.use_start_end_tokens else out

    def run_blocks(
        self,
        hidden: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        t_mod: torch.Tensor,
        t0_mod: torch.Tensor,
        noised: torch.Tensor,
        rope: torch.Tensor,
    ) -> torch.Tensor:
        """The blocks over this rank's tokens; with recompute each block is re-run in the backward pass."""
        hidden, t_mod, t0_mod, noised = self.token_sharding.scatter_sequence(hidden, t_mod, t0_mod, noised)
        runs = timestep_runs(noised, hidden.device)
        recompute = self.training and self.config.recompute_granularity == "full" and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # torch's non-reentrant checkpoint: Megatron's own one reads CUDA RNG state
                hidden = checkpoint(block, hidden, text, text_mask, t_mod, t0_mod, runs, rope, use_reentrant=False)
            else:
                hidden = block(hidden, text, text_mask, t_mod, t0_mod, runs, rope)
        return self.token_sharding.gather_sequence(hidden)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int], in_size: tuple[int, ...]) -> torch.Tensor:
        """Sequence-first [N, B, pt*ph*pw*C] -> [B, C, T, H, W] (one copy), cropped to the input size."""
        (nt, nh, nw), (pt, ph, pw) = grid, self.dit_config.patch_size
        batch = tokens.shape[1]
        x = tokens.reshape(nt, nh, nw, batch, pt, ph, pw, -1)
        x = x.permute(3, 7, 0, 4, 1, 5, 2, 6).reshape(batch, -1, nt * pt, nh * ph, nw * pw)
        return x[:, :, : in_size[0], : in_size[1], : in_size[2]]

    # ----------------------------------------------------------------------- checkpointing

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        """Megatron dist-checkpoint view: TP-sharded parallel linears, everything else replicated."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        tp_group = parallel_state.get_tensor_model_parallel_group()
        own: dict = {}
        self._save_to_state_dict(own, "", keep_vars=True)
        sharded = make_sharded_tensors_for_checkpoint(
            own, prefix, {}, sharded_offsets, tp_group=tp_group, dp_cp_group=metadata["dp_cp_group"]
        )
        for name, child in self.named_children():
            if name == "blocks":  # a ModuleList has no sharded_state_dict: recurse into each block
                for index, block in enumerate(child):
                    sharded.update(block.sharded_state_dict(f"{prefix}blocks.{index}.", sharded_offsets, metadata))
            else:
                sharded.update(
                    sharded_state_dict_default(child, f"{prefix}{name}.", sharded_offsets, metadata, tp_group=tp_group)
                )
        return sharded


def build_model(
    config: DiTConfig, spec: ModuleSpec | None = None, *, sequence_parallel: bool = False, **kwargs
) -> MUGDiT:
    """MUGDiT laid out like the running Megatron parallel state (one process when none is running)."""
    return MUGDiT(config, spec, parallel=running_parallel_dims(sequence_parallel), **kwargs)


def tensor_parallel_dims(model: nn.Module) -> dict[str, int]:
    """State-dict key -> the dim tensor parallel splits it along (keys absent are replicated)."""
    from mugv.models.dit.spec import parallel_linear_types

    column, row = parallel_linear_types()
    dims = {}
    for name, module in model.named_modules():
        if isinstance(module, column):
            dims[f"{name}.weight"] = dims[f"{name}.bias"] = 0
        elif isinstance(module, row):
            dims[f"{name}.weight"] = 1
    return dims


def count_parameters(preset: str | DiTConfig) -> int:
    """Total (unsharded) parameters of a preset, counted on the meta device: no memory, no init, no process group."""
    from mugv.models.dit.config import get_preset

    config = get_preset(preset) if isinstance(preset, str) else preset
    parallel = running_parallel_dims()
    with torch.device("meta"):
        model = MUGDiT(config, local_block_spec(), parallel=parallel, perform_initialization=False)
    sharded = tensor_parallel_dims(model)
    return sum(p.numel() * (parallel.tp if name in sharded else 1) for name, p in model.named_parameters())
