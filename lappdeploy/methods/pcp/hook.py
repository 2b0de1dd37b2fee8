"""PCP's removal step: attempt a cut in every group, prune the groups losing least accuracy per unit
of cost saved (MACs, parameters or latency: the run's budget)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.methods.attempts import Attempts, IterativePruning
from lappdeploy.methods.pcp import PcpConfig
from lappdeploy.methods.prepare import prepare_pruning_
from lappdeploy.surgery import CRITERIA

__all__ = ["PcpPruning", "prepare_pcp_"]


class PcpPruning(IterativePruning):
    method = "pcp"

    def _attempt_every_group(self, attempts: Attempts, scores: dict) -> list[tuple]:
        """(drop per unit of cost, loss rise per unit, group, channels removed, available counts) of one attempt
        per group, best first (cost in the budget's unit); an attempt removes the available count nearest above
        attempt_fraction."""
        base, current = attempts.baseline(), self.cost_without({})
        rows = []
        for g in self.current.prunable:
            counts = self.counts(g.id)
            if not counts:
                continue
            count = self.first_count(counts, self.config.attempt_fraction * g.channels)
            outcome = attempts.keep(self.kept_by(self.config.criterion, {g.id: count}, scores))
            saved = max(current - self.cost_without({g.id: count}), 1e-12 * self.budget.dense)
            drop, rise = (base.top1 - outcome.top1) / saved, (outcome.loss - base.loss) / saved
            rows.append((drop, rise, g.id, count, counts))
        return sorted(rows, key=lambda row: row[:3])

    def _counts(self, rows: list[tuple]) -> dict[str, int]:
        """Channels to remove from the best `groups_per_step` groups; when they would cut past the budget,
        the last step instead lands as close below it as any one group can take it."""
        counts: dict[str, int] = {}
        for _, _, gid, count, _ in rows[: self.config.groups_per_step]:
            if self.cost_without({**counts, gid: count}) <= self.budget.limit:
                return self._closest_landing(counts, rows)
            counts[gid] = count
        return counts

    def _closest_landing(self, counts: dict[str, int], rows: list[tuple]) -> dict[str, int]:
        """`counts` plus the fewest channels of the one attempted group that brings the model within the
        budget with the least overshoot (ties: the better ranked group)."""
        best = None
        for rank, (_, _, gid, _, available) in enumerate(rows):
            if gid in counts:
                continue
            for n in available:
                cost = self.cost_without({**counts, gid: n})
                if cost <= self.budget.limit:
                    if best is None or (cost, -rank) > best[0]:
                        best = ((cost, -rank), gid, n)
                    break
        if best is None:  # no single group reaches it: take the attempts of the best groups
            return {**counts, **{row[2]: row[3] for row in rows[: self.config.groups_per_step]}}
        return {**counts, best[1]: best[2]}

    def select(self, loop, attempts: Attempts) -> tuple[dict[str, list[int]], dict[str, Any]]:
        scores = self.prepare_scores(loop, (self.config.criterion,))
        rows = self._attempt_every_group(attempts, scores)
        if not rows:
            raise SurgeryError(f"pcp: every group reached its minimum width before {self.budget.flag}")
        counts = self._counts(rows)
        for gid in counts:
            self.used[gid] = self.used.get(gid, 0) + 1
        drops = {row[2]: round(row[0], 8) for row in rows}
        record = {"groups": counts, "attempts": len(rows), "drop_per_cost": {g: drops[g] for g in counts},
                  "criterion": self.config.criterion}  # fmt: skip
        return self.kept_by(self.config.criterion, counts, scores), {**record, "top1_before": attempts.baseline().top1}


def prepare_pcp_(model: nn.Module, example_inputs: torch.Tensor, config: PcpConfig) -> PcpPruning:
    CRITERIA.get(config.criterion)  # an unknown criterion stops here, before anything is written
    groups, budget = prepare_pruning_(model, example_inputs, config)
    return PcpPruning(model, groups, config, budget)
