"""Learning-rate schedules as pure functions of the global step (so resuming needs no scheduler state)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    steps_per_epoch: int
    epochs: int
    kind: str = "cosine"  # "cosine" (to 0 at the last step) or "step"
    milestones: tuple[int, ...] = ()  # epochs; for "step"
    gamma: float = 0.1
    warmup_epochs: float = 0.0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def __call__(self, step: int) -> float:
        warmup_steps = round(self.warmup_epochs * self.steps_per_epoch)
        if step < warmup_steps:
            return self.base_lr * (step + 1) / warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - warmup_steps)
            progress = min(1.0, (step - warmup_steps) / span)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        milestones = self.milestones or (self.epochs // 2, (3 * self.epochs) // 4)
        epoch = step / self.steps_per_epoch
        return self.base_lr * self.gamma ** bisect.bisect_right(sorted(milestones), epoch)
