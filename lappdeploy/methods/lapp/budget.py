"""LAPP's progressive MACs budget (docs/lapp.md#objective-and-budget-schedule)."""

from __future__ import annotations

__all__ = ["cubic_budget"]


def cubic_budget(epoch: float, prune_epochs: float, dense_macs: float, target_macs: float) -> float:
    """Budget in MACs per sample after `epoch` (fractional) epochs: anneals from `dense_macs` at 0 to
    `target_macs` at `prune_epochs`, cubically (fast at first, when the network is most redundant, then
    gently), and stays at the target afterwards:  F_T(e) = F_* + (F_0 - F_*) * (1 - e/P)^3."""
    progress = min(max(epoch / prune_epochs, 0.0), 1.0)
    return target_macs + (dense_macs - target_macs) * (1.0 - progress) ** 3
