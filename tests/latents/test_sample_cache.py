"""The latent data set's in-memory sample cache: same samples as reading the shards, each entry read once, bounded."""

from unittest import mock

import torch

from mugv.latents.shards import LatentDataset
from tests.support.latent_set import make_latent_set


def test_cached_samples_equal_shard_reads_and_are_read_once(tmp_path):
    root = make_latent_set(tmp_path / "latents")
    plain, cached = LatentDataset(root), LatentDataset(root, cache_mb=64)
    with mock.patch.object(LatentDataset, "_read", autospec=True, side_effect=LatentDataset._read) as reads:
        for _ in range(3):  # three epochs
            for i in range(len(cached)):
                got, want = cached[i], plain._read(i)
                assert got.keys() == want.keys()
                for key, value in want.items():
                    assert torch.equal(got[key], value) if isinstance(value, torch.Tensor) else got[key] == value
    cached_reads = [c for c in reads.call_args_list if c.args[0] is cached]
    assert len(cached_reads) == len(cached)  # epochs 2 and 3 come from memory


def test_returned_dict_is_fresh_and_cache_is_bounded(tmp_path):
    root = make_latent_set(tmp_path / "latents")
    one = LatentDataset(root)[0]
    sample_bytes = sum(v.numel() * v.element_size() for v in one.values() if isinstance(v, torch.Tensor))
    ds = LatentDataset(root, cache_mb=3 * sample_bytes / 2**20)  # room for about three samples
    first = ds[0]
    first["added_by_caller"] = 1
    assert "added_by_caller" not in ds[0]
    for i in range(len(ds)):
        ds[i]
    assert ds._cache.currsize <= ds._cache.maxsize and 1 <= len(ds._cache) <= 3
