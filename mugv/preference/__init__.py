"""Preference data for DPO and KTO: the on-disk set (table), reward-labelled samples, imported human labels."""
