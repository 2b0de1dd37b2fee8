"""LDRF's plan and hook: one-shot removal of a trained model's channels, with uniform or capacity widths; the
refit of the layers that read them is the shared reconstruction step (`methods.reconstruct`)."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from lappdeploy.methods.budgets import Budget
from lappdeploy.methods.common import smallest_offset
from lappdeploy.methods.ldrf import LdrfConfig
from lappdeploy.methods.oneshot import OneShotPruning, land_plan, lowest_widths, uniform_budget_plan
from lappdeploy.methods.prepare import prepare_pruning_
from lappdeploy.methods.reconstruct import valid_capacity
from lappdeploy.surgery import CRITERIA, ChannelGroups, ChannelPlan, SurgeryError, plan_from_scores
from lappdeploy.surgery.plan import RoundTo, width_unit

__all__ = ["LdrfPruning", "capacity_plan", "prepare_ldrf_"]

log = logging.getLogger(__name__)


def _floors(
    groups: ChannelGroups, lowest: dict[str, int], round_to: RoundTo, capacity: dict[str, int]
) -> dict[str, int]:
    """Each group's capacity (at least its lowest width), raised to a whole width unit, at most its width."""
    floors = {}
    for g in groups.prunable:
        unit = width_unit(round_to, g)
        floors[g.id] = min(g.channels, math.ceil(max(capacity[g.id], lowest[g.id]) / unit) * unit)
    return floors


def capacity_plan(
    groups: ChannelGroups,
    config: LdrfConfig,
    budget: Budget,
    limit: float,
    scores: torch.Tensor,
    capacity: dict[str, int],
) -> ChannelPlan:
    """Every group keeps max(its capacity floor, ceil(f x its width)) channels for the largest common fraction f
    whose cost fits `limit` (in the budget's unit); when even the floors do not fit, every floor is scaled down
    by the largest common share that fits (the budget forces it). Channels by `scores`; then rounded and landed."""
    lowest = lowest_widths(groups, config, budget.round_to)
    floors = _floors(groups, lowest, budget.round_to, capacity)

    def counts(fraction: float, share: float) -> dict[str, int]:
        return {
            g.id: min(g.channels, max(lowest[g.id], math.ceil(fraction * g.channels), math.ceil(share * floors[g.id])))
            for g in groups.prunable
        }

    def fits(widths: dict[str, int]) -> bool:
        return budget.cost(plan_from_scores(groups, scores, widths), groups) <= limit

    share = 1.0
    if not fits(counts(0.0, 1.0)):
        if not fits(counts(0.0, 0.0)):
            raise SurgeryError(f"ldrf: even the lowest widths exceed {budget.flag}; raise the target")
        log.warning("ldrf: %s is below the groups' valid capacities; every capacity is scaled down", budget.flag)
        share = 1.0 - smallest_offset(lambda cut: fits(counts(0.0, 1.0 - cut)), 1.0)
    chosen = counts(1.0 - smallest_offset(lambda cut: fits(counts(1.0 - cut, share)), 1.0), share)
    # landing the rounded plan never trades a group below its (scaled) capacity
    plan = plan_from_scores(groups, scores, chosen)
    return land_plan(plan, groups, config, limit, scores, budget=budget, lowest=counts(0.0, share))


class LdrfPruning(OneShotPruning):
    """Removes the ldrf plan once (at the start for --prune-epochs 0); the shared reconstruction step refits
    the layers reading removed channels (--reconstruct, default ldrf-joint)."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: LdrfConfig, budget: Budget) -> None:
        super().__init__(model, groups, config, budget, self._plan, "ldrf")
        self.capacity: dict[str, int] | None = None  # per group, measured when the plan is made

    def _plan(
        self, groups: ChannelGroups, config: LdrfConfig, budget: Budget, limit: float, scores: torch.Tensor
    ) -> ChannelPlan:
        self.capacity = valid_capacity(groups, config.ldrf_energy)
        if config.ldrf_widths == "uniform":
            return uniform_budget_plan(groups, config, budget, limit, scores)
        return capacity_plan(groups, config, budget, limit, scores, self.capacity)

    def report_extra(self) -> dict[str, Any]:
        return {
            "criterion": self.config.criterion,
            "ldrf_widths": self.config.ldrf_widths,
            "ldrf_energy": self.config.ldrf_energy,
            "valid_capacity": self.capacity,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "capacity": self.capacity}

    def load_state_dict(self, state: dict[str, Any], loop) -> None:
        super().load_state_dict(state, loop)
        self.capacity = state.get("capacity")


def prepare_ldrf_(model: nn.Module, example_inputs: torch.Tensor, config: LdrfConfig) -> LdrfPruning:
    CRITERIA.get(config.criterion)  # an unknown criterion stops here, before anything is written
    groups, budget = prepare_pruning_(model, example_inputs, config)
    return LdrfPruning(model, groups, config, budget)
