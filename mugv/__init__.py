"""mugv: the open training pipeline for MUG-V-style video generators."""

from mugv.training.megatron_compat import silence_megatron_import_warnings

__version__ = "0.1.0"

# Before any submodule can import megatron (its import-time warnings are noise here).
silence_megatron_import_warnings()
