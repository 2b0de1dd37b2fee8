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

from lappdeploy.errors import ConfigError, LappDeployError, SurgeryError
from lappdeploy.methods.base import PruneConfig
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
    cost_model,
    fill_plan,
    plan_cost,
    plan_from_scores,
    uniform_plan,
)

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
    step the gap to the next is set so that the steps still needed (estimated from the MACs the last one
    removed) end with the span; steps still needed at its end follow each other at once, so the model
    meets its target by then. The run continues compact."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: PruneConfig) -> None:
        super().__init__(model, groups, config)
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
        widths = GroupThresholds(groups, min_channels=self.config.min_channels, round_to=self.config.round_to)
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

    def _schedule(self, loop, removed_macs: float, remaining_macs: float) -> None:
        """The next removal step: the steps still needed, estimated from the MACs the last one removed,
        spread evenly over what is left of the span (at once when nothing is left)."""
        now = loop.state.step
        needed = max(1, math.ceil(remaining_macs / max(removed_macs, 1.0)))
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
        before = plan_cost(self.groups, self.composed).macs
        keep, record = self._decide(loop)
        step_plan = ChannelPlan(
            groups={gid: GroupPlan(self.current.prunable_group(gid).channels, sorted(k)) for gid, k in keep.items()}
        )
        criterion = record.get("criterion", getattr(self.config, "criterion", "l2"))
        self.ranked_by.update({gid: criterion for gid in keep})
        step_plan = self._land(step_plan, record)
        with self.reconstructing(loop, self.current, step_plan):  # `current`: the numbering of `step_plan`
            self._apply_step(loop, step_plan)
        if self.config.recalibrate_bn:
            recalibrate_bn_(loop.module, training_batches(loop, self.config.recalibrate_bn))
        after = plan_cost(self.groups, self.composed).macs
        record.update(type="prune_step", step=loop.state.step, index=len(self.steps), macs=after / self.dense.macs)
        record.update(epoch=round(loop.state.step / loop.steps_per_epoch, 4), decision_s=round(self.decision_s, 3))
        log_to(loop, record)
        if after <= self.budget_limit():
            self._close_window()
            self._finish()
        else:
            self._schedule(loop, before - after, after - self.target_macs)

    def _land(self, step_plan: ChannelPlan, record: dict[str, Any]) -> ChannelPlan:
        """The step that reaches the target, when it would cut more than LANDING_WINDOW under it (one unit of a
        group can be several percent of the MACs), is replaced so the model lands within the window, as the
        one-shot methods' plans do: first the decided step with whole units given back and traded between
        groups; when that cannot land, a uniform cut of the remaining MACs over every group, landed the same
        way; else the closer of the two, within the ceiling. Removed channels never come back (no group grows
        past its width) and no group goes below its lowest width, so where the widths left leave no plan in the
        window (ResNet-20 near 0.3 with --cap 0.75) the step lands as close below as these two find."""
        limit = self.budget_limit()
        macs = plan_cost(self.current, step_plan).macs
        if macs > limit or macs >= (1 - LANDING_WINDOW) * limit:
            return step_plan
        scores, lowest = self._landing_scores(), {g.id: self.lowest_width(g.id) for g in self.current.prunable}
        grown = fill_plan(
            step_plan, self.current, self.config.round_to,
            scores=scores, budget=limit, window=LANDING_WINDOW, lowest=lowest,
        )  # fmt: skip
        candidates = [grown]
        if plan_cost(self.current, grown).macs < (1 - LANDING_WINDOW) * limit:
            cut = uniform_plan(self.current, limit / self.macs_without({}), scores=scores)
            candidates.append(land_plan(cut, self.current, self.config, limit, scores, lowest))
        costs = [(plan_cost(self.current, p).macs, p) for p in candidates if self._keeps_lowest(p, lowest)]
        best = max((c for c in costs if c[0] <= limit), key=lambda c: c[0], default=(macs, step_plan))[1]
        record.update(landed_from=round(macs / self.dense.macs, 5), landing="uniform" if best is not grown else "grown")
        return best

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
        self.plan.info.update(method=self.method, target_macs=self.config.target_macs, steps=len(self.steps))
        self.plan.info.update(macs=self.deploy.macs, params=self.deploy.params, dense_macs=self.dense.macs)
        log.info(
            "%s: %d removal steps, deploy MACs %.3f of dense (target %.3f); decisions %.1f s of a %.1f s window",
            self.method,
            len(self.steps),
            self.deploy.macs / self.dense.macs,
            self.config.target_macs,
            self.decision_s,
            self.window_s,
        )

    def current_macs(self) -> float:
        return float(plan_cost(self.groups, self.composed).macs)

    # ------------------------------------------------------------------ helpers for `select`
    def unit(self, gid: str) -> int:
        """Width granularity: round_to, and whole positions of grouped convs."""
        return math.lcm(self.config.round_to, self.groups.prunable_group(gid).segments)

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
        return next((n for n in counts if self.macs_without({gid: n}) <= self.budget_limit()), None)

    lowest_widths_are = "every group at its minimum width"  # what `lowest_width` means, for errors

    def check_reachable(self, what: str) -> None:
        """ConfigError before training when the lowest widths this method can reach miss the budget."""
        plan = ChannelPlan(
            {g.id: GroupPlan(g.channels, list(range(self.lowest_width(g.id)))) for g in self.groups.prunable}
        )
        cheapest = plan_cost(self.groups, plan).macs
        if cheapest > self.budget_limit():
            raise ConfigError(
                f"--target-macs {self.config.target_macs} is unreachable: with {what} the model needs "
                f"{cheapest / self.dense.macs:.3f} of its dense MACs"
            )

    def macs_without(self, drops: dict[str, int]) -> float:
        """Deploy MACs per image of the current model with `drops[gid]` more channels removed per group."""
        mask = torch.ones(self.current.global_channels, dtype=torch.float64)
        for gid, count in drops.items():
            g = self.current.prunable_group(gid)
            mask[g.offset : g.offset + count] = 0  # the cost depends on how many, not on which
        return float(cost_model(self.current)(mask)[0])

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
