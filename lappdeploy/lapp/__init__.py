"""LAPP: layer-adaptive progressive pruning from scratch (LAPP.md), as hooks on any training loop."""

from lappdeploy.lapp.budget import cubic_budget
from lappdeploy.lapp.controller import LappController, minimum_plan, prepare_
from lappdeploy.lapp.freeze import BUDGET_TOLERANCE, apply_plan_, plan_within_budget
from lappdeploy.lapp.masks import ThresholdMask

__all__ = [
    "BUDGET_TOLERANCE",
    "LappController",
    "ThresholdMask",
    "apply_plan_",
    "cubic_budget",
    "minimum_plan",
    "plan_within_budget",
    "prepare_",
]
