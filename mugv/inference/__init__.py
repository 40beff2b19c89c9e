"""Inference: release folders and video generation from a trained DiT."""
