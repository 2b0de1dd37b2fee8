"""The one-shot baselines: train dense for `prune_epochs`, then remove one plan that meets the MACs target.

`uniform` keeps the same fraction of every group (L2 magnitude picks the channels); `global` ranks all
channels of all groups together by torch-pruning's group L2 importance (mean-normalised per group, as
torch-pruning's global pruning does) and drops the lowest up to the MACs target. Both round widths and
meet the budget with the same guarantee as LAPP's freeze.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.baselines import GlobalConfig, UniformConfig
from lappdeploy.methods.common import GroupThresholds, PruningHookBase, log_to, plan_within_budget, prepare_groups_
from lappdeploy.surgery import (
    ChannelGroups,
    ChannelPlan,
    SurgeryError,
    channel_scores,
    plan_cost,
    round_plan,
    uniform_plan,
)
from lappdeploy.surgery.graph import resolve_module

__all__ = ["OneShotPruning", "global_plan", "prepare_global_", "prepare_uniform_", "uniform_budget_plan"]

log = logging.getLogger(__name__)

Planner = Callable[[ChannelGroups, PruneConfig, float], ChannelPlan]  # (groups, config, MACs limit) -> plan


def uniform_budget_plan(groups: ChannelGroups, config: PruneConfig, limit: float) -> ChannelPlan:
    scores = channel_scores(groups, "l2").detach()
    plan = uniform_plan(groups, config.target_macs, scores=scores)
    if config.round_to > 1:
        plan = round_plan(plan, groups, config.round_to, scores=scores, budget=limit)
    return plan


def torch_pruning_importance(groups: ChannelGroups) -> torch.Tensor:
    """torch-pruning's GroupMagnitudeImportance (L2 over every coupled layer) of each global channel."""
    import torch_pruning as tp

    importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    scores = torch.zeros(groups.global_channels)
    model, graph = groups.model, groups.graph
    for g in groups.prunable:
        root = resolve_module(model, g.id)
        pruner = graph.get_pruner_of_module(root)
        tp_group = graph.get_pruning_group(root, pruner.prune_out_channels, list(range(g.channels)))
        with torch.no_grad():
            scores[g.offset : g.offset + g.channels] = importance(tp_group).detach().float().cpu()
    return scores


def global_plan(groups: ChannelGroups, config: PruneConfig, limit: float) -> ChannelPlan:
    thresholds = GroupThresholds(groups, min_channels=config.min_channels, round_to=config.round_to)
    normalised = thresholds.normalise(torch_pruning_importance(groups))  # torch-pruning's "mean" normaliser
    common_cut = torch.zeros(len(thresholds.ids))
    plan, _ = plan_within_budget(groups, thresholds, normalised, common_cut, limit, round_to=config.round_to)
    for gp in plan.groups.values():
        gp.threshold = None  # one global cut, not a learned per-group threshold
    return plan


class OneShotPruning(PruningHookBase):
    """Removes `planner`'s channels once, after `config.prune_epochs` epochs of dense training."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: PruneConfig, planner: Planner, name: str):
        super().__init__(model, groups, config)
        self.planner, self.method = planner, name

    def on_step_end(self, loop, loss: torch.Tensor) -> None:
        if self.frozen or loop.state.step < self.phase_steps(loop):
            return
        plan = self.planner(self.groups, self.config, self.budget_limit())
        cost = plan_cost(self.groups, plan)
        if cost.macs > self.budget_limit():
            raise SurgeryError(
                f"{self.method}: the rounded plan needs {cost.macs / self.dense.macs:.3f} of the dense MACs, "
                f"above the target {self.config.target_macs}; lower --round-to or raise --target-macs"
            )
        self.apply_(loop, plan)
        log_to(loop, {"type": "prune", "step": loop.state.step, "macs": cost.macs / self.dense.macs})


def prepare_uniform_(model: nn.Module, example_inputs: torch.Tensor, config: UniformConfig) -> OneShotPruning:
    return OneShotPruning(model, prepare_groups_(model, example_inputs, config), config, uniform_budget_plan, "uniform")


def prepare_global_(model: nn.Module, example_inputs: torch.Tensor, config: GlobalConfig) -> OneShotPruning:
    return OneShotPruning(model, prepare_groups_(model, example_inputs, config), config, global_plan, "global")
