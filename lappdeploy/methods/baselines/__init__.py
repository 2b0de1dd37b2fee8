"""Prune-then-finetune baselines on the same epoch budget as LAPP (docs/baselines.md): train dense for the
pruning phase, prune once to the MACs target, train the compact model on.

This module holds their configs and registrations and imports no torch; `oneshot` is the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.config import option
from lappdeploy.methods.base import PruneConfig, register_method
from lappdeploy.methods.options import CriterionOptions, ReconstructionOptions

__all__ = ["GlobalConfig", "UniformConfig"]


@dataclass(frozen=True)
class UniformConfig(CriterionOptions, ReconstructionOptions, PruneConfig):
    """`uniform`: the same keep ratio for every group, a criterion picks the channels."""


@dataclass(frozen=True)
class GlobalConfig(CriterionOptions, ReconstructionOptions, PruneConfig):
    """`global`: all channels of all groups ranked together by a criterion, mean-normalised per group."""

    criterion: str = option("group_l2", "The criterion that ranks channels (`lappdeploy list criteria`).")


register_method(
    "uniform",
    UniformConfig,
    handler="lappdeploy.methods.baselines.oneshot:prepare_uniform_",
    summary="prune once after the dense phase: the same keep ratio in every group (--criterion, default l2)",
)
register_method(
    "global",
    GlobalConfig,
    handler="lappdeploy.methods.baselines.oneshot:prepare_global_",
    summary="prune once after the dense phase: channels ranked across all groups (default: torch-pruning group L2)",
)
