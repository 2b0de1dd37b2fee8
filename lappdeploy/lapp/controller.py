"""LAPP as hooks on a training loop: `prepare_` a model, then call the controller's hooks from the loop.

    controller = lapp.prepare_(model, example_inputs, CompressConfig(target_macs=0.5, prune_epochs=3))
    trainer = Trainer(model, ..., hooks=[controller])   # our loop; or call the hooks from your own

During the pruning phase every forward pass masks each prunable group by its learned threshold
(masks.py); after every backward pass the controller adds the MACs penalty's gradient to the thresholds
and steps their own Adam optimizer; at the end of the phase it freezes the masks, guarantees the budget,
rounds widths and physically removes the masked channels (freeze.py); training then continues on the
compact model. State (thresholds, their optimizer, the plan once applied) is in `state_dict`, so a run
resumes at any epoch of the schedule.

Any training loop can drive it: the hooks read `loop.module` (the unwrapped model), `loop.optimizer`,
`loop.steps_per_epoch` and `loop.state.step` (optimizer steps done), and use, when present,
`loop.device`, `loop.dist` (DDP: thresholds' gradients are averaged over ranks), `loop.scaler` (fp16
gradient scaling), `loop.rewrap_()` (re-wrap DDP after removal) and `loop.log(record)`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from lappdeploy.config import CompressConfig
from lappdeploy.errors import ConfigError
from lappdeploy.lapp.budget import cubic_budget
from lappdeploy.lapp.freeze import BUDGET_TOLERANCE, apply_plan_, log_to, plan_within_budget
from lappdeploy.lapp.masks import ThresholdMask
from lappdeploy.surgery.bypass import add_bypass_, has_bypass
from lappdeploy.surgery.cost import cost_model, plan_cost
from lappdeploy.surgery.graph import ChannelGroups, SurgeryError, analyze
from lappdeploy.surgery.masking import ChannelMasker
from lappdeploy.surgery.plan import ChannelPlan, channel_scores
from lappdeploy.train.hooks import Hook

__all__ = ["LappController", "minimum_plan", "prepare_"]

log = logging.getLogger(__name__)


def minimum_plan(groups: ChannelGroups, mask: ThresholdMask, scores: torch.Tensor) -> ChannelPlan:
    """Every prunable group at its minimum width (best-scored channels): the cheapest reachable plan."""
    return ChannelPlan.from_keep_mask(groups, mask.hard(mask.normalise(scores), torch.full((len(mask.ids),), math.inf)))


def prepare_(model: nn.Module, example_inputs: torch.Tensor, config: CompressConfig | None = None) -> LappController:
    """Set `model` up for LAPP (in place): add the bypass blocks when `config.bypass == "rep"`, find the
    channel groups, create one threshold per prunable group and install the masks. Returns the
    controller whose hooks the training loop calls. Raises ConfigError when the MACs target cannot be
    reached even with every group at its minimum width."""
    config = config or CompressConfig()
    if config.bypass == "rep" and not has_bypass(model):
        add_bypass_(model, example_inputs, ignore=config.ignore)
    groups = analyze(model, example_inputs, ignore=config.ignore)
    if not groups.prunable:
        raise ConfigError(f"{type(model).__name__} has no prunable channel group (see `lappdeploy inspect`)")
    return LappController(model, groups, config)


class LappController(Hook):
    """Learned per-group thresholds under a progressive MACs budget; see the module docstring."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: CompressConfig) -> None:
        self.config = config
        self.model = model
        self.groups = groups
        self.example_inputs = groups.example_inputs.detach().cpu()
        self.mask = ThresholdMask(groups, tau=config.tau, min_channels=config.min_channels, round_to=config.round_to)
        self.cost = cost_model(groups)
        self.dense = plan_cost(groups, ChannelPlan())  # deploy MACs / params of the dense model
        self.target_macs = config.target_macs * self.dense.macs
        floor = plan_cost(groups, minimum_plan(groups, self.mask, channel_scores(groups, config.score).detach()))
        if floor.macs > self.target_macs * (1 + BUDGET_TOLERANCE):
            raise ConfigError(
                f"--target-macs {config.target_macs} is unreachable: with every group at its minimum width "
                f"(--min-channels {config.min_channels}, --round-to {config.round_to}) the model still needs "
                f"{floor.macs / self.dense.macs:.3f} of its dense MACs; raise --target-macs or lower those"
            )
        device = next(model.parameters()).device
        # t_g = 0 at init: every normalised score (about 1) is above it, so the masks start all ones
        self.thresholds = nn.Parameter(torch.zeros(len(self.mask.ids), device=device))
        self.optimizer = torch.optim.Adam([self.thresholds], lr=config.threshold_lr, weight_decay=0.0)
        self.plan: ChannelPlan | None = None  # set when the masks are frozen and the channels removed
        self.final_macs: int | None = None
        self._masker: ChannelMasker | None = ChannelMasker(groups)
        self._pre_hook = model.register_forward_pre_hook(self._set_masks)
        self._normalised: torch.Tensor | None = None  # this step's normalised scores (detached)
        self._last: dict[str, torch.Tensor | float] = {}  # this step's MACs, budget, penalty (for logs)

    def __deepcopy__(self, memo: dict) -> LappController:
        # A deep copy of the prepared model (EMA, snapshots) copies its forward pre-hook, a bound method of
        # this controller: share the controller (its torch-pruning graph cannot be copied) instead.
        return self

    # ------------------------------------------------------------------ state of the schedule
    @property
    def frozen(self) -> bool:
        return self.plan is not None

    def phase_steps(self, loop) -> int:
        return self.config.prune_epochs * loop.steps_per_epoch

    def budget_macs(self, step: int, steps_per_epoch: int) -> float:
        """F_T at `step` optimizer steps (fractional epochs), in MACs per sample."""
        return cubic_budget(step / steps_per_epoch, self.config.prune_epochs, self.dense.macs, self.target_macs)

    def normalised_scores(self) -> torch.Tensor:
        return self.mask.normalise(channel_scores(self.groups, self.config.score))

    def current_mask(self) -> torch.Tensor:
        """The hard kept mask the thresholds give now (0/1 over the global channel vector)."""
        with torch.no_grad():
            return self.mask.hard(self.normalised_scores(), self.thresholds.detach())

    def current_macs(self) -> float:
        """Deploy MACs per sample of the model as masked now (after the freeze: of the pruned model)."""
        if self.frozen:
            return float(self.final_macs)
        with torch.no_grad():
            return float(self.cost(self.current_mask())[0])

    # ------------------------------------------------------------------ hooks
    def _set_masks(self, module: nn.Module, _inputs: Any) -> None:
        """Forward pre-hook: this forward's masks from the current scores and thresholds."""
        if self._masker is None:
            return
        if module.training and torch.is_grad_enabled():
            scores = self.normalised_scores()
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

    def after_backward(self, loop) -> None:
        """Thresholds' update: task-loss gradient (through the masks) + MACs penalty gradient, then Adam."""
        if self.frozen or self._normalised is None:
            return
        task_grad = self.thresholds.grad
        task_grad = torch.zeros_like(self.thresholds) if task_grad is None else task_grad.detach().clone()
        scaler = getattr(loop, "scaler", None)
        if scaler is not None:  # fp16 AMP: the loss was scaled, and these gradients are not in its optimizer
            task_grad /= scaler.get_scale()
        task_grad = torch.nan_to_num(task_grad, nan=0.0, posinf=0.0, neginf=0.0)  # a skipped fp16 step
        dist = getattr(loop, "dist", None)
        if dist is not None and dist.is_distributed:
            dist.all_reduce_sum_(task_grad)
            task_grad /= dist.world_size
        # The penalty moves thresholds only: the scores are detached here, so it never acts on weights.
        macs, _ = self.cost(self.mask(self._normalised, self.thresholds))
        budget = self.budget_macs(loop.state.step, loop.steps_per_epoch)
        penalty = self.config.penalty * torch.log(macs / budget) ** 2
        self.thresholds.grad = None
        penalty.backward()
        self.thresholds.grad += task_grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._last = {"macs": macs.detach(), "budget": budget, "penalty": penalty.detach()}

    def on_step_end(self, loop, loss: torch.Tensor) -> None:
        if self.frozen:
            return
        step = loop.state.step
        done = step >= self.phase_steps(loop)
        if self._last and (step % self.config.log_every == 0 or done):
            log_to(loop, self.step_record(step, loop.steps_per_epoch))
        if done:
            self.freeze_(loop)

    def step_record(self, step: int, steps_per_epoch: int) -> dict[str, Any]:
        """Budget, MACs (as fractions of dense), penalty, every threshold and kept width, at `step`."""
        mask = self.current_mask().cpu()
        thresholds = self.thresholds.detach().cpu().tolist()
        return {
            "type": "lapp",
            "step": step,
            "epoch": round(step / steps_per_epoch, 4),
            "budget": self._last["budget"] / self.dense.macs,
            "macs": float(self._last["macs"]) / self.dense.macs,
            "penalty": float(self._last["penalty"]),
            "thresholds": {gid: round(t, 5) for gid, t in zip(self.mask.ids, thresholds, strict=True)},
            "kept": {g.id: int(mask[g.offset : g.offset + g.channels].sum()) for g in self.groups.prunable},
        }

    def on_epoch_end(self, loop, metrics: dict[str, Any]) -> None:
        metrics["macs_ratio"] = round(self.current_macs() / self.dense.macs, 5)
        metrics["budget_ratio"] = round(self.budget_macs(loop.state.step, loop.steps_per_epoch) / self.dense.macs, 5)
        metrics["pruned"] = self.frozen

    def freeze_(self, loop) -> ChannelPlan:
        """End of the pruning phase: fix the masks, meet the budget, round, remove the channels."""
        with torch.no_grad():
            normalised = self.normalised_scores()
        limit = self.target_macs * (1 + BUDGET_TOLERANCE)
        plan, offset = plan_within_budget(
            self.groups, self.mask, normalised, self.thresholds, limit, round_to=self.config.round_to
        )
        cost = plan_cost(self.groups, plan)
        plan.info.update(
            method="lapp",
            target_macs=self.config.target_macs,
            dense_macs=self.dense.macs,
            dense_params=self.dense.params,
            macs=cost.macs,
            params=cost.params,
            threshold_offset=offset,
            round_to=self.config.round_to,
            score=self.config.score,
            thresholds={gid: float(t) for gid, t in zip(self.mask.ids, self.thresholds.detach().cpu(), strict=True)},
        )
        if offset > 0:
            log.info("raised every threshold by %.4f to meet the MACs budget", offset)
        self._apply(loop, plan)
        log.info(
            "pruning phase over: removed %d channels; deploy MACs %.3f of dense (target %.3f)",
            sum(len(gp.dropped) for gp in plan.groups.values()),
            cost.macs / self.dense.macs,
            self.config.target_macs,
        )
        log_to(
            loop,
            {
                "type": "lapp_freeze",
                "step": loop.state.step,
                "epoch": round(loop.state.step / loop.steps_per_epoch, 4),
                "macs": cost.macs / self.dense.macs,
                "threshold_offset": offset,
            },
        )
        return plan

    def _apply(self, loop, plan: ChannelPlan) -> None:
        # The mask hooks go first: removal deep-copies and re-traces the model, which must not see them.
        self.detach_hooks()
        apply_plan_(loop, plan, self.example_inputs, groups=self.groups)
        self.plan = plan
        self.final_macs = int(plan.info["macs"])
        self.thresholds.grad = None

    def detach_hooks(self) -> None:
        """Remove the mask hooks from the model (idempotent)."""
        if self._masker is not None:
            self._masker.remove()
            self._masker = None
            self._pre_hook.remove()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "group_ids": list(self.mask.ids),
            "thresholds": self.thresholds.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "plan": self.plan.to_dict() if self.plan is not None else None,
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
        if state.get("plan") is not None:
            self._apply(loop, ChannelPlan.from_dict(state["plan"]))
