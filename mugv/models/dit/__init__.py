"""MUGDiT: the MUG-V diffusion transformer built from Megatron-Core modules."""
