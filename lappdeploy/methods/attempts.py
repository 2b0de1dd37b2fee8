"""Attempt and select: pruning decided by trying candidate prunings on held-out images, then removing the
chosen channels while training goes on (the engine of LAASP and PCP; docs/criteria.md#attempts).

Candidates are evaluated with channel masks on the model as it is (`surgery.ChannelMasker` zeroes each
dropped channel where it is produced, which the surgery tests prove equal to removing it), in eval mode
without gradients, batched over a fixed set of held-out images kept on the training device, and cached
by (group, kept channels): no model is copied. Every `interval` training steps one removal step runs:
`select` (the method's rule) names the channels to drop, rank 0 decides and broadcasts under DDP, the
channels are removed (optimizer state carried over), the model is analysed afresh, and the training steps
until the next removal step are the recovery. Removal steps compose into one plan of the dense model.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lappdeploy.errors import LappDeployError, SurgeryError
from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.budgets import Budget
from lappdeploy.methods.common import (
    LANDING_WINDOW,
    GroupThresholds,
    PruningHookBase,
    apply_plan_,
    held_out_tensors,
    land_plan,
    log_to,
    recalibrate_bn_,
    taylor_gradients_,
    training_batches,
)
from lappdeploy.surgery import (
    CRITERIA,
    ChannelGroups,
    ChannelMasker,
    ChannelPlan,
    GroupPlan,
    analyze,
    channel_scores,
    compose_plans,
    fill_plan,
    kept_first,
    plan_cost,
    plan_from_scores,
    uniform_plan,
)
from lappdeploy.surgery.plan import width_unit

__all__ = ["Attempts", "IterativePruning", "Outcome"]

log = logging.getLogger(__name__)

_EVAL_BATCH = 256  # held-out images per forward pass of an attempt


@dataclass(frozen=True)
class Outcome:
    loss: float  # mean cross-entropy on the held-out images
    top1: float  # fraction of them classified correctly


class Attempts:
    """Loss and top-1 of one model on fixed held-out images under candidate channel masks, cached by
    (group, kept channels). Valid for one state of the weights: make a new one after they change."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, images: torch.Tensor, labels: torch.Tensor):
        self.model, self.groups = model, groups
        self.images, self.labels = images, labels
        self.cache: dict[tuple, Outcome] = {}
        self.evaluations = 0  # forward passes over the held-out set (cache misses)

    def _mask(self, keep: dict[str, list[int]]) -> torch.Tensor:
        mask = torch.ones(self.groups.global_channels, device=self.images.device)
        for gid, kept in keep.items():
            g = self.groups.prunable_group(gid)
            mask[g.offset : g.offset + g.channels] = 0
            mask[g.offset + torch.as_tensor(kept, dtype=torch.long, device=mask.device)] = 1
        return mask

    @torch.no_grad()
    def _evaluate(self, mask: torch.Tensor | None) -> Outcome:
        was_training = self.model.training
        self.model.eval()
        loss, correct = 0.0, 0
        with ChannelMasker(self.groups) as masker:
            if mask is not None:
                masker.set(mask)
            for start in range(0, len(self.images), _EVAL_BATCH):
                logits = self.model(self.images[start : start + _EVAL_BATCH]).float()
                labels = self.labels[start : start + _EVAL_BATCH]
                loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(1) == labels).sum())
        self.model.train(was_training)
        self.evaluations += 1
        return Outcome(loss / len(self.images), correct / len(self.images))

    def baseline(self) -> Outcome:
        """The model as it is (nothing masked)."""
        if ("baseline",) not in self.cache:
            self.cache[("baseline",)] = self._evaluate(None)
        return self.cache[("baseline",)]

    def keep(self, keep: dict[str, list[int]]) -> Outcome:
        """The model with only the listed channels of each listed group kept (indices of the model now)."""
        key = tuple(sorted((gid, frozenset(kept)) for gid, kept in keep.items()))
        if key not in self.cache:
            self.cache[key] = self._evaluate(self._mask(keep))
        return self.cache[key]


