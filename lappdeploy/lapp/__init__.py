"""Deprecated location of LAPP (until 0.3): the method now lives in `lappdeploy.methods.lapp`, its shared
budget tools in `lappdeploy.methods.common`."""

import warnings

from lappdeploy.methods.common import apply_plan_, minimum_plan, plan_within_budget
from lappdeploy.methods.lapp.budget import cubic_budget
from lappdeploy.methods.lapp.controller import LappController, prepare_
from lappdeploy.methods.lapp.masks import ThresholdMask

__all__ = [
    "LappController",
    "ThresholdMask",
    "apply_plan_",
    "cubic_budget",
    "minimum_plan",
    "plan_within_budget",
    "prepare_",
]

warnings.warn(
    "lappdeploy.lapp is deprecated and will be removed in 0.3: import from lappdeploy.methods.lapp "
    "(and lappdeploy.methods.common for the budget tools)",
    DeprecationWarning,
    stacklevel=2,
)
