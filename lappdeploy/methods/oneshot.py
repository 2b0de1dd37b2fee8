"""One-shot pruning, shared by the methods that remove one plan at once (`uniform`, `global`, `ldrf`): the hook
that removes a planner's channels after `prune_epochs` dense epochs (at once for a model given by --init-from),
and the uniform planner (the same kept fraction in every group, rounded and landed under the MACs target)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.budgets import latency_budget
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
    SurgeryError,
    channel_scores,
    plan_cost,
    round_plan,
    uniform_plan,
)
from lappdeploy.surgery.plan import PlanMeasure, RoundTo, macs_measure

__all__ = ["OneShotPruning", "Planner", "land_plan", "lowest_widths", "uniform_budget_plan"]

log = logging.getLogger(__name__)

# (groups, config, limit, channel scores[, measure, round_to]) -> plan; the limit is in MACs per image, or with a
# latency budget in the unit of `measure` (predicted ms), with the rounding the budget resolved (--round-to auto)
Planner = Callable[..., ChannelPlan]
_TAYLOR_IMAGES = 1024  # held-out images whose loss gradient the taylor criterion reads


def uniform_budget_plan(
    groups: ChannelGroups,
    config: PruneConfig,
    limit: float,
    scores: torch.Tensor,
    measure: PlanMeasure | None = None,
    round_to: RoundTo | None = None,
) -> ChannelPlan:
    """The same kept fraction in every group, the largest whose rounded plan costs at most `limit` (MACs per
    image, or the unit of `measure`), landed within the landing window under it."""
    plan = uniform_plan(groups, config.target_macs, scores=scores, measure=measure, budget=limit)
    landed = land_plan(plan, groups, config, limit, scores, measure=measure, round_to=round_to)
    cost = measure or macs_measure(groups)
    if cost(landed) <= limit:
        return landed
    # Coarse per-group multiples (--round-to auto) can leave a narrow group no width but its full one (16
    # channels at a step of 16): rounding the fraction found on exact widths then overshoots the limit, and
    # the landing only grows plans. Search the fraction on the rounded plans' cost instead.
    rounding = config.round_to if round_to is None else round_to

    def rounded_cost(candidate: ChannelPlan) -> float:
        return cost(round_plan(candidate, groups, rounding, scores=scores))

    plan = uniform_plan(groups, config.target_macs, scores=scores, measure=rounded_cost, budget=limit)
    plan = round_plan(plan, groups, rounding, scores=scores)
    return land_plan(plan, groups, config, limit, scores, measure=measure, round_to=round_to)


class OneShotPruning(PruningHookBase):
    """Removes `planner`'s channels once, after `config.prune_epochs` epochs of dense training (at once
    when that is 0: a model given by --init-from)."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: PruneConfig, planner: Planner, name: str):
        super().__init__(model, groups, config)
        self.planner, self.method = planner, name
        self.latency = latency_budget(groups, config) if config.budgets_latency else None  # --target-latency

    def plan_cost_in_budget_unit(self, plan: ChannelPlan) -> float:
        return self.latency.measure(plan) if self.latency is not None else plan_cost(self.groups, plan).macs

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
            if self.latency is None:
                plan = self.planner(self.groups, self.config, self.budget_limit(), scores)
            else:  # landed on the latency model, then checked (and corrected) by timing the deploy model
                plan, _ = self.latency.land_measured(
                    lambda limit: (self.planner(self.groups, self.config, limit, scores, measure=self.latency.measure,
                                                round_to=self.round_to), None)
                )  # fmt: skip
            plan = plan.to_dict()
        return ChannelPlan.from_dict(dist.broadcast_object(plan) if dist is not None else plan)

    def _prune(self, loop) -> None:
        plan = self._decide(loop)
        cost = plan_cost(self.groups, plan)
        if self.plan_cost_in_budget_unit(plan) > self.budget_limit():
            unit = "predicted latency" if self.latency is not None else "MACs"
            raise SurgeryError(
                f"{self.method}: the rounded plan exceeds the {unit} target; lower --round-to or raise the target"
            )
        self.apply_(loop, plan)
        step = loop.state.step  # the record's epoch lets a resume drop it with the epochs it belongs to
        epoch = round(step / loop.steps_per_epoch, 4)
        log_to(loop, {"type": "prune", "step": step, "epoch": epoch, "macs": cost.macs / self.dense.macs})

    def report_extra(self) -> dict:
        extra = {"criterion": self.config.criterion}
        if self.latency is not None:
            extra["latency"] = self.latency.report(self.plan)
        return extra
