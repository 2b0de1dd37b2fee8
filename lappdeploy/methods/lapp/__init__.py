"""LAPP: layer-adaptive progressive pruning from scratch (docs/lapp.md), as hooks on any training loop.

This module holds the method's config and registration and imports no torch; the implementation
(`controller`, `masks`, `budget`) loads on first use of its names.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.config import option
from lappdeploy.errors import ConfigError
from lappdeploy.methods.base import PruneConfig, register_method
from lappdeploy.optional import lazy_exports

__all__ = ["LappConfig", "LappController", "ThresholdMask", "cubic_budget", "prepare_"]


@dataclass(frozen=True)
class LappConfig(PruneConfig):
    """LAPP's options. The defaults (tau 0.1, penalty 2, threshold learning rate 0.01) were measured on
    ResNet-20 / Fashion-MNIST (docs/lapp.md#objective-and-budget-schedule), with MACs as the budget; the
    penalty reads any budget's cost the same way (docs/budgets.md)."""

    score: str = option("bn", "Channel importance: bn (|gamma|) or l2 (weight norm).", choices=("bn", "l2"))
    tau: float = option(0.1, "Temperature of the straight-through sigmoid surrogate.")
    penalty: float = option(
        2.0, "Weight lambda of the budget penalty (log(cost / budget))^2, cost in the budget's unit."
    )
    threshold_lr: float = option(0.01, "Adam learning rate of the per-group thresholds.")
    project: bool = option(
        False,
        "Hold the masked cost at the annealed budget at every training step by shifting all thresholds by one "
        "common offset (exact tracking; the allocation then follows the task gradient alone).",
    )
    snap: float = option(
        0.1,
        "Share of the pruning phase at its end during which the masks are fixed to the final, rounded plan, so "
        "training sees the deployed widths before the channels are removed; 0 fixes them at the very end.",
    )

    def check_options(self) -> None:
        super().check_options()
        if self.prune_epochs < 1:
            raise ConfigError("prune_epochs must be >= 1: LAPP learns its thresholds while it trains (got 0)")
        for name in ("tau", "threshold_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.penalty < 0:
            raise ConfigError(f"penalty must be >= 0 (got {self.penalty})")
        if not 0 <= self.snap < 1:
            raise ConfigError(f"snap must be in [0, 1) (got {self.snap})")


register_method(
    "lapp",
    LappConfig,
    handler="lappdeploy.methods.lapp.controller:prepare_",
    summary="learned per-group thresholds under a progressive budget, while training from scratch",
)

# implementation names, imported on first use (they import torch)
_LAZY = {
    "LappController": "lappdeploy.methods.lapp.controller",
    "prepare_": "lappdeploy.methods.lapp.controller",
    "ThresholdMask": "lappdeploy.methods.lapp.masks",
    "cubic_budget": "lappdeploy.methods.lapp.budget",
}


__getattr__ = lazy_exports(globals(), __name__, _LAZY)
