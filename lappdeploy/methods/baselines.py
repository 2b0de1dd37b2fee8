"""Prune-then-finetune baselines on the same schedule as LAPP (equal epoch budget): train dense for the
pruning phase, prune once to the MACs target, train the compact model on.

`uniform` keeps the same fraction of every group (L2 magnitude picks the channels); `global` ranks all
channels of all groups together by torch-pruning's group L2 importance (mean-normalised per group, as
torch-pruning's global pruning does) and drops the lowest up to the MACs target. Both round widths and
meet the budget exactly like LAPP's freeze.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lappdeploy.config import CompressConfig
from lappdeploy.lapp.freeze import BUDGET_TOLERANCE, apply_plan_, log_to, plan_within_budget
from lappdeploy.lapp.masks import ThresholdMask
from lappdeploy.surgery.bypass import add_bypass_, has_bypass
from lappdeploy.surgery.cost import plan_cost
from lappdeploy.surgery.graph import ChannelGroups, SurgeryError, analyze, resolve_module
from lappdeploy.surgery.plan import ChannelPlan, channel_scores, round_plan, uniform_plan
from lappdeploy.train.hooks import Hook

__all__ = ["OneShotPruning", "global_plan", "prepare_global_", "prepare_uniform_", "uniform_budget_plan"]

log = logging.getLogger(__name__)

Planner = Callable[[ChannelGroups, CompressConfig, float], ChannelPlan]  # (groups, config, MACs limit) -> plan


def uniform_budget_plan(groups: ChannelGroups, config: CompressConfig, limit: float) -> ChannelPlan:
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


def global_plan(groups: ChannelGroups, config: CompressConfig, limit: float) -> ChannelPlan:
    mask = ThresholdMask(groups, tau=1.0, min_channels=config.min_channels, round_to=config.round_to)
    normalised = mask.normalise(torch_pruning_importance(groups))  # torch-pruning's "mean" normaliser
    plan, _ = plan_within_budget(groups, mask, normalised, torch.zeros(len(mask.ids)), limit, round_to=config.round_to)
    for gp in plan.groups.values():
        gp.threshold = None  # one global cut, not a learned per-group threshold
    return plan


class OneShotPruning(Hook):
    """Removes `planner`'s channels once, after `config.prune_epochs` epochs of dense training."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: CompressConfig, planner: Planner, name: str):
        self.model, self.groups, self.config = model, groups, config
        self.planner, self.method = planner, name
        self.example_inputs = groups.example_inputs.detach().cpu()
        self.dense = plan_cost(groups, ChannelPlan())
        self.plan: ChannelPlan | None = None
        self.final_macs: int | None = None

    @property
    def name(self) -> str:
        return "OneShotPruning"

    def on_step_end(self, loop, loss: torch.Tensor) -> None:
        if self.plan is None and loop.state.step >= self.config.prune_epochs * loop.steps_per_epoch:
            limit = self.config.target_macs * self.dense.macs * (1 + BUDGET_TOLERANCE)
            plan = self.planner(self.groups, self.config, limit)
            cost = plan_cost(self.groups, plan)
            if cost.macs > limit:
                raise SurgeryError(
                    f"{self.method}: the rounded plan needs {cost.macs / self.dense.macs:.3f} of the dense MACs, "
                    f"above the target {self.config.target_macs}; lower --round-to or raise --target-macs"
                )
            plan.info.update(
                method=self.method,
                target_macs=self.config.target_macs,
                dense_macs=self.dense.macs,
                dense_params=self.dense.params,
                macs=cost.macs,
                params=cost.params,
                round_to=self.config.round_to,
            )
            self._apply(loop, plan)
            log_to(loop, {"type": "prune", "step": loop.state.step, "macs": cost.macs / self.dense.macs})

    def _apply(self, loop, plan: ChannelPlan) -> None:
        apply_plan_(loop, plan, self.example_inputs, groups=self.groups)
        self.plan = plan
        self.final_macs = int(plan.info["macs"])

    def on_epoch_end(self, loop, metrics: dict[str, Any]) -> None:
        macs = self.final_macs if self.plan is not None else self.dense.macs
        metrics["macs_ratio"] = round(macs / self.dense.macs, 5)
        metrics["pruned"] = self.plan is not None

    def detach_hooks(self) -> None:
        """Nothing to detach: the baselines never mask."""

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict() if self.plan is not None else None}

    def load_state_dict(self, state: dict[str, Any], loop) -> None:
        if state.get("plan") is not None:
            self._apply(loop, ChannelPlan.from_dict(state["plan"]))


def _prepare(model, example_inputs, config, planner, name) -> OneShotPruning:
    if config.bypass == "rep" and not has_bypass(model):
        add_bypass_(model, example_inputs, ignore=config.ignore)
    groups = analyze(model, example_inputs, ignore=config.ignore)
    return OneShotPruning(model, groups, config, planner, name)


def prepare_uniform_(model: nn.Module, example_inputs: torch.Tensor, config: CompressConfig) -> OneShotPruning:
    return _prepare(model, example_inputs, config, uniform_budget_plan, "uniform")


def prepare_global_(model: nn.Module, example_inputs: torch.Tensor, config: CompressConfig) -> OneShotPruning:
    return _prepare(model, example_inputs, config, global_plan, "global")
