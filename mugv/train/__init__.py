"""Training: parallel state, trainer, checkpointing, curriculum, EMA, FLOPs/MFU."""
