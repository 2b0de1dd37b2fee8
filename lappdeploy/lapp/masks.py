"""Hard channel masks from per-group learnable thresholds, with a straight-through gradient
(LAPP.md sections 2 and 3).

Per prunable group g: normalised scores s~ = s / mean(s) (mean detached, so one threshold scale fits
every group), hard mask m = 1[s~ > t_g] in the forward pass, and in the backward pass the surrogate
dm/dt = -sigmoid'((s~ - t)/tau)/tau, dm/ds~ = +sigmoid'((s~ - t)/tau)/tau. Each group keeps at least
`min_keep[g]` channels (its best-scored ones), so no layer is ever emptied.

Grouped convolutions (ResNeXt, RegNet) must keep the same positions in each of their blocks: their
scores are averaged over the blocks first, so every block gets the same mask.
"""

from __future__ import annotations

import math

import torch

from lappdeploy.surgery.graph import ChannelGroups

__all__ = ["ThresholdMask"]

_MEAN_FLOOR = 1e-12  # guards the normalisation of an all-zero group (dead BN gammas)


class ThresholdMask:
    """Maps (scores over the global channel vector, one threshold per prunable group) to a kept mask."""

    def __init__(self, groups: ChannelGroups, *, tau: float, min_channels: int = 1, round_to: int = 1) -> None:
        self.groups = groups
        self.tau = tau
        self.prunable = groups.prunable
        self.ids = [g.id for g in self.prunable]
        owner, unit, sizes = [], [], []
        units = 0
        self.min_keep: list[int] = []  # channels each group keeps at least
        for index, g in enumerate(self.prunable):
            owner += [index] * g.channels
            # channel c of a grouped-conv group is decided by its position c % segment_size
            unit += [units + c % g.segment_size for c in range(g.channels)]
            sizes += [g.segments] * g.segment_size
            units += g.segment_size
            step = math.lcm(round_to, g.segments)
            self.min_keep.append(min(g.channels, max(min_channels, step)))
        self._owner = torch.tensor(owner, dtype=torch.long)
        self._unit = torch.tensor(unit, dtype=torch.long)
        self._unit_size = torch.tensor(sizes, dtype=torch.float32)
        self._group_size = torch.tensor([g.channels for g in self.prunable], dtype=torch.float32)
        self._units = units
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in (self._owner, self._unit, self._unit_size, self._group_size))
        return self._on[device]

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """s~ = s / mean_g(s) per group (mean detached), averaged over grouped-conv blocks."""
        owner, unit, unit_size, group_size = self._tensors(scores.device)
        scores = scores.float()
        per_unit = scores.new_zeros(self._units).index_add(0, unit, scores) / unit_size
        scores = per_unit[unit]
        mean = scores.detach().new_zeros(len(self.prunable)).index_add(0, owner, scores.detach()) / group_size
        return scores / mean.clamp(min=_MEAN_FLOOR)[owner]

    def _forced(self, normalised: torch.Tensor) -> torch.Tensor:
        """0/1 mask of each group's `min_keep` best-scored channels (whole positions of grouped convs)."""
        forced = torch.zeros_like(normalised, dtype=torch.bool)
        values = normalised.detach()
        for g, keep in zip(self.prunable, self.min_keep, strict=True):
            block = values[g.offset : g.offset + g.segment_size]  # the first block holds every position's score
            best = torch.topk(block, keep // g.segments).indices
            for s in range(g.segments):
                forced[g.offset + s * g.segment_size + best] = True
        return forced

    def __call__(self, normalised: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """Kept mask over the global vector: exactly 0/1 in value, with the straight-through gradient."""
        owner = self._tensors(normalised.device)[0]
        z = (normalised - thresholds[owner]) / self.tau
        soft = torch.sigmoid(z)
        hard = ((z > 0) | self._forced(normalised)).to(soft.dtype)
        return hard + (soft - soft.detach())

    def hard(self, normalised: torch.Tensor, thresholds: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        """The 0/1 mask (no gradient) for thresholds raised by a common `offset`."""
        with torch.no_grad():
            owner = self._tensors(normalised.device)[0]
            kept = (normalised > thresholds[owner] + offset) | self._forced(normalised)
            return kept.to(torch.float32)
