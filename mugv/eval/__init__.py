"""Evaluation: metrics and rewards."""
