"""Rectified flow: noising, timestep sampling and shift, loss, sampler."""
