"""One-shot pruning, shared by the methods that remove one plan at once (`uniform`, `global`, `ldrf`): the hook
that removes a planner's channels after `prune_epochs` dense epochs (at once for a model given by --init-from),
and the uniform planner (the same kept fraction in every group, rounded and landed under the MACs target)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.budgets import Budget
from lappdeploy.methods.common import (
    PruningHookBase,
    held_out_tensors,
    land_plan,
    log_to,
    lowest_widths,
    taylor_gradients_,
)
from lappdeploy.surgery import (
    CRITERIA,
    ChannelGroups,
    ChannelPlan,
    channel_scores,
    plan_cost,
    round_plan,
    uniform_plan,
)

__all__ = ["OneShotPruning", "Planner", "land_plan", "lowest_widths", "uniform_budget_plan"]

log = logging.getLogger(__name__)

# (groups, config, budget, limit, channel scores) -> a plan whose cost is at most `limit`, in the budget's unit,
# rounded to the budget's multiples
Planner = Callable[[ChannelGroups, PruneConfig, Budget, float, torch.Tensor], ChannelPlan]
_TAYLOR_IMAGES = 1024  # held-out images whose loss gradient the taylor criterion reads


def uniform_budget_plan(
    groups: ChannelGroups, config: PruneConfig, budget: Budget, limit: float, scores: torch.Tensor
) -> ChannelPlan:
    """The same kept fraction in every group, the largest whose rounded plan costs at most `limit` (in the
    budget's unit), landed within the landing window under it."""
    cost = budget.measure(groups)
    plan = uniform_plan(groups, budget.fraction(limit), scores=scores, measure=cost, budget=limit)
    landed = land_plan(plan, groups, config, limit, scores, budget=budget)
    if cost(landed) <= limit:
        return landed

    # Coarse per-group multiples (--round-to auto) can leave a narrow group no width but its full one (16
    # channels at a step of 16): rounding the fraction found on exact widths then overshoots the limit, and
    # the landing only grows plans. Search the fraction on the rounded plans' cost instead.
    def rounded_cost(candidate: ChannelPlan) -> float:
        return cost(round_plan(candidate, groups, budget.round_to, scores=scores))

    plan = uniform_plan(groups, budget.fraction(limit), scores=scores, measure=rounded_cost, budget=limit)
    plan = round_plan(plan, groups, budget.round_to, scores=scores)
    return land_plan(plan, groups, config, limit, scores, budget=budget)


class OneShotPruning(PruningHookBase):
    """Removes `planner`'s channels once, after `config.prune_epochs` epochs of dense training (at once
    when that is 0: a model given by --init-from)."""

    def __init__(
        self, model: nn.Module, groups: ChannelGroups, config: PruneConfig, budget: Budget, planner: Planner, name: str
    ) -> None:
        super().__init__(model, groups, config, budget)
        self.planner, self.method = planner, name

    def on_train_start(self, loop) -> None:
        if not self.frozen and self.phase_steps(loop) == 0:
            self._prune(loop)

    def on_step_end(self, loop, loss: torch.Tensor) -> None:
        if not self.frozen and loop.state.step >= self.phase_steps(loop):
            self._prune(loop)

    def _scores(self, loop) -> torch.Tensor:
        """The criterion's scores; a gradient criterion reads the held-out loss gradient when there are
        held-out images, else the gradient of the last training batch."""
        if CRITERIA.get(self.config.criterion).needs_grad and getattr(loop, "holdout", None):
            device = next(loop.module.parameters()).device
            taylor_gradients_(loop.module, *held_out_tensors(loop, _TAYLOR_IMAGES, device))
        scores = channel_scores(self.groups, self.config.criterion).detach().float().cpu()
        return scores

    def _decide(self, loop) -> ChannelPlan:
        """The plan, computed on rank 0 and broadcast under DDP: scores from gradients (taylor) can differ
        between ranks, and every rank must remove the same channels."""
        dist = getattr(loop, "dist", None)
        plan = None
        if dist is None or dist.is_main:
            scores = self._scores(loop)
            # a latency budget may time the landed plan and land again on a corrected limit
            plan, _ = self.budget.land(
                lambda limit: (self.planner(self.groups, self.config, self.budget, limit, scores), None)
            )
            plan = plan.to_dict()
        return ChannelPlan.from_dict(dist.broadcast_object(plan) if dist is not None else plan)

    def _prune(self, loop) -> None:
        plan = self._decide(loop)
        self.budget.check_plan(plan, self.method)
        self.apply_(loop, plan)
        step = loop.state.step  # the record's epoch lets a resume drop it with the epochs it belongs to
        epoch = round(step / loop.steps_per_epoch, 4)
        macs = plan_cost(self.groups, plan).macs / self.dense.macs
        log_to(loop, {"type": "prune", "step": step, "epoch": epoch, "macs": macs, **self.budget.record(plan)})

    def report_extra(self) -> dict:
        return {"criterion": self.config.criterion}
