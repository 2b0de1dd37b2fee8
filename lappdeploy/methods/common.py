"""What every pruning method shares: score thresholds and the budget guarantee (one common offset found by
bisection), plan application in the middle of training (optimizer state carried over, DDP re-wrapped),
the scaffolding of a pruning hook (dense cost, resume, epoch metrics) and the typed result it reports.

A method module imports from here and from `lappdeploy.surgery`, never from another method.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.hooks import Hook
from lappdeploy.methods.base import PruneConfig
from lappdeploy.methods.reconstruct import (
    ReconstructionLog,
    ReconstructionRecord,
    ReconstructionSettings,
    ResourceMeter,
    check_calibration,
    reconstruct_,
)
from lappdeploy.methods.reconstruct.diagnostics import DIAGNOSTIC_IMAGES
from lappdeploy.surgery import (
    ChannelGroups,
    ChannelPlan,
    DeployCost,
    SurgeryError,
    add_bypass_,
    analyze,
    fill_plan,
    has_bypass,
    plan_cost,
    remove_channels_,
    round_plan,
)
from lappdeploy.surgery.graph import resolve_module
from lappdeploy.surgery.plan import RoundTo, width_unit

if TYPE_CHECKING:
    from lappdeploy.methods.budgets.base import Budget

__all__ = [
    "LANDING_WINDOW",
    "GroupThresholds",
    "PruneResult",
    "PruningHookBase",
    "apply_plan_",
    "frozen_copy",
    "held_out_tensors",
    "land_plan",
    "log_to",
    "lowest_widths",
    "minimum_plan",
    "plan_within_budget",
    "prepare_groups_",
    "producers",
    "recalibrate_bn_",
    "smallest_offset",
    "taylor_gradients_",
    "training_batches",
]

log = logging.getLogger(__name__)

# The MACs target is a ceiling: a final plan never exceeds it. A plan that lands more than this fraction
# below it (the thresholds undershot, or rounding left room) is grown back toward it, one width unit at a
# time, so that methods compared at one target spend the same MACs (docs/baselines.md#budget-rounding-and-errors).
LANDING_WINDOW = 0.005
_BISECTION_STEPS = 40  # halvings of the offset interval: resolves it to ~1e-12 of the score range
_MEAN_FLOOR = 1e-12  # guards the normalisation of an all-zero group (dead BN gammas)
_GRADIENT_BATCH = 256  # held-out images per forward/backward pass of a gradient criterion


@dataclass(frozen=True)
class PruneResult:
    """What a pruning method applied, as report.json records it."""

    method: str
    plan: ChannelPlan
    target_macs: float | None  # fraction of the dense deploy MACs (None: the run budgeted another kind)
    dense: DeployCost  # deploy MACs per image and params of the dense model
    deploy: DeployCost  # the same of the pruned model
    layers: list[dict[str, Any]]  # per prunable group, in module order: name, total, kept, threshold
    extra: dict[str, Any] = field(default_factory=dict)  # the method's own report fields

    @property
    def macs_ratio(self) -> float:
        return self.deploy.macs / self.dense.macs


class GroupThresholds:
    """Per-group thresholds over normalised channel scores: s~ = s / mean_g(s) (mean detached, so one
    threshold scale fits every group), kept = s~ > t_g, and every group keeps at least `min_keep[g]` of
    its best-scored channels, so no layer is ever emptied.

    Grouped convolutions (ResNeXt, RegNet) must keep the same positions in each of their blocks: their
    scores are averaged over the blocks first, so every block gets the same mask.
    """

    def __init__(self, groups: ChannelGroups, *, min_channels: int = 1, round_to: RoundTo = 1) -> None:
        self.groups = groups
        self.prunable = groups.prunable
        self.ids = [g.id for g in self.prunable]
        owner, unit, sizes = [], [], []
        units = 0
        self.min_keep: list[int] = []  # channels each group keeps at least
        for index, g in enumerate(self.prunable):
            owner += [index] * g.channels
            # channel c of a grouped-conv group is decided by its position c % segment_size
            unit += [units + c % g.segment_size for c in range(g.channels)]
            sizes += [g.segments] * g.segment_size
            units += g.segment_size
            self.min_keep.append(min(g.channels, max(min_channels, width_unit(round_to, g))))
        self._owner = torch.tensor(owner, dtype=torch.long)
        self._unit = torch.tensor(unit, dtype=torch.long)
        self._unit_size = torch.tensor(sizes, dtype=torch.float32)
        self._group_size = torch.tensor([g.channels for g in self.prunable], dtype=torch.float32)
        self._units = units
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:
            self._on[device] = tuple(t.to(device) for t in (self._owner, self._unit, self._unit_size, self._group_size))
        return self._on[device]

    def owner(self, device: torch.device) -> torch.Tensor:
        """Index of the owning group of every channel of the global vector."""
        return self._tensors(device)[0]

    def normalise(self, scores: torch.Tensor) -> torch.Tensor:
        """s~ = s / mean_g(s) per group (mean detached), averaged over grouped-conv blocks."""
        owner, unit, unit_size, group_size = self._tensors(scores.device)
        scores = scores.float()
        per_unit = scores.new_zeros(self._units).index_add(0, unit, scores) / unit_size
        scores = per_unit[unit]
        mean = scores.detach().new_zeros(len(self.prunable)).index_add(0, owner, scores.detach()) / group_size
        return scores / mean.clamp(min=_MEAN_FLOOR)[owner]

    def forced(self, normalised: torch.Tensor) -> torch.Tensor:
        """Boolean mask of each group's `min_keep` best-scored channels (whole positions of grouped convs)."""
        forced = torch.zeros_like(normalised, dtype=torch.bool)
        values = normalised.detach()
        for g, keep in zip(self.prunable, self.min_keep, strict=True):
            block = values[g.offset : g.offset + g.segment_size]  # the first block holds every position's score
            best = torch.topk(block, keep // g.segments).indices
            for s in range(g.segments):
                forced[g.offset + s * g.segment_size + best] = True
        return forced

    def hard(self, normalised: torch.Tensor, thresholds: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
        """The 0/1 mask (no gradient) for thresholds raised by a common `offset`."""
        with torch.no_grad():
            kept = (normalised > thresholds[self.owner(normalised.device)] + offset) | self.forced(normalised)
            return kept.to(torch.float32)


def minimum_plan(groups: ChannelGroups, thresholds: GroupThresholds, scores: torch.Tensor) -> ChannelPlan:
    """Every prunable group at its minimum width (best-scored channels): the cheapest reachable plan."""
    never = torch.full((len(thresholds.ids),), math.inf)
    return ChannelPlan.from_keep_mask(groups, thresholds.hard(thresholds.normalise(scores), never))


def smallest_offset(fits: Callable[[float], bool], high: float, steps: int = _BISECTION_STEPS) -> float:
    """The smallest offset in [0, high] for which `fits` holds (monotone: a larger offset prunes more), by
    bisection; `fits(high)` must hold."""
    if fits(0.0):
        return 0.0
    low = 0.0
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def plan_within_budget(
    groups: ChannelGroups,
    mask: GroupThresholds,
    normalised: torch.Tensor,
    thresholds: torch.Tensor,
    limit: float,
    *,
    budget: Budget,
) -> tuple[ChannelPlan, float]:
    """The plan of the hard masks `normalised > thresholds + offset`, rounded to the budget's multiples, with
    the smallest common offset >= 0 whose cost (in the budget's unit) is <= `limit`, grown toward the limit
    (`fill_plan`) when it lands more than LANDING_WINDOW under it; returns (plan, offset).

    Raising every threshold by one offset keeps the layer-adaptive allocation the thresholds learned
    while removing the channels that sit closest to their group's threshold first.
    """
    normalised = normalised.detach().float().cpu()
    thresholds = thresholds.detach().float().cpu()
    measure, round_to = budget.measure(groups), budget.round_to

    def plan_at(offset: float) -> ChannelPlan:
        plan = ChannelPlan.from_keep_mask(groups, mask.hard(normalised, thresholds, offset))
        if round_to == 1 or (isinstance(round_to, Mapping) and set(round_to.values()) <= {1}):
            return plan
        return round_plan(plan, groups, round_to, scores=normalised, budget=limit, measure=measure)

    high = float(normalised.max() - thresholds.min()) + 1.0  # every group at its minimum width
    if not measure(plan_at(high)) <= limit:
        raise SurgeryError(
            f"no plan reaches {limit:.6g} {budget.unit}: even the minimum widths cost {measure(plan_at(high)):.6g}; "
            "raise the target or lower --min-channels/--round-to"
        )
    offset = smallest_offset(lambda o: measure(plan_at(o)) <= limit, high)
    best = plan_at(offset)
    if measure(best) < (1 - LANDING_WINDOW) * limit:
        lowest = dict(zip(mask.ids, mask.min_keep, strict=True))
        best = fill_plan(
            best, groups, round_to, scores=normalised, budget=limit, window=LANDING_WINDOW, lowest=lowest,
            four_move_trade=True, measure=measure,
        )  # fmt: skip
    for index, gid in enumerate(mask.ids):
        if gid in best.groups:
            best.groups[gid].threshold = float(thresholds[index]) + offset
    return best, offset


def apply_plan_(loop, plan: ChannelPlan, example_inputs: torch.Tensor, groups: ChannelGroups | None = None) -> None:
    """Remove `plan`'s channels from a model in training: `loop.module` is pruned in place, the state of
    `loop.optimizer` (momentum, Adam moments) is cut to the kept channels, and a DDP wrapper is rebuilt
    through `loop.rewrap_()` when the loop has one. Every rank must call this with the same plan."""
    remove_channels_(loop.module, plan, example_inputs, optimizer=loop.optimizer, groups=groups)
    rewrap = getattr(loop, "rewrap_", None)
    if rewrap is not None:
        rewrap()
    elif getattr(getattr(loop, "dist", None), "is_distributed", False):
        raise SurgeryError("channels were removed under DDP but the training loop has no rewrap_() to re-wrap it")


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, batches) -> int:
    """Re-estimate every BatchNorm's running mean and variance as the plain average over `batches` of
    images (train-mode forward passes, no gradients): after channels are removed, downstream layers see
    inputs whose statistics the running averages of the wider network do not describe. Returns the
    number of batches used (0: nothing to do)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    batches = iter(batches)
    first = next(batches, None)
    if not norms or first is None:  # no data: keep the running averages rather than wipe them
        return 0
    batches = itertools.chain([first], batches)
    momenta = {norm: norm.momentum for norm in norms}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    was_training, used = model.training, 0
    model.train()
    try:
        for images in batches:
            model(images)
            used += 1
    finally:
        model.train(was_training)
        for norm, momentum in momenta.items():
            norm.momentum = momentum
    return used


def training_batches(loop, count: int):
    """Up to `count` batches of images the loop trains on (`loop.train_loader`), else of its held-out
    images; empty when it has neither."""
    loader = getattr(loop, "train_loader", None)
    if loader is not None:
        return (images for images, _ in itertools.islice(iter(loader), count))
    holdout = getattr(loop, "holdout", None)
    if holdout is not None and len(holdout):
        images, _ = holdout.tensors(count * 64, next(loop.module.parameters()).device)
        return iter(images.split(64))
    return iter(())


def held_out_tensors(
    loop, count: int, device: torch.device, *, seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` held-out images of the loop (`loop.holdout`) as tensors on `device` (with `seed`: a
    seeded random sample of `count` of them)."""
    holdout = getattr(loop, "holdout", None)
    if holdout is None or len(holdout) == 0:
        raise ConfigError("this pruning method decides on held-out training images: run it with --holdout N")
    return holdout.tensors(count, device, seed=seed)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with no parameter requiring gradients: the network as it was."""
    copied = copy.deepcopy(model).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def _module_tensors(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The state (parameters and buffers, on the CPU) of the named modules, keyed as in model.state_dict()."""
    return {
        f"{name}.{key}": value.detach().cpu()
        for name in names
        for key, value in model.get_submodule(name).state_dict().items()
    }


def taylor_gradients_(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Fill the parameters' .grad with the held-out loss gradient (eval mode: no BN statistics change)."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for start in range(0, len(images), _GRADIENT_BATCH):
        logits = model(images[start : start + _GRADIENT_BATCH])
        F.cross_entropy(logits, labels[start : start + _GRADIENT_BATCH], reduction="sum").div(len(images)).backward()
    model.train(was_training)


def log_to(loop, record: dict) -> None:
    """Pass a record to the loop's `log` (our Trainer writes it to metrics.jsonl); loops without one skip it."""
    log_record = getattr(loop, "log", None)
    if log_record is not None:
        log_record(record)


def producers(groups: ChannelGroups, group) -> list[str]:
    """The conv / linear layers writing a group's channels (several: a residual stream coupled by additions)."""
    layer_types = (nn.modules.conv._ConvNd, nn.Linear)
    return [name for name in group.modules if isinstance(resolve_module(groups.model, name), layer_types)]


def prepare_groups_(model: nn.Module, example_inputs: torch.Tensor, config: PruneConfig) -> ChannelGroups:
    """Add the bypass blocks when `config.bypass` is `rep` or `width` (in place), then find the channel
    groups; raise ConfigError when nothing can be pruned (the budget checks its reach: `methods.budgets`)."""
    if config.bypass != "none" and not has_bypass(model):
        add_bypass_(model, example_inputs, ignore=config.ignore, kind=config.bypass)
    groups = analyze(model, example_inputs, ignore=config.ignore)
    if config.keep_streams:  # analysed again with every stream's modules ignored: its channels stay whole
        streams = [name for g in groups.prunable if len(producers(groups, g)) > 1 for name in g.modules]
        groups = analyze(model, example_inputs, ignore=(*config.ignore, *streams))
    if not groups.prunable:
        raise ConfigError(f"{type(model).__name__} has no prunable channel group (see `lappdeploy inspect`)")
    if config.refits:
        check_calibration(groups, ReconstructionSettings.from_config(config), config.calib_images)
    return groups


def lowest_widths(groups: ChannelGroups, config: PruneConfig, round_to: RoundTo) -> dict[str, int]:
    """The fewest channels each prunable group may keep (--min-channels, the budget's resolved `round_to`,
    grouped-conv blocks)."""
    thresholds = GroupThresholds(groups, min_channels=config.min_channels, round_to=round_to)
    return dict(zip(thresholds.ids, thresholds.min_keep, strict=True))


def land_plan(
    plan: ChannelPlan,
    groups: ChannelGroups,
    config: PruneConfig,
    limit: float,
    scores: torch.Tensor,
    *,
    budget: Budget,
    lowest: dict[str, int] | None = None,
) -> ChannelPlan:
    """`plan` (numbered as `groups`) with widths rounded to the budget's multiples and grown back to within
    LANDING_WINDOW under `limit` (in the budget's unit); the trades that land it never take a group below
    `lowest` (default: `lowest_widths`)."""
    measure, round_to = budget.measure(groups), budget.round_to
    if round_to != 1:
        plan = round_plan(plan, groups, round_to, scores=scores, budget=limit, measure=measure)
    lowest = lowest if lowest is not None else lowest_widths(groups, config, round_to)
    return fill_plan(
        plan, groups, round_to, scores=scores, budget=limit, window=LANDING_WINDOW, lowest=lowest, measure=measure,
    )  # fmt: skip


class PruningHookBase(Hook):
    """The scaffolding of a method's pruning hook: the dense cost, the run's budget, applying a plan
    mid-training (channels removed, optimizer state carried), epoch metrics, resume and the result.

    Subclasses decide when and what to prune, asking `budget` (`methods.budgets.Budget`: MACs, parameters or
    latency, whichever the run set) for costs and limits; they call `apply_(loop, plan)` once and may override
    `report_extra` (their own report fields) and `report_thresholds` (per-group thresholds)."""

    method = ""  # the registered method name, set by the subclass

    def __init__(self, model: nn.Module, groups: ChannelGroups, config: PruneConfig, budget: Budget) -> None:
        self.model, self.groups, self.config, self.budget = model, groups, config, budget
        self.example_inputs = groups.example_inputs.detach().cpu()
        self.dense = plan_cost(groups, ChannelPlan())  # deploy MACs / params of the dense model
        self.plan: ChannelPlan | None = None  # set when the channels are removed
        self.deploy: DeployCost | None = None
        # the refits after each removal
        self.reconstruction = ReconstructionLog(config.reconstruct if config.refits else "none")
        # the held-out images the refits are computed on: loaded at the first removal, freed after the last
        self._calibration: torch.Tensor | None = None

    @property
    def frozen(self) -> bool:
        return self.plan is not None

    def phase_steps(self, loop) -> int:
        return self.config.prune_epochs * loop.steps_per_epoch

    @property
    def round_to(self) -> RoundTo:
        """The rounding multiple(s) in force: --round-to, or with --round-to auto the per-group multiples the
        latency table's width-step probes show (resolved by the budget)."""
        return self.budget.round_to

    def deploy_report(self, deploy_model: nn.Module) -> dict[str, Any]:
        """Report fields that need the final deploy model (a latency budget times it)."""
        return self.budget.deploy_report(self.plan, deploy_model)

    def apply_(self, loop, plan: ChannelPlan, *, recalibrate: bool = True, reconstruct: bool = True) -> None:
        """Remove `plan`'s channels from the training model, refit the layers reading them (--reconstruct),
        re-estimate its BatchNorm statistics (`recalibrate_bn` batches) and remember its cost. Replaying a
        checkpoint does neither refit nor re-estimate: the checkpoint's weights are loaded next."""
        self.detach_hooks()  # removal deep-copies and re-traces the model, which must not see mask hooks
        with self.reconstructing(loop, self.groups, plan) if reconstruct else contextlib.nullcontext():
            apply_plan_(loop, plan, self.example_inputs, groups=self.groups)
        if recalibrate and self.config.recalibrate_bn:
            recalibrate_bn_(loop.module, training_batches(loop, self.config.recalibrate_bn))
        self.plan = plan
        self.release_calibration()
        self.deploy = plan_cost(self.groups, plan)
        plan.info.update(
            method=self.method,
            target_macs=self.budget.report(None)["target_macs"],
            budget=self.budget.identity(),
            dense_macs=self.dense.macs,
            dense_params=self.dense.params,
            macs=self.deploy.macs,
            params=self.deploy.params,
            round_to=dict(self.round_to) if isinstance(self.round_to, Mapping) else self.round_to,
        )

    @contextlib.contextmanager
    def reconstructing(self, loop, groups: ChannelGroups, plan: ChannelPlan) -> Iterator[None]:
        """Around the removal of `plan`'s channels (numbered as in `groups`, the analysis before removal): with
        --reconstruct, a frozen copy of the model is taken first, and the layers reading removed channels are
        refitted after (docs/ldrf.md#reconstruction); wall time and peak memory are recorded."""
        if not self.config.diagnoses_removal:
            yield
            return
        meter = ResourceMeter()
        teacher = frozen_copy(loop.module)
        yield
        record = self._refit_on_main(loop, teacher, groups, plan)
        del teacher
        self.reconstruction.add(meter.stop(record))

    def _calibration_and_evaluation(self, loop) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images the refits are computed on (--calib-images, none without --reconstruct) and, after
        them in the same seeded draw, up to DIAGNOSTIC_IMAGES more the layers' output errors are measured on."""
        device = next(loop.module.parameters()).device
        calibration = self.config.calib_images if self.config.refits else 0
        images = held_out_tensors(loop, calibration + DIAGNOSTIC_IMAGES, device, seed=self.config.calib_seed)[0]
        if len(images) <= calibration:
            log.warning("no held-out images beyond the calibration ones: raise --holdout for the output errors")
        return images[:calibration], images[calibration:]

    def release_calibration(self) -> None:
        """Drop the calibration images: called once no removal follows (the plan is final), so fine-tuning does
        not carry them."""
        self._calibration = None

    def _refit_on_main(
        self, loop, teacher: nn.Module, groups: ChannelGroups, plan: ChannelPlan
    ) -> ReconstructionRecord:
        """The reconstruction, computed on rank 0 under DDP; the other ranks receive its weights. Whatever fails
        on rank 0 is broadcast before it is raised there, so the other ranks stop too instead of waiting."""
        dist = getattr(loop, "dist", None)
        shared = dist is not None and dist.is_distributed
        outcome, failure = None, None
        if not shared or dist.is_main:
            try:
                if self._calibration is None:
                    self._calibration = self._calibration_and_evaluation(loop)
                settings = ReconstructionSettings.from_config(self.config)
                calibration, evaluation = self._calibration
                record = reconstruct_(teacher, loop.module, groups, plan, calibration, settings, evaluation)
                outcome = (record, _module_tensors(loop.module, record.modules) if shared else None)
            except Exception as exc:
                if not shared:
                    raise
                failure = exc
                shown = str(exc) if isinstance(exc, LappDeployError) else f"{type(exc).__name__}: {exc}"
                outcome = ("error", f"the reconstruction failed on rank 0: {shown}")
        if shared:
            outcome = dist.broadcast_object(outcome)
            if failure is not None:
                raise failure  # rank 0: the original exception, with its traceback
            if outcome[0] == "error":
                raise SurgeryError(outcome[1])
            if not dist.is_main:
                loop.module.load_state_dict(outcome[1], strict=False)
        return outcome[0]

    def detach_hooks(self) -> None:
        """Remove forward hooks the method put on the model; the base class adds none."""

    def current_macs(self) -> float:
        """Deploy MACs per image of the model now: dense before the plan, the plan's after."""
        return float(self.deploy.macs if self.deploy is not None else self.dense.macs)

    def on_epoch_end(self, loop, metrics: dict[str, Any]) -> None:
        metrics["macs_ratio"] = round(self.current_macs() / self.dense.macs, 5)
        metrics["pruned"] = self.frozen

    def state_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "reconstruction": self.reconstruction.state_dict(),
            "budget": self.budget.identity(),
        }

    def load_state_dict(self, state: dict[str, Any], loop) -> None:
        """Replay the channel removal if it had happened (called before the weights are loaded, so they
        then fit the compact architecture). The budget must be the one the run started with."""
        self.budget.check_resumed(state.get("budget"))
        if state.get("plan") is not None:
            self.apply_(loop, ChannelPlan.from_dict(state["plan"]), recalibrate=False, reconstruct=False)
        self.reconstruction.load_state_dict(state.get("reconstruction", []))

    # ------------------------------------------------------------------ the result
    def report_thresholds(self) -> dict[str, float]:
        """Per-group thresholds to report (group id -> value); none for one-shot methods."""
        return {}

    def report_extra(self) -> dict[str, Any]:
        """The method's own report fields."""
        return {}

    def result(self) -> PruneResult:
        if self.plan is None:  # cannot happen with prune_epochs <= epochs; a loop that stopped early
            raise SurgeryError("training ended before the pruning phase did; no channel plan was applied")
        thresholds = self.report_thresholds()
        order = {name: i for i, (name, _) in enumerate(self.model.named_modules())}
        layers = []
        for g in sorted(self.groups.prunable, key=lambda g: order.get(g.id, len(order))):
            gp = self.plan.groups.get(g.id)
            threshold = gp.threshold if gp is not None and gp.threshold is not None else thresholds.get(g.id)
            layers.append(
                {"name": g.id, "total": g.channels, "kept": len(gp.keep) if gp else g.channels, "threshold": threshold}
            )
        budget = self.budget.report(self.plan)  # target_macs is None unless MACs were budgeted
        return PruneResult(
            method=self.method,
            plan=self.plan,
            target_macs=budget.pop("target_macs"),
            dense=self.dense,
            deploy=self.deploy,
            layers=layers,
            extra={**budget, **self.reconstruction.report(), **self.report_extra()},
        )
