"""LAPP's hard channel masks with a straight-through gradient (docs/lapp.md#masks-and-the-straight-through-gradient).

Forward: m = 1[s~ > t_g] (the shared `GroupThresholds`, minimum widths included), so the MACs seen in
training are the deploy model's. Backward, a sigmoid surrogate of temperature tau:
dm/dt = -sigmoid'((s~ - t)/tau)/tau and dm/ds~ = +sigmoid'((s~ - t)/tau)/tau, except for channels kept
only by the group's minimum width, whose mask does not depend on t (gradient 0).
"""

from __future__ import annotations

import torch

from lappdeploy.methods.common import GroupThresholds
from lappdeploy.surgery import ChannelGroups
from lappdeploy.surgery.plan import RoundTo

__all__ = ["ThresholdMask"]


class ThresholdMask(GroupThresholds):
    """Maps (scores over the global channel vector, one threshold per prunable group) to a kept mask."""

    def __init__(self, groups: ChannelGroups, *, tau: float, min_channels: int = 1, round_to: RoundTo = 1) -> None:
        super().__init__(groups, min_channels=min_channels, round_to=round_to)
        self.tau = tau

    def __call__(self, normalised: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """Kept mask over the global vector: exactly 0/1 in value, with the straight-through gradient."""
        z = (normalised - thresholds[self.owner(normalised.device)]) / self.tau
        soft = torch.sigmoid(z)
        above = z > 0
        forced = self.forced(normalised) & ~above
        hard = (above | forced).to(soft.dtype)
        # A channel kept only by its group's minimum width stays kept whatever the threshold does: no
        # surrogate gradient, so a group at its minimum stops pushing its threshold up (and its scores).
        surrogate = torch.where(forced, torch.zeros_like(soft), soft - soft.detach())
        return hard + surrogate
