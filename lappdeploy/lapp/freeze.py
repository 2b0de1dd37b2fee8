"""End of a pruning phase: from (scores, thresholds) to a channel plan that meets the MACs budget
(LAPP.md section 6), and its application to a model that is still training."""

from __future__ import annotations

import logging

import torch

from lappdeploy.lapp.masks import ThresholdMask
from lappdeploy.surgery.cost import plan_cost
from lappdeploy.surgery.graph import ChannelGroups, SurgeryError
from lappdeploy.surgery.plan import ChannelPlan, round_plan
from lappdeploy.surgery.remove import remove_channels_

__all__ = ["BUDGET_TOLERANCE", "apply_plan_", "log_to", "plan_within_budget"]

log = logging.getLogger(__name__)

BUDGET_TOLERANCE = 0.005  # a plan may exceed the MACs target by this fraction (LAPP.md section 6)
_BISECTION_STEPS = 40  # halvings of the offset interval: resolves it to ~1e-12 of the score range


def plan_within_budget(
    groups: ChannelGroups,
    mask: ThresholdMask,
    normalised: torch.Tensor,
    thresholds: torch.Tensor,
    budget_macs: float,
    *,
    round_to: int = 1,
) -> tuple[ChannelPlan, float]:
    """The plan of the hard masks `normalised > thresholds + offset`, rounded to multiples of `round_to`,
    with the smallest common offset >= 0 whose deploy MACs are <= `budget_macs`; returns (plan, offset).

    Raising every threshold by one offset keeps the layer-adaptive allocation the thresholds learned
    while removing the channels that sit closest to their group's threshold first.
    """
    normalised = normalised.detach().float().cpu()
    thresholds = thresholds.detach().float().cpu()

    def plan_at(offset: float) -> ChannelPlan:
        plan = ChannelPlan.from_keep_mask(groups, mask.hard(normalised, thresholds, offset))
        if round_to > 1:
            plan = round_plan(plan, groups, round_to, scores=normalised, budget=budget_macs)
        return plan

    def fits(plan: ChannelPlan) -> bool:
        return plan_cost(groups, plan).macs <= budget_macs

    best, offset = plan_at(0.0), 0.0
    if not fits(best):
        low = 0.0
        high = float(normalised.max() - thresholds.min()) + 1.0  # every group at its minimum width
        best = plan_at(high)
        if not fits(best):
            raise SurgeryError(
                f"no plan reaches {budget_macs:.0f} MACs: even the minimum widths cost "
                f"{plan_cost(groups, best).macs}; raise the MACs target or lower --min-channels/--round-to"
            )
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            candidate = plan_at(middle)
            if fits(candidate):
                high, best = middle, candidate
            else:
                low = middle
        offset = high
    for index, gid in enumerate(mask.ids):
        if gid in best.groups:
            best.groups[gid].threshold = float(thresholds[index]) + offset
    return best, offset


def apply_plan_(loop, plan: ChannelPlan, example_inputs: torch.Tensor, groups: ChannelGroups | None = None) -> None:
    """Remove `plan`'s channels from a model in training: `loop.module` is pruned in place, the state of
    `loop.optimizer` (momentum, Adam moments) is cut to the kept channels, and a DDP wrapper is rebuilt
    through `loop.rewrap_()` when the loop has one. Every rank must call this with the same plan."""
    remove_channels_(loop.module, plan, example_inputs, optimizer=loop.optimizer, groups=groups)
    rewrap = getattr(loop, "rewrap_", None)
    if rewrap is not None:
        rewrap()
    elif getattr(getattr(loop, "dist", None), "is_distributed", False):
        raise SurgeryError("channels were removed under DDP but the training loop has no rewrap_() to re-wrap it")


def log_to(loop, record: dict) -> None:
    """Pass a record to the loop's `log` (our Trainer writes it to metrics.jsonl); loops without one skip it."""
    log_record = getattr(loop, "log", None)
    if log_record is not None:
        log_record(record)
