"""Capacity planning: FLOPs, memory per GPU and parallel layouts of a DiT preset."""
