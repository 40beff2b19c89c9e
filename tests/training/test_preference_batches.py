"""The preference stream: seeded epochs without repeats, DP ranks split a step, state resumes the stream."""

import numpy as np
import pytest

from mugv.training.preference_trainer import PreferenceBatches


def test_an_epoch_visits_each_item_once_and_is_seeded():
    stream = PreferenceBatches(items=12, batch=4, seed=3)
    epoch = np.concatenate([stream.next_step() for _ in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))
    again = PreferenceBatches(items=12, batch=4, seed=3)
    assert np.concatenate([again.next_step() for _ in range(3)]).tolist() == epoch.tolist()
    other = PreferenceBatches(items=12, batch=4, seed=4)
    assert np.concatenate([other.next_step() for _ in range(3)]).tolist() != epoch.tolist()


def test_data_parallel_ranks_split_each_step():
    whole = PreferenceBatches(items=10, batch=4, seed=0)
    ranks = [PreferenceBatches(items=10, batch=4, seed=0, dp_rank=r, dp_size=2) for r in range(2)]
    for _ in range(5):
        assert np.concatenate([r.next_step() for r in ranks]).tolist() == whole.next_step().tolist()


def test_state_resumes_the_stream_and_refuses_another_set():
    stream = PreferenceBatches(items=9, batch=3, seed=1)
    for _ in range(4):
        stream.next_step()
    resumed = PreferenceBatches(items=9, batch=3, seed=1)
    resumed.load_state_dict(stream.state_dict())
    assert resumed.next_step().tolist() == stream.next_step().tolist()
    with pytest.raises(ValueError, match="differs"):
        PreferenceBatches(items=8, batch=3, seed=1).load_state_dict(stream.state_dict())
    with pytest.raises(ValueError, match="fewer than one step"):
        PreferenceBatches(items=2, batch=3, seed=1)
