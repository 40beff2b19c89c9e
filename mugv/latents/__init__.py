"""The encode -> training contract: latent shards, their index and stats, and the training dataset."""
