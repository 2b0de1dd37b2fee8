"""What a pruning method prunes toward (docs/budgets.md): one `Budget` per run, resolved by `resolve_budget`
before anything is trained or written, and handed to the method, which asks it for costs, limits, landings
and report fields and never asks which kind it is.

Kinds: deploy MACs per image (--target-macs, the default), deploy parameters (--target-params) and predicted
latency on a latency table's runtime (--target-latency / --target-latency-ms). A new kind is a `Budget`
subclass here and a branch of `resolve_budget`.
"""

from __future__ import annotations

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.budgets.base import Budget, CountedBudget, MacsBudget, ParamsBudget
from lappdeploy.methods.budgets.latency import (
    MEASURED_ATTEMPTS,
    MEASURED_TOLERANCE,
    LatencyBudget,
    latency_budget,
)
from lappdeploy.methods.common import GroupThresholds, minimum_plan
from lappdeploy.surgery import ChannelGroups, channel_scores

__all__ = [
    "MEASURED_ATTEMPTS",
    "MEASURED_TOLERANCE",
    "Budget",
    "CountedBudget",
    "LatencyBudget",
    "MacsBudget",
    "ParamsBudget",
    "resolve_budget",
]


def resolve_budget(groups: ChannelGroups, config: PruneConfig) -> Budget:
    """The run's budget from its options (`config.budget_kind()`): a latency table is loaded or profiled here,
    --round-to auto resolved, and a target that even the narrowest allowed widths miss is a ConfigError here,
    before any training."""
    kind = config.budget_kind()
    if kind == "latency":
        budget: Budget = latency_budget(groups, config)
    elif kind == "params":
        budget = ParamsBudget(groups, config.target_params, round_to=config.round_to,
                              flag=f"--target-params {config.target_params:g}")  # fmt: skip
    else:
        budget = MacsBudget(groups, config.target_macs, round_to=config.round_to,
                            flag=f"--target-macs {config.target_macs:g}")  # fmt: skip
    thresholds = GroupThresholds(groups, min_channels=config.min_channels, round_to=budget.round_to)
    narrowest = minimum_plan(groups, thresholds, channel_scores(groups, "l2").detach())
    rounding = "auto" if isinstance(budget.round_to, dict) else budget.round_to
    budget.check_reachable(
        narrowest, f"every group at its minimum width (--min-channels {config.min_channels}, --round-to {rounding})"
    )
    return budget
