"""Memory planner: token counts, parameter split, monotone estimates, recommendations that fit."""

import pytest

from mugv.planning.memory import GPUS_GIB, Layout, estimate, parameter_split, recommend, sequence_tokens, table


def test_tokens_of_a_5s_720p_clip_match_the_paper():
    assert sequence_tokens(720, 1280) == 14 * 45 * 80 + 2


def test_parameter_split_of_the_1b_preset():
    split, replicated = parameter_split("1B")
    assert split + replicated == pytest.approx(16 * 1152**2 * 56, rel=0.1)
    assert split > 10 * replicated  # the blocks dominate


def test_estimates_fall_with_parallelism_recompute_and_sharded_optimizer():
    tokens = sequence_tokens(480, 848)
    base = estimate("4B", tokens, Layout())
    assert estimate("4B", tokens, Layout(tp=4)).total_gib < base.total_gib
    assert estimate("4B", tokens, Layout(cp=2)).activations_gib == pytest.approx(base.activations_gib / 2, rel=0.05)
    assert estimate("4B", tokens, Layout(recompute=True)).activations_gib < base.activations_gib / 10
    assert estimate("4B", tokens, Layout(tp=4, sequence_parallel=False)).activations_gib > \
        estimate("4B", tokens, Layout(tp=4)).activations_gib
    assert estimate("4B", tokens, Layout(distributed_optimizer=False)).optimizer_gib == \
        pytest.approx(base.optimizer_gib * 64)


def test_recommendations_fit_and_nothing_fits_a_tiny_gpu():
    assert recommend("10B", sequence_tokens(720, 1280), gpu_gib=8.0) is None
    for row in table(presets=("1B",)):
        assert row["total_gib"] is not None and row["total_gib"] <= 0.9 * GPUS_GIB[row["gpu"]]
