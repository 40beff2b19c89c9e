"""Training parts shared by the DiT and VAE trainers: distributed init, LR, checkpoint, EMA, metrics, optimizers."""
