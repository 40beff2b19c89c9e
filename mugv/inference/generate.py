"""Sample a video from a pretraining checkpoint: text encoder -> rectified-flow Euler sampler with CFG -> VAE -> H.264."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mugv.latents.shards import STATS, TEXT_NULL, LatentStats, load_text_null
from mugv.data.video_io import write_video
from mugv.diffusion.sampler import sample
from mugv.diffusion.schedule import shift_ratio_for_latent
from mugv.models.text.model import HFTextEncoder, TextEncoderConfig, load_text_encoder
from mugv.models.vae import latent_frames, load_vae
from mugv.inference.release import is_release, load_release


def prompt_truncation_warning(encoder: HFTextEncoder, prompt: str) -> str | None:
    """One warning line when `prompt` has more tokens than the text encoder keeps, else None."""
    tokens = encoder.token_count(prompt)
    if tokens <= encoder.max_length:
        return None
    return (f"warning: the prompt has {tokens} tokens; the text encoder ({encoder.name}) keeps the first "
            f"{encoder.max_length}, the rest is ignored")


@dataclass(frozen=True)
class Sampled:
    """One sample of the DiT: its latent and the text inputs it was conditioned on, as a training batch holds them."""

    z: torch.Tensor  # [C, t, h, w] float32, the DiT's standardised latent space
    y: torch.Tensor  # [1, L, D] float32 text features, zero beyond the prompt's tokens
    mask: torch.Tensor  # [L] int64


class VideoGenerator:
    """Everything sampling needs, loaded once: DiT, VAE decoder, latent stats, CFG features, text encoder, time shift.

    `checkpoint` is a release folder (`mugv.inference.release`: everything inside), a pretraining
    checkpoint or a DiT folder `mugv convert` wrote (`--to mugv` or `--to megatron`); the last two need
    `vae` and `latents_dir`: the data set the model was trained on, whose per-channel latent stats undo
    the normalisation and whose stored negative-prompt features are the unconditional branch of CFG.
    """

    def __init__(self, checkpoint: Path, *, vae: Path | None = None, latents_dir: Path | None = None,
                 text: TextEncoderConfig | None = None, use_ema: bool = True) -> None:
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        self.time_shift = None
        if is_release(checkpoint):
            release = load_release(checkpoint)
            self.model, vae, self.stats, stored = release.dit, release.vae_dir, release.stats, release.text_null
            text, self.time_shift = release.text, release.time_shift
        else:
            if vae is None or latents_dir is None:
                raise ValueError("a training checkpoint or converted DiT folder needs `vae` and `latents_dir` "
                                 "(a release folder has them)")
            from mugv.inference.dit_loader import load_dit  # Megatron: only for checkpoints that are not releases

            self.model = load_dit(checkpoint, use_ema)
            self.stats = LatentStats.load(Path(latents_dir) / STATS)
            stored = load_text_null(Path(latents_dir) / TEXT_NULL)
        self.decoder = load_vae(vae).eval()
        self.encoder = load_text_encoder(text or TextEncoderConfig())
        self.uncond = {"y": stored["negative.text"].float()[None, None], "mask": stored["negative.text_mask"][None]}

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The text encoder's features [1, L, D] (float32, zero beyond the prompt) and mask [L] (int64) of `prompt`,
        as the DiT is conditioned on them (and as the data set stores a caption); a warning line when it is cut."""
        warning = prompt_truncation_warning(self.encoder, prompt)
        if warning:
            print(warning, file=sys.stderr)
        features, mask = self.encoder.encode([prompt])
        if features.shape[1] != self.uncond["y"].shape[2]:
            raise ValueError(f"text encoder gives {features.shape[1]} tokens, the data set's {self.uncond['y'].shape[2]}")
        return features.float(), mask[0]

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames [3, T, H, W] in [-1, 1] (the VAE's input, as `mugv.data.encode.load_pixels` gives them) -> the
        VAE's posterior mean in the DiT's standardised latent space [C, t, h, w]."""
        return self.stats.normalize(self.decoder.encode(pixels[None].float()))[0]

    @torch.no_grad()
    def sample_latents(self, prompt: str, *, frames: int = 17, height: int = 96, width: int = 128, steps: int = 25,
                       cfg: float = 4.0, seed: int = 0, fps: float = 12.0, image: np.ndarray | None = None) -> Sampled:
        """The DiT's sample for `prompt` in its standardised latent space, with the text inputs it was conditioned on.

        `image` ([H, W, 3] uint8, the output size) turns it into image-to-video: the first latent frame
        is the encoded image (repeated over one latent's worth of frames), kept clean through sampling.
        """
        return self.sample_seeds(prompt, [seed], frames=frames, height=height, width=width, steps=steps, cfg=cfg,
                                 fps=fps, image=image)[0]

    @torch.no_grad()
    def sample_seeds(self, prompt: str, seeds: list[int], *, frames: int = 17, height: int = 96, width: int = 128,
                     steps: int = 25, cfg: float = 4.0, fps: float = 12.0,
                     image: np.ndarray | None = None) -> list[Sampled]:
        """`sample_latents` of `prompt` for each seed, sampled as one batch: each sample starts from the noise its
        seed draws alone, so a seed gives the same video in any batch (up to the batched matmuls' rounding)."""
        features, mask = self.encode_prompt(prompt)
        batch = len(seeds)
        cond = {"y": features[:, None].expand(batch, -1, -1, -1), "mask": mask[None].expand(batch, -1)}
        uncond = {key: value.expand(batch, *value.shape[1:]) for key, value in self.uncond.items()}
        decoder, stats = self.decoder, self.stats
        spatial = decoder.cfg.spatial_factor
        one = (1, len(stats.std), latent_frames(frames), height // spatial, width // spatial)
        shape = (batch, *one[1:])
        conditioning = noised = None
        if image is not None:
            pixels = torch.from_numpy(image).float().permute(2, 0, 1) / 127.5 - 1.0
            clip = pixels[None, :, None].expand(1, 3, decoder.cfg.temporal_factor, height, width)
            first = stats.normalize(decoder.encode(clip))
            conditioning = torch.zeros(shape)
            conditioning[:, :, :1] = first
            noised = torch.ones(batch, shape[2], dtype=torch.bool)
            noised[:, 0] = False
        noise = torch.cat([torch.randn(one, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
        shift = None  # the schedule's default: MUG-V's resolution shift
        if self.time_shift is not None:
            base = self.time_shift["base_pixels"]
            shift = shift_ratio_for_latent(*shape[2:], spatial, base) if self.time_shift["resolution"] else 1.0
        z = sample(self.model, shape, cond, uncond, steps=steps, cfg_scale=cfg, noise=noise, shift=shift,
                   model_kwargs={"fps": torch.full((batch,), float(fps))}, conditioning_latents=conditioning,
                   noised_frames=noised)
        return [Sampled(z=z[i], y=features, mask=mask) for i in range(batch)]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, frames: int) -> np.ndarray:
        """A standardised latent [C, t, h, w] -> `frames` RGB frames [T, H, W, 3] uint8."""
        video = self.decoder.decode(self.stats.denormalize(z[None]), num_frames=frames)[0]
        return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()

    def render(self, prompt: str, out: Path, *, image: np.ndarray | None = None, frames: int = 17, height: int = 96,
               width: int = 128, steps: int = 25, cfg: float = 4.0, seed: int = 0, fps: float = 12.0) -> Path:
        """Write an H.264 video for `prompt` to `out` and return it: `sample_latents`, then `decode`."""
        sampled = self.sample_latents(prompt, frames=frames, height=height, width=width, steps=steps, cfg=cfg,
                                      seed=seed, fps=fps, image=image)
        pixels = self.decode(sampled.z, frames)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_video(out, list(pixels), fps)
        return out


def generate(
    checkpoint: Path,
    prompt: str,
    out: Path,
    *,
    vae: Path | None = None,
    latents_dir: Path | None = None,
    text: TextEncoderConfig | None = None,
    image: np.ndarray | None = None,
    frames: int = 17,
    height: int = 96,
    width: int = 128,
    steps: int = 25,
    cfg: float = 4.0,
    seed: int = 0,
    fps: float = 12.0,
    use_ema: bool = True,
) -> Path:
    """Write an H.264 video for `prompt` to `out` and return it: one `VideoGenerator(...).render(...)`."""
    generator = VideoGenerator(checkpoint, vae=vae, latents_dir=latents_dir, text=text, use_ema=use_ema)
    return generator.render(prompt, out, image=image, frames=frames, height=height, width=width, steps=steps,
                            cfg=cfg, seed=seed, fps=fps)
