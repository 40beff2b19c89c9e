"""Which samples of a latent data set are held out of DiT training: a seeded hash of their ids."""

from __future__ import annotations

import hashlib


def seed_of(*parts: object) -> int:
    """A 63-bit seed from any parts (e.g. run seed, micro-batch number, sample id)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def heldout_sample_ids(sample_ids: list[str], count: int, seed: int) -> list[str]:
    """`count` samples chosen by a seeded hash of their ids: stable as the data set grows."""
    return sorted(sample_ids, key=lambda sid: seed_of(seed, "heldout", sid))[:count]
