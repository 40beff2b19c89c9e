"""The MUG-V video VAE: 2D spatial autoencoder followed by a causal temporal autoencoder."""
