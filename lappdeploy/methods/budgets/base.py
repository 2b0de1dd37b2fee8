"""What a pruning method prunes toward: one Budget object per run, resolved before anything is written and
handed to the method, which asks it and never asks which kind it is.

A budget owns the dense cost and the limit in its unit, the cost of a plan, the differentiable cost of soft
masks (LAPP's penalty), the landing of a plan under the limit (the latency budget may check a landed plan by
timing it), the resolved width rounding, the report fields, and what a resumed run must budget again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from lappdeploy.errors import ConfigError, SurgeryError
from lappdeploy.surgery import ChannelGroups, ChannelPlan, cost_model, plan_cost
from lappdeploy.surgery.plan import RoundTo

__all__ = ["Budget", "CountedBudget", "MacsBudget", "ParamsBudget"]

Landed = TypeVar("Landed")  # what a landing function returns besides its plan (LAPP: the threshold offset)


class Budget(ABC):
    """The target of a run in one unit (MACs, parameters, milliseconds); see the module docstring."""

    kind: ClassVar[str]  # "macs", "params", "latency": the key of its fraction in logs and reports
    unit: ClassVar[str]  # what cost() returns, for messages: "MACs", "parameters", "ms (predicted latency)"

    def __init__(self, groups: ChannelGroups, *, dense: float, target: float, round_to: RoundTo, flag: str) -> None:
        self.groups = groups  # the dense model's analysis: what plans are numbered in unless told otherwise
        self.dense, self.target, self.round_to = float(dense), float(target), round_to
        self.flag = flag  # the option that set it, e.g. "--target-macs 0.5", for messages
        self.limit = self.target  # what a final plan may cost; a measured landing may move it

    # ------------------------------------------------------------------ costs
    @abstractmethod
    def soft(self, keep_mask: torch.Tensor, groups: ChannelGroups | None = None) -> torch.Tensor:
        """The cost of a (soft, 0..1) keep mask over the global channel vector of `groups` (default: the dense
        model's analysis; an iterative method passes the analysis of the model as pruned so far),
        differentiable."""

    def cost(self, plan: ChannelPlan, groups: ChannelGroups | None = None) -> float:
        """A plan's cost in the budget's unit (`plan` numbered as `groups`, default the dense analysis)."""
        groups = groups or self.groups
        with torch.no_grad():
            return float(self.soft(plan.keep_mask(groups).to(torch.float64), groups))

    def measure(self, groups: ChannelGroups | None = None) -> Callable[[ChannelPlan], float]:
        """`cost` as the plan measure the rounding and landing helpers take (`surgery.plan.PlanMeasure`)."""
        return lambda plan: self.cost(plan, groups)

    def fraction(self, cost: float) -> float:
        return float(cost) / self.dense

    def check_reachable(self, cheapest: ChannelPlan, what: str) -> None:
        """ConfigError (before anything is trained or written) when `cheapest`, the cheapest plan the method can
        reach (`what` describes it, e.g. "every group at its minimum width (--min-channels 1, --round-to 8)"),
        still costs more than the target."""
        floor = self.cost(cheapest)
        if floor > self.target:
            raise ConfigError(
                f"{self.flag} is unreachable: with {what} the model still needs {self.fraction(floor):.3f} of its "
                f"dense {self.unit}{self.where()}; raise the target or lower those"
            )

    def where(self) -> str:
        """Where the cost is measured, for messages (the latency table's runtime and device); empty here."""
        return ""

    def record(self, plan: ChannelPlan) -> dict[str, float]:
        """{kind: the plan's cost as a fraction of dense}, for log records."""
        return {self.kind: round(self.fraction(self.cost(plan)), 6)}

    # ------------------------------------------------------------------ landing
    def land(self, land: Callable[[float], tuple[ChannelPlan, Landed]]) -> tuple[ChannelPlan, Landed]:
        """`land(limit)`: a plan landed under the limit and what else the landing returns."""
        return land(self.limit)

    def landing_fields(self) -> dict[str, Any]:
        """What the landing found beyond the plan, for the method's landing record (the measured landing's
        attempts); none by default."""
        return {}

    def check_plan(self, plan: ChannelPlan, method: str) -> None:
        """SurgeryError when a final plan costs more than the limit (a planner's rounding overshot it)."""
        if self.cost(plan) > self.limit * (1 + 1e-9):
            raise SurgeryError(f"{method}: the rounded plan exceeds {self.flag}; lower --round-to or raise the target")

    # ------------------------------------------------------------------ reports and resume
    def report(self, plan: ChannelPlan | None) -> dict[str, Any]:
        """report.json's budget fields (every kind has `budget`; `target_macs` is None but for a MACs budget)."""
        cost = self.cost(plan) if plan is not None else None
        return {
            "target_macs": None,
            "budget": {"kind": self.kind, "flag": self.flag, "unit": self.unit, "dense": self.dense,
                       "target": self.target, "cost": cost,
                       "ratio": round(self.fraction(cost), 6) if cost is not None else None},
        }  # fmt: skip

    def deploy_report(self, plan: ChannelPlan | None, deploy_model: nn.Module) -> dict[str, Any]:
        """Report fields that need the final deploy model (the latency budget times it); none by default."""
        return {}

    def identity(self) -> dict[str, Any]:
        """What a resumed run must budget again (kept in its checkpoint)."""
        return {"kind": self.kind, "target": round(self.target, 6)}

    def check_resumed(self, saved: dict[str, Any] | None) -> None:
        """ConfigError when a resumed run would budget another kind or target than it started with."""
        if saved and saved != self.identity():
            raise ConfigError(
                f"this run started with the budget {saved}; now it is {self.identity()}: resume with the run's "
                "options, or start a new run"
            )


class CountedBudget(Budget):
    """A budget counted analytically on the deploy model: MACs per image or parameters (`surgery.cost`)."""

    which: ClassVar[int]  # index into the cost model's (MACs, params)

    def __init__(self, groups: ChannelGroups, fraction: float, *, round_to: RoundTo, flag: str) -> None:
        dense = self._of(plan_cost(groups, ChannelPlan()))
        super().__init__(groups, dense=dense, target=fraction * dense, round_to=round_to, flag=flag)

    def _of(self, cost) -> float:
        return float((cost.macs, cost.params)[self.which])

    def cost(self, plan: ChannelPlan, groups: ChannelGroups | None = None) -> float:
        return self._of(plan_cost(groups or self.groups, plan))

    def soft(self, keep_mask: torch.Tensor, groups: ChannelGroups | None = None) -> torch.Tensor:
        return cost_model(groups or self.groups)(keep_mask)[self.which]


class MacsBudget(CountedBudget):
    """--target-macs: deploy MACs per image (BN and bypass folded), a fraction of the dense model's."""

    kind, unit, which = "macs", "MACs", 0

    def report(self, plan: ChannelPlan | None) -> dict[str, Any]:
        return {**super().report(plan), "target_macs": round(self.target / self.dense, 6)}


class ParamsBudget(CountedBudget):
    """--target-params: parameters of the deploy model, a fraction of the dense model's."""

    kind, unit, which = "params", "parameters", 1

    def report(self, plan: ChannelPlan | None) -> dict[str, Any]:
        return {**super().report(plan), "target_params": round(self.target / self.dense, 6)}
