"""mugv: the open training pipeline for MUG-V-style video generators."""

__version__ = "0.1.0"
