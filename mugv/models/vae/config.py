"""Typed architecture config of the video VAE and its named presets (full MUG-V sizes, small CPU sizes)."""

from __future__ import annotations

from pydantic import Field, model_validator

from mugv.section import Section

TEMPORAL_LEVELS = 4  # three stride-2 temporal downsamples between four levels: 8x in time
SPATIAL_LEVELS = 4  # three stride-2 spatial downsamples between four levels: 8x8 in space


class VAEConfig(Section):
    """Sizes of the two stages. The defaults are the released MUG-V VAE (the `full` preset)."""

    # spatial stage: an SDXL-shaped 2D autoencoder cut at its mid block (no 4-channel bottleneck)
    spatial_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    spatial_layers_per_block: int = Field(2, ge=1)
    spatial_norm_groups: int = Field(32, ge=1)
    spatial_mid_attention: bool = True
    spatial_bottleneck_channels: int = Field(
        4, ge=1, description="width of SDXL's encoder conv_out / decoder conv_in, present in the layout but unused"
    )
    spatial_scaling_factor: float = Field(0.18215, gt=0, description="scale of the map handed to the temporal stage")
    spatial_micro_batch: int | None = Field(4, ge=1, description="frames per 2D encoder/decoder call; None = all")
    # temporal stage: MAGVIT-style causal 3D-conv autoencoder over 8-frame chunks
    temporal_filters: int = Field(128, ge=1)
    temporal_channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    temporal_res_blocks: int = Field(4, ge=1)
    temporal_norm_groups: int = Field(32, ge=1)
    latent_channels: int = Field(24, ge=1)
    temporal_shortcut: bool = Field(
        False,
        description="add parameter-free mean/repeat paths around the temporal encoder and decoder "
        "(DC-AE residual autoencoding); off in the released MUG-V VAE, whose weights assume none",
    )
    decode_chunk_latents: int = Field(6, ge=1, description="latents decoded together (48 frames, as MUG-V)")
    encode_chunk_batch: int = Field(16, ge=1, description="8-frame chunks encoded per temporal-encoder call")

    @model_validator(mode="after")
    def _check(self) -> "VAEConfig":
        if len(self.spatial_block_out_channels) != SPATIAL_LEVELS:
            raise ValueError(f"spatial_block_out_channels needs {SPATIAL_LEVELS} levels (8x8 spatial compression)")
        if len(self.temporal_channel_multipliers) != TEMPORAL_LEVELS:
            raise ValueError(f"temporal_channel_multipliers needs {TEMPORAL_LEVELS} levels (8x temporal compression)")
        for c in self.spatial_block_out_channels:
            if c % self.spatial_norm_groups:
                raise ValueError(f"spatial channels {c} not divisible by spatial_norm_groups {self.spatial_norm_groups}")
        for m in self.temporal_channel_multipliers:
            if (self.temporal_filters * m) % self.temporal_norm_groups:
                raise ValueError(
                    f"temporal width {self.temporal_filters * m} not divisible by "
                    f"temporal_norm_groups {self.temporal_norm_groups}"
                )
        return self

    @property
    def spatial_factor(self) -> int:
        """Downsampling of height and width (8 in MUG-V): one stride-2 step between levels."""
        return 2 ** (SPATIAL_LEVELS - 1)

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame (8 in MUG-V): one stride-2 step between levels."""
        return 2 ** (TEMPORAL_LEVELS - 1)

    @property
    def interface_channels(self) -> int:
        """Channels of the spatial map between the two stages (512 in MUG-V)."""
        return self.spatial_block_out_channels[-1]


PRESETS: dict[str, dict] = {
    "full": {},
    "small": dict(
        spatial_block_out_channels=(32, 64, 128, 128),
        spatial_layers_per_block=1,
        spatial_norm_groups=16,
        spatial_micro_batch=None,
        temporal_filters=32,
        temporal_res_blocks=2,
        temporal_norm_groups=16,
    ),
    "tiny": dict(
        # a 12-channel interface: 12 x 8 frames folds into the 24 latent channels as two 4-frame
        # means, so the temporal shortcut starts at 2x temporal resolution instead of a chunk mean
        spatial_block_out_channels=(16, 32, 32, 12),
        spatial_layers_per_block=1,
        spatial_norm_groups=4,
        spatial_mid_attention=False,
        spatial_micro_batch=None,
        temporal_filters=16,  # 1.7M parameters: 6x faster steps than 32 filters x 2 blocks (11.3M), same quality per CPU second
        temporal_channel_multipliers=(1, 2, 2, 4),
        temporal_res_blocks=1,
        temporal_norm_groups=8,
        temporal_shortcut=True,
    ),
}


def get_vae_preset(name: str) -> VAEConfig:
    """The VAEConfig of a named preset: `full` (MUG-V), `small`, `tiny` (CPU)."""
    if name not in PRESETS:
        raise ValueError(f"unknown VAE preset {name!r}; choose one of {sorted(PRESETS)}")
    return VAEConfig(**PRESETS[name])
