"""LAASP's removal step: the (group, criterion) pair of lowest held-out loss loses ~step_macs of the cost."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.methods.attempts import Attempts, IterativePruning
from lappdeploy.methods.laasp import LaaspConfig
from lappdeploy.methods.prepare import prepare_pruning_
from lappdeploy.surgery import CRITERIA

__all__ = ["LaaspPruning", "prepare_laasp_"]


class LaaspPruning(IterativePruning):
    method = "laasp"

    @property
    def lowest_widths_are(self) -> str:
        return f"every group at its --cap {self.config.cap} (raise --cap)"

    def lowest_width(self, gid: str) -> int:
        """`--cap` keeps at least 1 - cap of a group's dense channels (on the unit's grid)."""
        dense, unit = self.groups.prunable_group(gid).channels, self.unit(gid)
        capped = min(dense, math.ceil((1 - self.config.cap) * dense / unit) * unit)
        return max(super().lowest_width(gid), capped)

    def step_size(self, gid: str, counts: list[int], current: float) -> int:
        """The channels of `gid` whose removal cuts ~step_macs of the dense cost (an available count), fewer when
        fewer bring the model within the budget; `current` is the model's cost now, in the budget's unit."""
        per_channel = max(current - self.cost_without({gid: 1}), 1e-12 * self.budget.dense)  # cost of one channel
        count = self.first_count(counts, self.config.step_macs * self.budget.dense / per_channel)
        reaching = self.to_target(gid, counts)
        return min(count, reaching) if reaching is not None else count

    def select(self, loop, attempts: Attempts) -> tuple[dict[str, list[int]], dict[str, Any]]:
        scores = self.prepare_scores(loop, self.config.criteria)
        current = self.cost_without({})
        best = None
        for g in self.current.prunable:
            counts = self.counts(g.id)
            if not counts:
                continue
            count = self.step_size(g.id, counts, current)
            for criterion in self.config.criteria:
                keep = self.kept_by(criterion, {g.id: count}, scores)[g.id]
                outcome = attempts.keep({g.id: keep})
                if best is None or outcome.loss < best[0].loss:
                    best = (outcome, g.id, criterion, keep, count)
        if best is None:
            raise SurgeryError(f"laasp: every group reached its --cap or minimum width before {self.budget.flag}")
        outcome, gid, criterion, keep, count = best
        self.used[criterion] = self.used.get(criterion, 0) + 1
        record = {"group": gid, "criterion": criterion, "removed": count, "loss": outcome.loss, "top1": outcome.top1}
        return {gid: keep}, {**record, "loss_before": attempts.baseline().loss}


def prepare_laasp_(model: nn.Module, example_inputs: torch.Tensor, config: LaaspConfig) -> LaaspPruning:
    for name in config.criteria:
        CRITERIA.get(name)  # an unknown criterion stops here, before anything is written
    groups, budget = prepare_pruning_(model, example_inputs, config)
    return LaaspPruning(model, groups, config, budget)
