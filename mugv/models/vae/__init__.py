"""The MUG-V video VAE: 2D spatial autoencoder followed by a causal temporal autoencoder."""

from mugv.models.vae.config import VAEConfig, get_vae_preset
from mugv.models.vae.model import VideoVAE, frames_for_latents, latent_frames, load_vae, save_vae

__all__ = ["VAEConfig", "VideoVAE", "frames_for_latents", "get_vae_preset", "latent_frames", "load_vae", "save_vae"]
