"""The MUG-V video VAE: 2D spatial autoencoder followed by a causal temporal autoencoder."""

from mugv.models.vae.config import VAEConfig, get_vae_preset

__all__ = ["VAEConfig", "VideoVAE", "frames_for_latents", "get_vae_preset", "latent_frames", "load_vae", "save_vae"]
_MODEL_NAMES = {"VideoVAE", "frames_for_latents", "latent_frames", "load_vae", "save_vae"}


def __getattr__(name: str):
    """The model's names load torch on first use: the config alone stays importable without it."""
    if name in _MODEL_NAMES:
        from mugv.models.vae import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
