"""The one-shot baselines: train dense for `prune_epochs`, then remove one plan that meets the budget.

`uniform` keeps the same fraction of every group (the criterion picks the channels); `global` ranks all
channels of all groups together by the criterion (default torch-pruning's group L2 importance),
mean-normalised per group as torch-pruning's global pruning does, and drops the lowest down to the budget.
Both round widths and meet the budget with the same guarantee as LAPP's freeze. The hook and the uniform
planner are shared with other one-shot methods (`methods.oneshot`).
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.baselines import GlobalConfig, UniformConfig
from lappdeploy.methods.budgets import Budget
from lappdeploy.methods.common import GroupThresholds, plan_within_budget
from lappdeploy.methods.oneshot import OneShotPruning, Planner, uniform_budget_plan
from lappdeploy.methods.prepare import prepare_pruning_
from lappdeploy.surgery import CRITERIA, ChannelGroups, ChannelPlan

__all__ = ["OneShotPruning", "global_plan", "prepare_global_", "prepare_uniform_", "uniform_budget_plan"]


def global_plan(
    groups: ChannelGroups, config: PruneConfig, budget: Budget, limit: float, scores: torch.Tensor
) -> ChannelPlan:
    """Every channel ranked by its group-mean-normalised score; the lowest dropped, by one common cut, until the
    plan costs at most `limit` (in the budget's unit), rounded and landed as LAPP's freeze lands."""
    thresholds = GroupThresholds(groups, min_channels=config.min_channels, round_to=budget.round_to)
    normalised = thresholds.normalise(scores)  # torch-pruning's "mean" normaliser
    common_cut = torch.zeros(len(thresholds.ids))
    plan, _ = plan_within_budget(groups, thresholds, normalised, common_cut, limit, budget=budget)
    for gp in plan.groups.values():
        gp.threshold = None  # one global cut, not a learned per-group threshold
    return plan


def _prepare(model, example_inputs, config: PruneConfig, planner: Planner, name: str) -> OneShotPruning:
    CRITERIA.get(config.criterion)  # an unknown criterion stops here, before anything is written
    groups, budget = prepare_pruning_(model, example_inputs, config)
    return OneShotPruning(model, groups, config, budget, planner, name)


def prepare_uniform_(model: nn.Module, example_inputs: torch.Tensor, config: UniformConfig) -> OneShotPruning:
    return _prepare(model, example_inputs, config, uniform_budget_plan, "uniform")


def prepare_global_(model: nn.Module, example_inputs: torch.Tensor, config: GlobalConfig) -> OneShotPruning:
    return _prepare(model, example_inputs, config, global_plan, "global")
