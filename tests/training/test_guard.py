"""StepGuard as the DiT trainer uses it: stop at the first non-finite step (the VAE's skip mode: test_vae_train)."""

from __future__ import annotations

import pytest

from mugv.training.guard import StepGuard, TrainingDiverged


def test_stop_mode_raises_on_the_first_non_finite_step_and_passes_finite_ones():
    guard = StepGuard(on_nan="stop", max_bad_steps=1)
    assert guard.finite_step(0, 1.5, 0.3)
    with pytest.raises(TrainingDiverged, match=r"step 7: non-finite gradient norm \(2.0\) \(1 bad step") as err:
        guard.finite_step(7, 2.0, float("inf"))
    assert "skipped" not in str(err.value)  # the update was applied already: nothing was skipped


def test_skip_mode_counts_and_its_state_round_trips():
    guard = StepGuard(on_nan="skip", max_bad_steps=3, hint="lower lr")
    assert not guard.finite_step(4, float("nan"), 1.0)
    restored = StepGuard(on_nan="skip", max_bad_steps=3)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped == 1 and restored.events == ["step 4: non-finite loss (nan); update skipped"]
    with pytest.raises(TrainingDiverged, match="lower lr"):
        for step in (5, 6):
            guard.finite_step(step, float("nan"), 1.0)
