"""What every method's handler does first: the model set up for pruning (bypass blocks, channel groups) and the
run's budget resolved (a latency table loaded or profiled, reachability checked), before anything is trained
or written."""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.budgets import Budget, resolve_budget
from lappdeploy.methods.common import prepare_groups_
from lappdeploy.surgery import ChannelGroups

__all__ = ["prepare_pruning_"]


def prepare_pruning_(
    model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig
) -> tuple[ChannelGroups, Budget]:
    """(channel groups, budget) of `model` (changed in place where --bypass adds blocks)."""
    groups = prepare_groups_(model, example_inputs, config)
    return groups, resolve_budget(groups, config)
