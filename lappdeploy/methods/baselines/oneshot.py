"""The one-shot baselines: train dense for `prune_epochs`, then remove one plan that meets the MACs target.

`uniform` keeps the same fraction of every group (the criterion picks the channels); `global` ranks all
channels of all groups together by the criterion (default torch-pruning's group L2 importance),
mean-normalised per group as torch-pruning's global pruning does, and drops the lowest up to the MACs
target. Both round widths and meet the budget with the same guarantee as LAPP's freeze. The hook and the
uniform planner are shared with other one-shot methods (`methods.oneshot`).
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.baselines import GlobalConfig, UniformConfig
from lappdeploy.methods.common import GroupThresholds, plan_within_budget, prepare_groups_
from lappdeploy.methods.oneshot import OneShotPruning, Planner, uniform_budget_plan
from lappdeploy.surgery import CRITERIA, ChannelGroups, ChannelPlan
from lappdeploy.surgery.plan import PlanMeasure, RoundTo

__all__ = ["OneShotPruning", "global_plan", "prepare_global_", "prepare_uniform_", "uniform_budget_plan"]


def global_plan(
    groups: ChannelGroups,
    config: PruneConfig,
    limit: float,
    scores: torch.Tensor,
    measure: PlanMeasure | None = None,
    round_to: RoundTo | None = None,
) -> ChannelPlan:
    round_to = config.round_to if round_to is None else round_to
    thresholds = GroupThresholds(groups, min_channels=config.min_channels, round_to=round_to)
    normalised = thresholds.normalise(scores)  # torch-pruning's "mean" normaliser
    common_cut = torch.zeros(len(thresholds.ids))
    plan, _ = plan_within_budget(groups, thresholds, normalised, common_cut, limit, round_to=round_to, measure=measure)
    for gp in plan.groups.values():
        gp.threshold = None  # one global cut, not a learned per-group threshold
    return plan


def _prepare(model, example_inputs, config: PruneConfig, planner: Planner, name: str) -> OneShotPruning:
    CRITERIA.get(config.criterion)  # an unknown criterion stops here, before anything is written
    return OneShotPruning(model, prepare_groups_(model, example_inputs, config), config, planner, name)


def prepare_uniform_(model: nn.Module, example_inputs: torch.Tensor, config: UniformConfig) -> OneShotPruning:
    return _prepare(model, example_inputs, config, uniform_budget_plan, "uniform")


def prepare_global_(model: nn.Module, example_inputs: torch.Tensor, config: GlobalConfig) -> OneShotPruning:
    return _prepare(model, example_inputs, config, global_plan, "global")
