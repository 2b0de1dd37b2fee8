"""LAPP: layer-adaptive progressive pruning from scratch (docs/lapp.md), as hooks on any training loop.

This module holds the method's config and registration and imports no torch; the implementation
(`controller`, `masks`, `budget`) loads on first use of its names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lappdeploy.config import check_choices, option
from lappdeploy.errors import ConfigError
from lappdeploy.methods.base import PruneConfig, register_method
from lappdeploy.optional import lazy_exports

__all__ = ["LappConfig", "LappController", "ThresholdMask", "cubic_budget", "prepare_"]


@dataclass(frozen=True)
class LappConfig(PruneConfig):
    """LAPP's options. The defaults (tau 0.1, penalty 2, threshold learning rate 0.01) were measured on
    ResNet-20 / Fashion-MNIST (docs/lapp.md#objective-and-budget-schedule). LAPP can budget measured latency
    (--target-latency, docs/latency.md)."""

    supports_latency: ClassVar[bool] = True

    score: str = option("bn", "Channel importance: bn (|gamma|) or l2 (weight norm).", choices=("bn", "l2"))
    tau: float = option(0.1, "Temperature of the straight-through sigmoid surrogate.")
    penalty: float = option(2.0, "Weight lambda of the MACs penalty (log(MACs / budget))^2.")
    threshold_lr: float = option(0.01, "Adam learning rate of the per-group thresholds.")
    project: bool = option(
        False,
        "Hold the masked MACs at the annealed budget at every training step by shifting all thresholds by one "
        "common offset (exact tracking; the allocation then follows the task gradient alone).",
    )
    snap: float = option(
        0.1,
        "Share of the pruning phase at its end during which the masks are fixed to the final, rounded plan, so "
        "training sees the deployed widths before the channels are removed; 0 fixes them at the very end.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune_epochs < 1:
            raise ConfigError("prune_epochs must be >= 1: LAPP learns its thresholds while it trains (got 0)")
        for name in ("tau", "threshold_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.penalty < 0:
            raise ConfigError(f"penalty must be >= 0 (got {self.penalty})")
        if not 0 <= self.snap < 1:
            raise ConfigError(f"snap must be in [0, 1) (got {self.snap})")
        if self.reconstruct != "none":
            raise ConfigError(
                "--reconstruct does not apply to lapp: it trains with the channels it removes already masked, so "
                "their removal changes nothing the model computes; use a one-shot or iterative method (uniform, "
                "global, laasp, pcp, ldrf) or --reconstruct none"
            )
        check_choices(self)


register_method(
    "lapp",
    LappConfig,
    handler="lappdeploy.methods.lapp.controller:prepare_",
    summary="learned per-group thresholds under a progressive MACs budget, while training from scratch",
)

# implementation names, imported on first use (they import torch)
_LAZY = {
    "LappController": "lappdeploy.methods.lapp.controller",
    "prepare_": "lappdeploy.methods.lapp.controller",
    "ThresholdMask": "lappdeploy.methods.lapp.masks",
    "cubic_budget": "lappdeploy.methods.lapp.budget",
}


__getattr__ = lazy_exports(globals(), __name__, _LAZY)
