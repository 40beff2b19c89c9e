"""The NaN guard of both trainers: non-finite loss or gradient norm skips the update or stops; collapse is watched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

COLLAPSE_STD = 1e-3  # a reconstruction flatter than this, of an input that is not, has collapsed


class TrainingDiverged(RuntimeError):
    """Training hit non-finite values or a collapsed model too often to go on."""


@dataclass
class StepGuard:
    """Counts bad steps. Non-finite loss/gradients: skip the update (or stop); collapse: warn, then stop if it lasts.

    `on_nan="skip"` is for trainers that check before the update (the VAE); a trainer whose
    optimizer has already applied the gradients when the norm is known (the DiT) uses "stop".
    """

    on_nan: Literal["skip", "stop"]
    max_bad_steps: int
    hint: str = ""  # appended to the error: what to try
    skipped: int = 0
    consecutive: int = 0
    collapsed: int = 0
    events: list[str] = field(default_factory=list)

    def _bad(self, step: int, message: str) -> None:
        self.events.append(f"step {step}: {message}")
        self.consecutive += 1
        if self.on_nan == "stop" or self.consecutive >= self.max_bad_steps:
            raise TrainingDiverged(
                f"step {step}: {message} ({self.consecutive} bad step(s) in a row, on_nan={self.on_nan})"
                + (f"; {self.hint}" if self.hint else "")
            )

    def finite_step(self, step: int, loss: torch.Tensor | float, grad_norm: torch.Tensor | float) -> bool:
        """True when loss and gradient norm are finite; else count the step, and raise if it is one too many."""
        loss, grad_norm = torch.as_tensor(loss), torch.as_tensor(grad_norm)
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            return True
        what = "loss" if not torch.isfinite(loss) else "gradient norm"
        self.skipped += 1
        value = float(loss) if torch.isfinite(loss) else loss.item()
        self._bad(step, f"non-finite {what} ({value})" + ("; update skipped" if self.on_nan == "skip" else ""))
        return False

    def check_collapse(self, step: int, recon: torch.Tensor, target: torch.Tensor) -> None:
        """A finite update happened: reset the streak unless the reconstruction has gone flat."""
        recon_std, target_std = float(recon.detach().std()), float(target.std())
        if recon_std < COLLAPSE_STD < target_std:
            self.collapsed += 1
            self._bad(step, f"decoder collapsed: reconstruction std {recon_std:.2e} vs input std {target_std:.2e}")
        else:
            self.consecutive = 0

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "collapsed": self.collapsed, "events": self.events}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.collapsed, self.events = state["skipped"], state["collapsed"], state["events"]
