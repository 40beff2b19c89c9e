"""Models: the video VAE, MUGDiT and text encoders."""