class IterativePruning(PruningHookBase):
    """The scaffolding of attempt-and-select methods; a subclass implements `select`.

    Removal steps start after `prune_epochs` epochs and are spread over `prune_span` epochs: after each
    step the gap to the next is set so that the steps still needed (estimated from the cost the last one
    removed) end with the span; steps still needed at its end follow each other at once, so the model
    meets its target by then. The run continues compact."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: PruneConfig, budget: Budget) -> None:
        super().__init__(model, groups, config, budget)
        self.current = groups  # analysis of the model as it is now
        self.composed = ChannelPlan()  # everything removed so far, in dense channel indices
        self.steps: list[dict[str, Any]] = []  # each step's plan, in the channel numbering of its time
        self.next_step: int | None = None  # optimizer step of the next removal step
        self.decision_s = 0.0  # wall time of attempts and selection, summed over steps
        self.window_s = 0.0  # wall time from the first removal step to the last
        self.evaluations = 0
        self.used: dict[str, int] = {}  # what the steps chose (criteria for LAASP), counted
        self.ranked_by: dict[str, str] = {}  # per group, the criterion its last removal step kept channels by
        self._window_started: float | None = None
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self.min_keep = dict(zip(*self._minimum_widths(groups), strict=True))
        self.check_reachable(self.lowest_widths_are)

    def _minimum_widths(self, groups: ChannelGroups) -> tuple[list[str], list[int]]:
        widths = GroupThresholds(groups, min_channels=self.config.min_channels, round_to=self.budget.round_to)
        return widths.ids, widths.min_keep

    # ------------------------------------------------------------------ schedule
    def start_step(self, loop) -> int:
        return self.phase_steps(loop)

    def span_end(self, loop) -> int:
        return self.start_step(loop) + max(1, round(self.config.prune_span * loop.steps_per_epoch))

    def on_train_start(self, loop) -> None:
        if self.next_step is None:
            self.next_step = self.start_step(loop)
        self._due_steps(loop)  # --prune-epochs 0: the trained model is pruned before the first step

    def on_step_end(self, loop, loss: torch.Tensor) -> None:
        self._due_steps(loop)

    def _due_steps(self, loop) -> None:
        while not self.frozen and loop.state.step >= self.next_step:
            self._removal_step(loop)

    def _schedule(self, loop, removed: float, remaining: float) -> None:
        """The next removal step: the steps still needed, estimated from the cost (in the budget's unit) the
        last one removed, spread evenly over what is left of the span (at once when nothing is left)."""
        now = loop.state.step
        needed = max(1, math.ceil(remaining / max(removed, 1e-9 * self.budget.dense)))
        left = self.span_end(loop) - now
        self.next_step = now + (max(1, left // (needed + 1)) if left > needed else 0)

    # ------------------------------------------------------------------ one removal step
    def held_out(self, loop) -> tuple[torch.Tensor, torch.Tensor]:
        if self._images is None:
            device = next(loop.module.parameters()).device
            self._images, self._labels = held_out_tensors(loop, self.config.decision_images, device)
        return self._images, self._labels

    def select(self, loop, attempts: Attempts) -> tuple[dict[str, list[int]], dict[str, Any]]:
        """The channels to keep per group (indices of the model now) and a record of the decision."""
        raise NotImplementedError

    def _decide(self, loop) -> tuple[dict[str, list[int]], dict[str, Any]]:
        started = time.perf_counter()
        dist = getattr(loop, "dist", None)
        decision = None
        if dist is None or dist.is_main:
            try:
                attempts = Attempts(loop.module, self.current, *self.held_out(loop))
                decision = self.select(loop, attempts)
                decision[1]["evaluations"] = attempts.evaluations
            except LappDeployError as exc:  # the other ranks wait for this decision: tell them, then stop
                decision = ("error", str(exc))
        decision = dist.broadcast_object(decision) if dist is not None else decision
        if decision[0] == "error":
            raise SurgeryError(decision[1])
        self.decision_s += time.perf_counter() - started
        self.evaluations += decision[1]["evaluations"]
        return decision

    def _removal_step(self, loop) -> None:
        if self._window_started is None:
            self._window_started = time.perf_counter()
        before = self.budget.cost(self.composed)
        keep, record = self._decide(loop)
        step_plan = ChannelPlan(
            groups={gid: GroupPlan(self.current.prunable_group(gid).channels, sorted(k)) for gid, k in keep.items()}
        )
        self.ranked_by.update({gid: record["criterion"] for gid in keep})
        step_plan = self._land(step_plan, record)
        with self.reconstructing(loop, self.current, step_plan):  # `current`: the numbering of `step_plan`
            self._apply_step(loop, step_plan)
        if self.config.recalibrate_bn:
            recalibrate_bn_(loop.module, training_batches(loop, self.config.recalibrate_bn))
        after = self.budget.cost(self.composed)
        record.update(type="prune_step", step=loop.state.step, index=len(self.steps), macs=self._macs_ratio())
        record.update(self.budget.record(self.composed))
        record.update(epoch=round(loop.state.step / loop.steps_per_epoch, 4), decision_s=round(self.decision_s, 3))
        log_to(loop, record)
        if after <= self.budget.limit:
            self._close_window()
            self._finish()
        else:
            self._schedule(loop, before - after, after - self.budget.limit)

    def _land(self, step_plan: ChannelPlan, record: dict[str, Any]) -> ChannelPlan:
        """The decided step, changed where needed so the run lands within LANDING_WINDOW under the target (one
        unit of a group can be several percent of the cost), as the one-shot methods' plans do.

        A step that stays above the target is kept while some later removals could still land the model
        (`_landing_drops`); when none could (the widths left would be stranded), its cut is made one unit
        smaller or larger, the least change first, until they could. A step that ends more than the window
        under the target is replaced by the first of these that lands: the decided cut with whole units
        given back and traded between groups; a uniform cut of the remaining cost over every group, landed
        the same way; the decided cut given back unit by unit, each time completed by the unit removals that
        land (`_descend`); a stranded step is landed this way too when no resizing helps (and kept as decided
        when even that does not land). Removed channels never come back and no group goes below its lowest
        width, so a run ends under the window only when the widths its earlier steps left hold no plan in it."""
        floor, limit = self._window()
        cost = self.budget.cost(step_plan, self.current)
        decided = {gid: gp.channels - len(gp.keep) for gid, gp in step_plan.groups.items()}
        if floor <= cost <= limit:
            return step_plan
        scores = self._landing_scores()
        if cost > limit:
            if self._landable(decided):
                return step_plan
            resized = self._landable_resize(decided)
            if resized is not None:
                record.update(landing="resized", resized=resized)
                return self._plan_for(resized, step_plan, scores)
        lowest = {g.id: self.lowest_width(g.id) for g in self.current.prunable}
        candidates = {}
        if cost <= limit:
            candidates["grown"] = fill_plan(
                step_plan, self.current, self.budget.round_to, scores=scores, budget=limit, window=LANDING_WINDOW,
                lowest=lowest, measure=self.budget.measure(self.current),
            )  # fmt: skip
        if not self._lands(candidates.get("grown")):
            measure = self.budget.measure(self.current)
            cut = uniform_plan(
                self.current, limit / self.cost_without({}), scores=scores, measure=measure, budget=limit
            )
            candidates["uniform"] = land_plan(
                cut, self.current, self.config, limit, scores, budget=self.budget, lowest=lowest
            )
            if not self._lands(candidates["uniform"]):
                descent = self._descend(decided)
                candidates["descent"] = None if descent is None else self._plan_for(descent, step_plan, scores)
        costs = [
            (self.budget.cost(p, self.current), name, p)
            for name, p in candidates.items()
            if p is not None and self._keeps_lowest(p, lowest)
        ]
        fallback = (cost, "none", step_plan)  # nothing better: the decided step as it is
        best = max((c for c in costs if c[0] <= limit), key=lambda c: c[0], default=fallback)
        if cost > limit and best[0] < floor:
            return step_plan  # stranded, and landing now would not land either: the steps go on as decided
        record.update(landed_from=round(self.budget.fraction(cost), 5), landing=best[1])
        return best[2]

    def _window(self) -> tuple[float, float]:
        """(floor, ceiling) of the cost (in the budget's unit) a landed run may end at."""
        return (1 - LANDING_WINDOW) * self.budget.limit, self.budget.limit

    def _lands(self, plan: ChannelPlan | None) -> bool:
        floor, limit = self._window()
        return plan is not None and floor <= self.budget.cost(plan, self.current) <= limit

    def _further(self, gid: str, drops: dict[str, int]) -> list[int]:
        """The available counts of group `gid` that remove more than `drops` does, ascending."""
        return [n for n in self.counts(gid) if n > drops.get(gid, 0)]

    def _plan_for(self, drops: dict[str, int], step_plan: ChannelPlan, scores: torch.Tensor) -> ChannelPlan:
        """The plan removing `drops[gid]` channels per group: the channels the decided step keeps stay kept,
        given-back ones return best-scored first, extra ones go worst-scored first."""
        keep = {gid: self.current.prunable_group(gid).channels - n for gid, n in drops.items() if n}
        return plan_from_scores(self.current, kept_first(scores, step_plan.keep_mask(self.current)), keep)

    def _landable_resize(self, decided: dict[str, int], most_units: int = 8) -> dict[str, int] | None:
        """The decided cut made `units` smaller or larger in each decided group (1, then 2, ...; smaller first)
        so that it stays above the target and later removals can still land the model; None if none does."""
        options = {gid: self.counts(gid) for gid in decided}
        for units in range(1, most_units + 1):
            for sign in (-1, +1):
                drops = {gid: self._moved(options[gid], n, sign * units) for gid, n in decided.items()}
                removes = any(drops.values()) and drops != decided
                if removes and self.cost_without(drops) > self.budget.limit and self._landable(drops):
                    return drops
        return None

    def _descend(self, decided: dict[str, int]) -> dict[str, int] | None:
        """Drops that land in the window, searched from the widths before the step: the decided cut given
        back one unit at a time (the whole cut first), each time completed by the unit removals over every
        group that land (`_landing_drops`). None when no such plan exists."""
        options = {gid: self.counts(gid) for gid in decided}
        for units in range(max((len(c) for c in options.values()), default=0) + 1):
            drops = {gid: self._moved(options[gid], n, -units) for gid, n in decided.items()}
            landed = self._landing_drops(drops)
            if landed is not None:
                return landed
        return None

    @staticmethod
    def _moved(counts: list[int], decided: int, units: int) -> int:
        """The available count `units` steps from the decided one (negative: fewer channels; 0 is none)."""
        steps = [0, *counts]
        index = steps.index(decided) if decided in steps else 0
        return steps[min(max(index + units, 0), len(steps) - 1)]

    def _landable(self, drops: dict[str, int], room: float = 3.0) -> bool:
        """Whether later removals could still land the model after `drops` (above the target): yes at once when
        the cost still to remove exceeds `room` times the largest saving of one more unit of any group (later
        steps check again, nearer the target), else when `_landing_drops` finds a landing."""
        now = self.cost_without(drops)
        savings = [
            now - self.cost_without({**drops, g.id: more[0]})
            for g in self.current.prunable
            if (more := self._further(g.id, drops))
        ]
        if not savings:
            return False
        if now - self.budget.limit > room * max(savings):
            return True
        return self._landing_drops(drops) is not None

    def _landing_drops(
        self, drops: dict[str, int], max_bins: int = 4000, exact_checks: int = 256, per_group: int = 32
    ) -> dict[str, int] | None:
        """`drops` plus further unit removals over every group that bring the cost into the window, or None.

        A subset sum: each group's possible further removals, with the cost each saves on its own (exact), are
        combined group by group over sums binned finely (a bin is 1/8 of the window, coarser when that would
        exceed `max_bins` bins; at most `per_group` removal sizes per group, the smallest, bound the work on wide
        networks). Savings add up to at most their sum (a conv reading a pruned group and writing
        another saves the product term once, not twice), so combinations are checked with the exact cost model
        from the smallest summed saving that could land upward. Costs only fall as channels go, so a removal
        that alone overshoots the window is never part of a landing."""
        (floor, limit), now = self._window(), self.cost_without(drops)
        if now <= limit:
            return dict(drops) if now >= floor else None
        low, high = now - limit, now - floor  # cost to save: at least `low`, at most `high`
        reach = 1.5 * high  # summed savings worth checking (the exact saving of a combination is at most its sum)
        width = max((high - low) / 8, reach / max_bins)
        sums: dict[int, tuple[float, dict[str, int]]] = {0: (0.0, {})}
        for g in self.current.prunable:
            removals = []
            for n in self._further(g.id, drops)[:per_group]:
                saved = now - self.cost_without({**drops, g.id: n})
                if saved > high:
                    break
                removals.append((n, saved))
            grown = dict(sums)
            for total, choice in sums.values():
                for n, saved in removals:
                    if total + saved <= reach:
                        key = round((total + saved) / width)
                        if key not in grown:
                            grown[key] = (total + saved, {**choice, g.id: n})
            sums = grown
        near = sorted((v for v in sums.values() if v[0] >= low), key=lambda v: v[0])
        for _, choice in near[:exact_checks]:
            trial = {**drops, **choice}
            if floor <= self.cost_without(trial) <= limit:
                return trial
        return None

    def _landing_scores(self) -> torch.Tensor:
        """Which channels a landing keeps: in each group, the order of the criterion its last removal step used
        (l2 for a group no step has touched, and where the criterion reads gradients, which may be gone)."""
        by_criterion = {"l2": channel_scores(self.current, "l2").detach().float()}
        scores = by_criterion["l2"].clone()
        for g in self.current.prunable:
            criterion = self.ranked_by.get(g.id, "l2")
            criterion = "l2" if CRITERIA.get(criterion).needs_grad else criterion
            if criterion not in by_criterion:
                by_criterion[criterion] = channel_scores(self.current, criterion).detach().float()
            span = slice(g.offset, g.offset + g.channels)
            scores[span] = by_criterion[criterion][span]
        return scores

    def _keeps_lowest(self, plan: ChannelPlan, lowest: dict[str, int]) -> bool:
        return all(len(gp.keep) >= lowest[gid] for gid, gp in plan.groups.items())

    def _apply_step(self, loop, step_plan: ChannelPlan) -> None:
        apply_plan_(loop, step_plan, self.example_inputs, groups=self.current)
        self.steps.append(step_plan.to_dict())
        self.composed = compose_plans(self.composed, step_plan)
        device = next(loop.module.parameters()).device
        self.current = analyze(loop.module, self.example_inputs.to(device), ignore=self.config.ignore)

    def _close_window(self) -> None:
        self.window_s += time.perf_counter() - self._window_started
        self._window_started = None

    def _finish(self) -> None:
        self.plan, self.deploy = self.composed, plan_cost(self.groups, self.composed)
        self.release_calibration()  # the last removal step: no refit follows
        target_macs = self.budget.report(None)["target_macs"]
        self.plan.info.update(method=self.method, target_macs=target_macs, budget=self.budget.identity())
        self.plan.info.update(steps=len(self.steps), macs=self.deploy.macs, params=self.deploy.params)
        self.plan.info.update(dense_macs=self.dense.macs)
        log.info(
            "%s: %d removal steps, %s %.3f of dense (target %.3f); decisions %.1f s of a %.1f s window",
            self.method,
            len(self.steps),
            self.budget.unit,
            self.budget.fraction(self.budget.cost(self.composed)),
            self.budget.fraction(self.budget.target),
            self.decision_s,
            self.window_s,
        )

    def _macs_ratio(self) -> float:
        return self.current_macs() / self.dense.macs

    def current_macs(self) -> float:
        return float(plan_cost(self.groups, self.composed).macs)

    # ------------------------------------------------------------------ helpers for `select`
    def unit(self, gid: str) -> int:
        """Width granularity: the budget's rounding multiple, and whole positions of grouped convs."""
        return width_unit(self.budget.round_to, self.groups.prunable_group(gid))

    def lowest_width(self, gid: str) -> int:
        """The fewest channels the group may end with: its minimum width raised to a multiple of the unit
        (or its whole dense width when that is smaller)."""
        dense, unit = self.groups.prunable_group(gid).channels, self.unit(gid)
        return min(dense, math.ceil(self.min_keep[gid] / unit) * unit)

    def counts(self, gid: str) -> list[int]:
        """The numbers of channels group `gid` can lose now, ascending: each leaves a multiple of the unit,
        not below `lowest_width` (a dense width off the unit's grid steps down onto it first)."""
        width, unit = self.current.prunable_group(gid).channels, self.unit(gid)
        lowest = self.lowest_width(gid)
        below = range((width - 1) // unit * unit, lowest - 1, -unit)  # grid widths under the current one
        return [width - w for w in below if w >= lowest]

    def first_count(self, counts: list[int], wanted: float) -> int:
        """The smallest available count of at least `wanted` channels (the largest when none is)."""
        return next((n for n in counts if n >= wanted), counts[-1])

    def to_target(self, gid: str, counts: list[int]) -> int | None:
        """The fewest of `counts` with which group `gid` alone brings the model within the budget, if any."""
        return next((n for n in counts if self.cost_without({gid: n}) <= self.budget.limit), None)

    lowest_widths_are = "every group at its minimum width"  # what `lowest_width` means, for errors

    def check_reachable(self, what: str) -> None:
        """ConfigError before training when the lowest widths this method can reach miss the budget."""
        plan = ChannelPlan(
            {g.id: GroupPlan(g.channels, list(range(self.lowest_width(g.id)))) for g in self.groups.prunable}
        )
        self.budget.check_reachable(plan, what)

    @torch.no_grad()
    def cost_without(self, drops: dict[str, int]) -> float:
        """The cost (in the budget's unit) of the current model with `drops[gid]` more channels removed per group."""
        mask = torch.ones(self.current.global_channels, dtype=torch.float64)
        for gid, count in drops.items():
            g = self.current.prunable_group(gid)
            mask[g.offset : g.offset + count] = 0  # the cost depends on how many, not on which
        return float(self.budget.soft(mask, self.current))

    def kept_by(self, criterion: str, counts: dict[str, int], scores: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        """Per group, the channels `criterion` keeps when `counts[gid]` are removed (indices of the model now)."""
        if criterion not in scores:
            scores[criterion] = channel_scores(self.current, criterion).detach().float().cpu()
        keep = {gid: self.current.prunable_group(gid).channels - n for gid, n in counts.items()}
        plan = plan_from_scores(self.current, scores[criterion], keep)
        return {gid: plan.groups[gid].keep for gid in counts if gid in plan.groups}

    def prepare_scores(self, loop, criteria: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Scores of criteria that need gradients, from the held-out loss (others are computed lazily)."""
        scores: dict[str, torch.Tensor] = {}
        if any(CRITERIA.get(c).needs_grad for c in criteria):
            taylor_gradients_(loop.module, *self.held_out(loop))
            for c in criteria:
                if CRITERIA.get(c).needs_grad:
                    scores[c] = channel_scores(self.current, c).detach().float().cpu()
            loop.module.zero_grad(set_to_none=True)
        return scores

    # ------------------------------------------------------------------ checkpoints and report
    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "next_step": self.next_step,
            "decision_s": self.decision_s,
            "window_s": self.window_s + (time.perf_counter() - self._window_started if self._window_started else 0.0),
            "evaluations": self.evaluations,
            "used": dict(self.used),
            "ranked_by": dict(self.ranked_by),
            "done": self.frozen,
            "reconstruction": self.reconstruction.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], loop) -> None:
        """Replay every removal step taken before the checkpoint (before the weights are loaded)."""
        for step in state["steps"]:
            self._apply_step(loop, ChannelPlan.from_dict(step))
        self.next_step, self.decision_s = state["next_step"], state["decision_s"]
        self.evaluations, self.used = state["evaluations"], dict(state["used"])
        self.ranked_by = dict(state.get("ranked_by", {}))
        self.window_s = state["window_s"]
        self.reconstruction.load_state_dict(state.get("reconstruction", []))
        if state["done"]:
            self._finish()
        elif self.steps:  # resumed inside the pruning window: its clock runs on
            self._window_started = time.perf_counter()

    def report_extra(self) -> dict[str, Any]:
        return {
            "prune_steps": len(self.steps),
            "prune_decision_s": round(self.decision_s, 2),
            "prune_recovery_s": round(max(0.0, self.window_s - self.decision_s), 2),
            "prune_evaluations": self.evaluations,
            "decision_images": len(self._images) if self._images is not None else self.config.decision_images,
            "chosen": dict(self.used),
        }
