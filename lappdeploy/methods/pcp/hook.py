"""PCP's removal step: attempt a cut in every group, prune the groups losing least accuracy per MAC saved."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.methods.attempts import Attempts, IterativePruning
from lappdeploy.methods.common import prepare_groups_
from lappdeploy.methods.pcp import PcpConfig
from lappdeploy.surgery import CRITERIA

__all__ = ["PcpPruning", "prepare_pcp_"]


class PcpPruning(IterativePruning):
    method = "pcp"

    def attempt_size(self, gid: str, upper: int) -> int:
        """attempt_fraction of the group's current channels, in units, at least one unit, at most `upper`."""
        unit = self.unit(gid)
        wanted = round(self.config.attempt_fraction * self.current.prunable_group(gid).channels / unit) * unit
        return min(max(unit, wanted), upper)

    def _attempt_every_group(self, attempts: Attempts, scores: dict) -> list[tuple]:
        """(drop per MAC, loss rise per MAC, group, channels removed) of one attempt per group, best first."""
        base, current = attempts.baseline(), self.macs_without({})
        rows = []
        for g in self.current.prunable:
            upper = self.removable(g.id)
            if upper <= 0:
                continue
            count = self.attempt_size(g.id, upper)
            outcome = attempts.keep(self.kept_by(self.config.criterion, {g.id: count}, scores))
            saved = max(current - self.macs_without({g.id: count}), 1e-9)  # MACs per image
            rows.append(((base.top1 - outcome.top1) / saved, (outcome.loss - base.loss) / saved, g.id, count))
        return sorted(rows)

    def _counts(self, rows: list[tuple]) -> dict[str, int]:
        """Channels to remove from the best `groups_per_step` groups; when they would cut past the budget,
        the last step instead lands as close below it as any one group can take it."""
        counts: dict[str, int] = {}
        for _, _, gid, count in rows[: self.config.groups_per_step]:
            if self.macs_without({**counts, gid: count}) <= self.budget_limit():
                return self._closest_landing(counts, rows)
            counts[gid] = count
        return counts

    def _closest_landing(self, counts: dict[str, int], rows: list[tuple]) -> dict[str, int]:
        """`counts` plus the fewest channels of the one attempted group that brings the model within the
        budget with the least overshoot (ties: the better ranked group)."""
        best = None
        for rank, (_, _, gid, count) in enumerate(rows):
            if gid in counts:
                continue
            unit = self.unit(gid)
            for n in range(unit, count + 1, unit):
                macs = self.macs_without({**counts, gid: n})
                if macs <= self.budget_limit():
                    if best is None or (macs, -rank) > best[0]:
                        best = ((macs, -rank), gid, n)
                    break
        if best is None:  # no single group reaches it: take the full attempts of the best groups
            return {**counts, **{gid: count for _, _, gid, count in rows[: self.config.groups_per_step]}}
        return {**counts, best[1]: best[2]}

    def select(self, loop, attempts: Attempts) -> tuple[dict[str, list[int]], dict[str, Any]]:
        scores = self.prepare_scores(loop, (self.config.criterion,))
        rows = self._attempt_every_group(attempts, scores)
        if not rows:
            raise SurgeryError("pcp: every group reached its minimum width before the MACs target")
        counts = self._counts(rows)
        for gid in counts:
            self.used[gid] = self.used.get(gid, 0) + 1
        drops = {gid: round(drop, 8) for drop, _, gid, _ in rows}
        record = {"groups": counts, "attempts": len(rows), "drop_per_mac": {g: drops[g] for g in counts}}
        return self.kept_by(self.config.criterion, counts, scores), {**record, "top1_before": attempts.baseline().top1}


def prepare_pcp_(model: nn.Module, example_inputs: torch.Tensor, config: PcpConfig) -> PcpPruning:
    CRITERIA.get(config.criterion)  # an unknown criterion stops here, before anything is written
    return PcpPruning(model, prepare_groups_(model, example_inputs, config), config)
