"""Post-training: SFT, preference data, Flow-DPO, KTO, LoRA."""
