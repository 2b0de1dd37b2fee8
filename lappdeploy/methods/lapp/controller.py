"""LAPP as hooks on a training loop: `prepare_` a model, then call the controller's hooks from the loop.

    controller = prepare_(model, example_inputs, LappConfig(target_macs=0.5, prune_epochs=3))
    trainer = Trainer(model, ..., hooks=[controller])   # our loop; or call the hooks from your own

During the pruning phase every forward pass masks each prunable group by its learned threshold
(masks.py); after every backward pass the controller adds the budget penalty's gradient to the thresholds
(the run's budget: MACs, parameters or predicted latency, `methods.budgets`) and steps their own Adam
optimizer; at the end of the phase it freezes the masks, guarantees the budget,
rounds widths and physically removes the masked channels (`methods.common`); training then continues on
the compact model. State (thresholds, their optimizer, the plan once applied) is in `state_dict`, so a run
resumes at any epoch of the schedule.

Any training loop can drive it (`lappdeploy.hooks.TrainingLoop` lists what the hooks read): under DDP
the thresholds' gradients are averaged over ranks, under fp16 AMP they are unscaled.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from lappdeploy.methods.budgets import Budget
from lappdeploy.methods.common import PruningHookBase, log_to, plan_within_budget, smallest_offset
from lappdeploy.methods.lapp import LappConfig
from lappdeploy.methods.lapp.budget import cubic_budget
from lappdeploy.methods.lapp.masks import ThresholdMask
from lappdeploy.methods.prepare import prepare_pruning_
from lappdeploy.surgery import (
    ChannelGroups,
    ChannelMasker,
    ChannelPlan,
    SurgeryError,
    channel_scores,
    cost_model,
    plan_cost,
)

__all__ = ["LappController", "prepare_"]

log = logging.getLogger(__name__)

_INIT_MARGIN = 0.01  # initial threshold below a group's lowest normalised score (scores average 1)
PROJECTION_TOLERANCE = 0.01  # the masked cost may exceed the next step's budget by this fraction before projection
PROJECTION_BAND = 0.05  # ... and fall below it by this fraction
_PROJECTION_STEPS = 20  # bisection halvings: ~1e-6 of the score range, a few ms per projected step


def prepare_(model: nn.Module, example_inputs: torch.Tensor, config: LappConfig | None = None) -> LappController:
    """Set `model` up for LAPP (in place): add the bypass blocks (`config.bypass`), find the
    channel groups, create one threshold per prunable group and install the masks. Returns the
    controller whose hooks the training loop calls. Raises ConfigError when the target cannot be reached
    even with every group at its minimum width."""
    config = config or LappConfig()
    groups, budget = prepare_pruning_(model, example_inputs, config)
    return LappController(model, groups, config, budget)


class LappController(PruningHookBase):
    """Learned per-group thresholds under a progressive budget; see the module docstring."""

    method = "lapp"

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: LappConfig, budget: Budget) -> None:
        super().__init__(model, groups, config, budget)
        self.mask = ThresholdMask(groups, tau=config.tau, min_channels=config.min_channels, round_to=self.round_to)
        self.macs_model = cost_model(groups)  # deploy MACs of a mask, for logs whatever the budget counts
        device = next(model.parameters()).device
        # t_g, one per prunable group in `mask.ids` order, with its own Adam optimizer; it starts just below
        # the group's lowest normalised score: every mask is all ones, and the first update already prunes
        self.thresholds = nn.Parameter(self._edge_of_scores().to(device))
        self.optimizer = torch.optim.Adam([self.thresholds], lr=config.threshold_lr, weight_decay=0.0)
        self.threshold_offset = 0.0  # common offset the budget guarantee added at the freeze
        self.snapped: ChannelPlan | None = None  # the final, rounded plan, fixed for the phase's last stretch
        self._snapped_mask: torch.Tensor | None = None
        self._masker: ChannelMasker | None = ChannelMasker(groups)
        self._pre_hook = model.register_forward_pre_hook(self._set_masks)
        self._normalised: torch.Tensor | None = None  # this step's normalised scores (detached)
        # this step's soft cost, the schedule's limit and the penalty (for logs), in the budget's unit
        self._last: dict[str, torch.Tensor | float] = {}
        self._step_limit: float | None = None  # the schedule's limit for the next training step (set by the hooks)

    def __deepcopy__(self, memo: dict) -> LappController:
        # A deep copy of the prepared model (EMA, snapshots) copies its forward pre-hook, a bound method of
        # this controller: share the controller (its torch-pruning graph cannot be copied) instead.
        return self

    def _edge_of_scores(self) -> torch.Tensor:
        with torch.no_grad():
            normalised = self.normalised_scores().cpu()
        lowest = torch.full((len(self.mask.ids),), math.inf).scatter_reduce(
            0, self.mask.owner(normalised.device), normalised, reduce="amin"
        )
        return lowest - _INIT_MARGIN

    # ------------------------------------------------------------------ state of the schedule
    def scheduled_limit(self, step: int, steps_per_epoch: int) -> float:
        """F_T at `step` optimizer steps (fractional epochs), in the budget's unit (MACs per image, parameters,
        or predicted ms per batch)."""
        return cubic_budget(step / steps_per_epoch, self.config.prune_epochs, self.budget.dense, self.budget.target)

    def normalised_scores(self) -> torch.Tensor:
        return self.mask.normalise(channel_scores(self.groups, self.config.score))

    def current_mask(self) -> torch.Tensor:
        """The hard kept mask the thresholds give now (0/1 over the global channel vector)."""
        with torch.no_grad():
            return self.mask.hard(self.normalised_scores(), self.thresholds.detach())

    def snap_step(self, loop) -> int:
        """Optimizer step at which the masks are fixed to the final, rounded plan (the last `snap` of the
        phase trains exactly the widths that will be deployed)."""
        return round((1 - self.config.snap) * self.phase_steps(loop))

    def current_cost(self) -> float:
        """What the budget counts of the model as masked now, in its unit."""
        plan = self.plan or self.snapped
        if plan is not None:
            return self.budget.cost(plan)
        with torch.no_grad():
            return float(self.budget.soft(self.current_mask()))

    def current_macs(self) -> float:
        """Deploy MACs per image of the model as masked now (after the freeze: of the pruned model)."""
        if self.frozen:
            return super().current_macs()
        if self.snapped is not None:
            return float(plan_cost(self.groups, self.snapped).macs)
        with torch.no_grad():
            return float(self.macs_model(self.current_mask())[0])

    # ------------------------------------------------------------------ hooks
    def _set_masks(self, module: nn.Module, _inputs: Any) -> None:
        """Forward pre-hook: this forward's masks from the current scores and thresholds."""
        if self._masker is None:
            return
        if self._snapped_mask is not None:  # the widths are fixed: no thresholds, no scores
            self._masker.set(self._snapped_mask)
            return
        if module.training and torch.is_grad_enabled():
            scores = self.normalised_scores()
            if self.config.project and self._step_limit is not None:
                self._project(scores.detach(), self._step_limit)
            self._masker.set(self.mask(scores, self.thresholds))
        else:  # evaluation: hard masks, no graph
            with torch.no_grad():
                scores = self.normalised_scores()
            self._masker.set(self.mask.hard(scores, self.thresholds.detach()))
        self._normalised = scores.detach()

    def _move_to(self, device: torch.device) -> None:
        if self.thresholds.device != device:
            self.thresholds.data = self.thresholds.data.to(device)
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and key != "step":
                        state[key] = value.to(device)

    def on_train_start(self, loop) -> None:
        self._move_to(getattr(loop, "device", self.thresholds.device))
        self._step_limit = self.scheduled_limit(loop.state.step, loop.steps_per_epoch)

    def _task_gradient(self, loop) -> torch.Tensor:
        """The thresholds' gradient from the task loss (through the masks), unscaled and rank-averaged."""
        grad = self.thresholds.grad
        grad = torch.zeros_like(self.thresholds) if grad is None else grad.detach().clone()
        scaler = getattr(loop, "scaler", None)
        if scaler is not None:  # fp16 AMP: the loss was scaled, and these gradients are not in its optimizer
            grad /= scaler.get_scale()
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)  # a skipped fp16 step
        dist = getattr(loop, "dist", None)
        if dist is not None and dist.is_distributed:
            dist.all_reduce_sum_(grad)
            grad /= dist.world_size
        return grad

    def after_backward(self, loop) -> None:
        """Thresholds' update: task-loss gradient (through the masks) + budget penalty gradient, then Adam."""
        if self.frozen or self.snapped is not None or self._normalised is None:
            return
        task_grad = self._task_gradient(loop)
        # The penalty moves thresholds only: the scores are detached here, so it never acts on weights.
        cost = self.budget.soft(self.mask(self._normalised, self.thresholds))
        limit = self.scheduled_limit(loop.state.step, loop.steps_per_epoch)
        penalty = self.config.penalty * torch.log(cost / limit) ** 2
        self.thresholds.grad = None
        penalty.backward()
        self.thresholds.grad += task_grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._last = {"cost": cost.detach(), "limit": limit, "penalty": penalty.detach()}

    @torch.no_grad()
    def _project(self, normalised: torch.Tensor, limit: float) -> None:
        """Hold the masked cost of this training forward at the step's limit: when the hard masks are outside
        [1 - PROJECTION_BAND, 1 + PROJECTION_TOLERANCE] x limit, shift every threshold by the one common
        offset (up or down) that brings them just under it. What the thresholds learned is how the groups
        differ, which a common shift keeps; the penalty still drives that."""
        thresholds = self.thresholds.detach()

        def cost(offset: float) -> float:
            return float(self.budget.soft(self.mask.hard(normalised, thresholds, offset)))

        now = cost(0.0)
        if (1 - PROJECTION_BAND) * limit <= now <= (1 + PROJECTION_TOLERANCE) * limit:
            return
        span = float(normalised.max() - normalised.min()) + 1.0  # from all kept to all at minimum
        low = -span - float(thresholds.max() - thresholds.min())
        offset = smallest_offset(
            lambda o: cost(low + o) <= limit,
            2 * span + float(thresholds.max() - thresholds.min()),
            steps=_PROJECTION_STEPS,
        )
        self.thresholds += low + offset

    def on_step_end(self, loop, loss: torch.Tensor) -> None:
        if self.frozen:
            return
        step = loop.state.step
        self._step_limit = self.scheduled_limit(step, loop.steps_per_epoch)  # the next step's
        if self.snapped is None:
            snap = step >= self.snap_step(loop)
            if self._last and (step % self.config.log_every == 0 or snap):
                log_to(loop, self.step_record(step, loop.steps_per_epoch))
            if snap:
                self.freeze_(loop)
        if step >= self.phase_steps(loop):
            self.remove_(loop)

    def step_record(self, step: int, steps_per_epoch: int) -> dict[str, Any]:
        """At `step`: the schedule's limit (`budget`) and the soft masks' cost (under the budget's kind: macs,
        params or latency) as fractions of dense, the hard masks' MACs, the penalty, every threshold and kept
        width."""
        mask = self.current_mask().cpu()
        thresholds = self.thresholds.detach().cpu().tolist()
        return {
            "type": "lapp",
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "budget": self.budget.fraction(self._last["limit"]),
            "macs": self.current_macs() / self.dense.macs,
            self.budget.kind: self.budget.fraction(float(self._last["cost"])),
            "penalty": float(self._last["penalty"]),
            "thresholds": {gid: round(t, 5) for gid, t in zip(self.mask.ids, thresholds, strict=True)},
            "kept": {g.id: int(mask[g.offset : g.offset + g.channels].sum()) for g in self.groups.prunable},
        }

    def on_epoch_end(self, loop, metrics: dict[str, Any]) -> None:
        super().on_epoch_end(loop, metrics)
        limit = self.scheduled_limit(loop.state.step, loop.steps_per_epoch)
        metrics["budget_ratio"] = round(self.budget.fraction(limit), 5)
        metrics[f"{self.budget.kind}_ratio"] = round(self.budget.fraction(self.current_cost()), 5)

    def freeze_(self, loop) -> ChannelPlan:
        """Fix the masks: meet the budget, round the widths, and train exactly this plan, masked, until the
        phase ends; then `remove_` takes the channels out, which changes nothing the model computes."""
        with torch.no_grad():
            normalised = self.normalised_scores()

        def land(limit: float) -> tuple[ChannelPlan, float]:
            return plan_within_budget(self.groups, self.mask, normalised, self.thresholds, limit, budget=self.budget)

        plan, offset = self.budget.land(land)  # a latency budget may time the plan and land again
        if offset > 0:
            log.info("raised every threshold by %.4f to meet the %s budget", offset, self.budget.kind)
        self.threshold_offset, self.snapped = offset, plan
        self._snapped_mask = plan.keep_mask(self.groups).float().to(self.thresholds.device)
        self.thresholds.grad = None
        macs = plan_cost(self.groups, plan).macs / self.dense.macs
        record = {
            "type": "lapp_freeze",
            "step": loop.state.step,
            "epoch": round(loop.state.step / loop.steps_per_epoch, 4),
            "macs": macs,
            **self.budget.record(plan),
            **self.budget.landing_fields(),
        }
        log_to(loop, {**record, "threshold_offset": offset})
        return plan

    def remove_(self, loop) -> None:
        """End of the pruning phase: remove the fixed plan's channels (physically)."""
        if self.snapped is None:
            self.freeze_(loop)
        self.apply_(loop, self.snapped)
        log.info(
            "pruning phase over: removed %d channels; deploy MACs %.3f of dense; %s %.3f of dense (target %.3f)",
            sum(len(gp.dropped) for gp in self.snapped.groups.values()),
            self.deploy.macs / self.dense.macs,
            self.budget.unit,
            self.budget.fraction(self.current_cost()),
            self.budget.fraction(self.budget.target),
        )

    def apply_(self, loop, plan: ChannelPlan, *, recalibrate: bool = True, reconstruct: bool = True) -> None:
        super().apply_(loop, plan, recalibrate=recalibrate, reconstruct=reconstruct)
        plan.info.update(self.report_extra(), thresholds=self.report_thresholds())
        self.thresholds.grad = None

    def detach_hooks(self) -> None:
        """Remove the mask hooks from the model (idempotent)."""
        if self._masker is not None:
            self._masker.remove()
            self._masker = None
            self._pre_hook.remove()

    def report_thresholds(self) -> dict[str, float]:
        values = self.thresholds.detach().cpu().tolist()
        return {gid: float(t) for gid, t in zip(self.mask.ids, values, strict=True)}

    def report_extra(self) -> dict[str, Any]:
        return {"score": self.config.score, "threshold_offset": self.threshold_offset}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "group_ids": list(self.mask.ids),
            "thresholds": self.thresholds.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "threshold_offset": self.threshold_offset,
            "snapped": self.snapped.to_dict() if self.snapped is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], loop) -> None:
        """Restore thresholds and their optimizer; replay the channel removal if it had happened (called
        before the model's weights are loaded, so they then fit the compact architecture)."""
        if list(state["group_ids"]) != self.mask.ids:
            raise SurgeryError("the checkpoint's LAPP groups differ from this model's; resume with the run's config")
        self._move_to(getattr(loop, "device", self.thresholds.device))
        with torch.no_grad():
            self.thresholds.copy_(state["thresholds"].to(self.thresholds.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.threshold_offset = float(state.get("threshold_offset", 0.0))
        if state.get("snapped") is not None:
            self.snapped = ChannelPlan.from_dict(state["snapped"])
            self._snapped_mask = self.snapped.keep_mask(self.groups).float().to(self.thresholds.device)
        super().load_state_dict(state, loop)
