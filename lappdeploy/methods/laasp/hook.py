"""LAASP's removal step: the (group, criterion) pair of lowest held-out loss loses ~step_macs of the MACs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lappdeploy.errors import ConfigError, SurgeryError
from lappdeploy.methods.attempts import Attempts, IterativePruning
from lappdeploy.methods.common import prepare_groups_
from lappdeploy.methods.laasp import LaaspConfig
from lappdeploy.surgery import CRITERIA, ChannelGroups, ChannelPlan, GroupPlan, plan_cost

__all__ = ["LaaspPruning", "prepare_laasp_"]


class LaaspPruning(IterativePruning):
    method = "laasp"

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: LaaspConfig) -> None:
        super().__init__(model, groups, config)
        self._check_reachable_under_caps()

    def cap_floor(self, gid: str) -> int:
        """The fewest channels `--cap` lets group `gid` keep (its dense width times 1 - cap, in units)."""
        dense, unit = self.groups.prunable_group(gid).channels, self.unit(gid)
        return max(self.floor(gid), min(dense, math.ceil((1 - self.config.cap) * dense / unit) * unit))

    def _check_reachable_under_caps(self) -> None:
        floors = {g.id: self.cap_floor(g.id) for g in self.groups.prunable}
        plan = ChannelPlan(
            {gid: GroupPlan(self.groups.prunable_group(gid).channels, list(range(n))) for gid, n in floors.items()}
        )
        cheapest = plan_cost(self.groups, plan).macs
        if cheapest > self.budget_limit():
            raise ConfigError(
                f"--target-macs {self.config.target_macs} is unreachable under --cap {self.config.cap}: with every "
                f"group at its cap the model needs {cheapest / self.dense.macs:.3f} of its dense MACs; raise --cap"
            )

    def step_size(self, gid: str, upper: int, current_macs: float) -> int:
        """Channels of `gid` whose removal cuts ~step_macs of the dense MACs (a multiple of the unit, at
        most `upper`), fewer when fewer reach the budget."""
        unit = self.unit(gid)
        per_channel = max(current_macs - self.macs_without({gid: 1}), 1e-9)  # MACs per image per channel
        wanted = max(1, round(self.config.step_macs * self.dense.macs / per_channel))
        return min(math.ceil(wanted / unit) * unit, upper, self.to_target(gid, upper))

    def select(self, loop, attempts: Attempts) -> tuple[dict[str, list[int]], dict[str, Any]]:
        scores = self.prepare_scores(loop, self.config.criteria)
        current = self.macs_without({})
        best = None
        for g in self.current.prunable:
            upper = min(self.removable(g.id), max(0, g.channels - self.cap_floor(g.id)))
            if upper <= 0:
                continue
            count = self.step_size(g.id, upper, current)
            for criterion in self.config.criteria:
                keep = self.kept_by(criterion, {g.id: count}, scores)[g.id]
                outcome = attempts.keep({g.id: keep})
                if best is None or outcome.loss < best[0].loss:
                    best = (outcome, g.id, criterion, keep, count)
        if best is None:
            raise SurgeryError("laasp: every group reached its --cap or minimum width before the MACs target")
        outcome, gid, criterion, keep, count = best
        self.used[criterion] = self.used.get(criterion, 0) + 1
        record = {"group": gid, "criterion": criterion, "removed": count, "loss": outcome.loss, "top1": outcome.top1}
        return {gid: keep}, {**record, "loss_before": attempts.baseline().loss}


def prepare_laasp_(model: nn.Module, example_inputs: torch.Tensor, config: LaaspConfig) -> LaaspPruning:
    for name in config.criteria:
        CRITERIA.get(name)  # an unknown criterion stops here, before anything is written
    return LaaspPruning(model, prepare_groups_(model, example_inputs, config), config)
