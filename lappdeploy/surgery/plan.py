"""Channel plans: which channels each prunable group keeps, and ways to make one.

A plan is the common currency of every pruning method (LAPP, uniform, global, later LAASP/PCP/LDRF):
methods produce one, surgery applies it, reports describe it. Groups absent from a plan keep all their
channels. Plans refer to groups by canonical id and to channels by index in the dense model, so a plan
applies to the dense model, to the same model with bypass blocks, and round-trips through JSON.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lappdeploy.io import atomic_write_json, read_json
from lappdeploy.surgery.cost import plan_cost
from lappdeploy.surgery.criteria import channel_scores
from lappdeploy.surgery.graph import ChannelGroup, ChannelGroups, SurgeryError

__all__ = [
    "ChannelPlan",
    "GroupPlan",
    "RoundTo",
    "compose_plans",
    "fill_plan",
    "kept_first",
    "macs_measure",
    "plan_from_scores",
    "plan_id",
    "random_plan",
    "round_plan",
    "uniform_plan",
    "width_unit",
]

PLAN_FORMAT = "lappdeploy.channel_plan"


@dataclass
class GroupPlan:
    channels: int  # C_g in the dense model
    keep: list[int]  # sorted indices of the kept channels
    threshold: float | None = None  # LAPP's learned threshold, for reports

    @property
    def dropped(self) -> list[int]:
        kept = set(self.keep)
        return [c for c in range(self.channels) if c not in kept]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"channels": self.channels, "keep": list(self.keep)}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


@dataclass
class ChannelPlan:
    groups: dict[str, GroupPlan] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # method, MACs, params ... (free-form, JSON)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "groups": {gid: gp.to_dict() for gid, gp in self.groups.items()},
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelPlan:
        if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
            raise SurgeryError("not a channel plan: expected a mapping with a 'groups' mapping")
        try:
            groups = {
                str(gid): GroupPlan(
                    channels=int(g["channels"]),
                    keep=sorted(int(c) for c in g["keep"]),
                    threshold=None if g.get("threshold") is None else float(g["threshold"]),
                )
                for gid, g in data["groups"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise SurgeryError(
                f"malformed channel plan entry ({exc}); each group needs 'channels' and 'keep'"
            ) from None
        return cls(groups=groups, info=dict(data.get("info", {})))

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ChannelPlan:
        return cls.from_dict(read_json(path))

    @property
    def is_empty(self) -> bool:
        return all(len(gp.keep) == gp.channels for gp in self.groups.values())

    def validate(self, groups: ChannelGroups) -> None:
        """Raise SurgeryError unless every entry names a prunable group of `groups` and keeps a valid,
        non-empty channel set that respects grouped convolutions."""
        for gid, gp in self.groups.items():
            g = groups.prunable_group(gid)
            if gp.channels != g.channels:
                raise SurgeryError(f"plan group {gid!r} has {gp.channels} channels, the model's has {g.channels}")
            if not gp.keep:
                raise SurgeryError(f"plan group {gid!r} keeps no channel; a group keeps at least one")
            if len(set(gp.keep)) != len(gp.keep) or gp.keep[0] < 0 or gp.keep[-1] >= g.channels:
                raise SurgeryError(
                    f"plan group {gid!r} keeps invalid channel indices (need distinct 0..{g.channels - 1})"
                )
            if g.segments > 1:
                size = g.segment_size
                positions = {c % size for c in gp.keep}
                if len(gp.keep) != len(positions) * g.segments:
                    raise SurgeryError(
                        f"plan group {gid!r} feeds a grouped conv ({g.segments} groups): it must keep the same "
                        f"positions in each block of {size} channels"
                    )

    def keep_mask(self, groups: ChannelGroups) -> torch.Tensor:
        """Float 0/1 mask over the global channel vector of `groups` (1 = kept)."""
        mask = torch.ones(groups.global_channels, dtype=torch.float64)
        for gid, gp in self.groups.items():
            g = groups.prunable_group(gid)
            mask[g.offset : g.offset + g.channels] = 0
            mask[g.offset + torch.as_tensor(gp.keep, dtype=torch.long)] = 1
        return mask

    @classmethod
    def from_keep_mask(cls, groups: ChannelGroups, mask: torch.Tensor, **info: Any) -> ChannelPlan:
        """The plan keeping the channels where `mask` (over the global channel vector) is > 0.5."""
        kept = mask.detach().cpu() > 0.5
        plan = cls(info=info)
        for g in groups.prunable:
            keep = torch.nonzero(kept[g.offset : g.offset + g.channels]).flatten().tolist()
            if len(keep) < g.channels:
                plan.groups[g.id] = GroupPlan(channels=g.channels, keep=keep)
        return plan


def _segment_scores(g: ChannelGroup, scores: torch.Tensor) -> torch.Tensor:
    """Score per decision unit: a channel, or a position across the blocks of a grouped conv."""
    return scores.detach().float().view(g.segments, g.segment_size).mean(0)


def _top_channels(g: ChannelGroup, scores: torch.Tensor, keep: int) -> list[int]:
    units = keep // g.segments
    best = torch.topk(_segment_scores(g, scores), units).indices
    return sorted(int(s * g.segment_size + p) for s in range(g.segments) for p in best)


def plan_from_scores(groups: ChannelGroups, scores: torch.Tensor, keep: dict[str, int], **info: Any) -> ChannelPlan:
    """Keep the `keep[gid]` best-scored channels of each listed group (scores over the global vector).

    Counts are rounded down to a multiple of the group's grouped-conv blocks, and are at least one block.
    """
    plan = ChannelPlan(info=info)
    for gid, count in keep.items():
        g = groups.prunable_group(gid)
        count = max(g.segments, min(g.channels, count) // g.segments * g.segments)
        if count < g.channels:
            plan.groups[gid] = GroupPlan(g.channels, _top_channels(g, scores[g.offset : g.offset + g.channels], count))
    return plan


PlanMeasure = Callable[[ChannelPlan], float]  # a plan's cost: deploy MACs per sample, or a latency (ms)
# the multiple kept widths are rounded to: one for every group, or per group id (--round-to auto)
RoundTo = int | Mapping[str, int]


def width_unit(round_to: RoundTo, group) -> int:
    """Channels a group's kept count moves by (its rounding multiple, in whole blocks of a grouped conv); a
    group a per-group mapping does not name is not rounded."""
    multiple = round_to.get(group.id, 1) if isinstance(round_to, Mapping) else round_to
    return math.lcm(multiple, group.segments)


def macs_measure(groups: ChannelGroups) -> PlanMeasure:
    """The default plan cost of the landing and rounding helpers: exact deploy MACs per sample."""
    return lambda plan: plan_cost(groups, plan).macs


def _counts_for_fraction(groups: ChannelGroups, fraction: float) -> dict[str, int]:
    return {g.id: max(g.segments, math.ceil(fraction * g.channels / g.segments) * g.segments) for g in groups.prunable}


def uniform_plan(
    groups: ChannelGroups,
    macs_ratio: float,
    *,
    scores: torch.Tensor | None = None,
    measure: PlanMeasure | None = None,
    budget: float | None = None,
    **info: Any,
) -> ChannelPlan:
    """Keep the same fraction of every prunable group, the largest fraction whose deploy MACs are at most
    `macs_ratio` x the dense deploy MACs; channels chosen by `scores` (default: l2 magnitude). With `measure`
    and `budget`, the largest fraction whose `measure` (e.g. predicted latency, ms) is at most `budget`."""
    if not 0 < macs_ratio <= 1:
        raise SurgeryError(f"MACs ratio must be in (0, 1], got {macs_ratio}")
    scores = channel_scores(groups, "l2") if scores is None else scores
    if measure is None or budget is None:
        measure, budget = macs_measure(groups), macs_ratio * plan_cost(groups, ChannelPlan()).macs
    low, high = 0.0, 1.0
    best = plan_from_scores(groups, scores, _counts_for_fraction(groups, 0.0))
    for _ in range(30):  # bisection on the kept fraction; 30 steps resolve 1e-9
        mid = (low + high) / 2
        plan = plan_from_scores(groups, scores, _counts_for_fraction(groups, mid))
        if measure(plan) <= budget:
            low, best = mid, plan
        else:
            high = mid
    if measure(ChannelPlan()) <= budget:
        best = ChannelPlan()
    best.info.update(info, method="uniform", keep_fraction=low, macs_ratio=macs_ratio)
    return best


def round_plan(
    plan: ChannelPlan,
    groups: ChannelGroups,
    k: RoundTo = 8,
    *,
    scores: torch.Tensor | None = None,
    budget: float | None = None,
    measure: PlanMeasure | None = None,
) -> ChannelPlan:
    """Make every prunable group's kept count a multiple of `k` (8 for FP16 Tensor Cores, 16 for INT8; or a
    multiple per group id),
    never below k (or the whole group when it is smaller): first every group rounds down; then, where
    the `budget` allows, groups round up, adding their best-scored dropped channels, those closest to the
    next multiple first. Without a budget, counts round to the nearest multiple. The budget is in the unit
    of `measure` (default: deploy MACs per sample; a latency model gives ms).
    A group whose dense width is not a multiple of k may also keep all its channels."""
    smallest = min(k.values(), default=1) if isinstance(k, Mapping) else k
    if smallest < 1:
        raise SurgeryError(f"round-to must be >= 1, got {k}")
    measure = measure or macs_measure(groups)
    scores = channel_scores(groups, "l2") if scores is None else scores
    mask = plan.keep_mask(groups)
    counts, down, up = {}, {}, {}
    for g in groups.prunable:
        kept = int(mask[g.offset : g.offset + g.channels].sum())
        step = width_unit(k, g)
        floor = min(g.channels, step)
        down[g.id] = max(floor, kept // step * step)
        up[g.id] = min(g.channels, math.ceil(kept / step) * step)
        counts[g.id] = kept
    rounded = dict(down)
    # which dropped channels come back first: a plan's kept channels outrank all its dropped ones
    ranking = scores.detach().float() + mask.float() * (scores.detach().abs().max() + 1)
    for gid in sorted(counts, key=lambda gid: (up[gid] - counts[gid]) / max(1, up[gid] - down[gid])):
        if up[gid] == down[gid]:
            continue
        if budget is None:
            if counts[gid] - down[gid] >= up[gid] - counts[gid]:
                rounded[gid] = up[gid]
            continue
        trial = dict(rounded, **{gid: up[gid]})
        if measure(plan_from_scores(groups, ranking, trial)) <= budget:
            rounded = trial
    out = plan_from_scores(groups, ranking, rounded)
    for gid, gp in out.groups.items():
        if gid in plan.groups:
            gp.threshold = plan.groups[gid].threshold
    out.info = dict(plan.info, round_to=dict(k) if isinstance(k, Mapping) else k)
    return out


def kept_first(scores: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """A ranking in which every channel `keep_mask` keeps outranks every dropped one, each side in `scores`'
    order: a plan grown from it returns the best-scored dropped channels first, one shrunk from it drops the
    worst-scored kept ones last."""
    return scores.detach().float() + keep_mask.float() * (scores.detach().abs().max() + 1)


def fill_plan(
    plan: ChannelPlan,
    groups: ChannelGroups,
    k: RoundTo,
    *,
    scores: torch.Tensor,
    budget: float,
    window: float = 0.0,
    lowest: dict[str, int] | None = None,
    four_move_trade: bool = False,
    measure: PlanMeasure | None = None,
) -> ChannelPlan:
    """Grow `plan` by whole units (multiples of `k`, whole blocks of grouped convs), the least-kept group
    first, while its deploy MACs stay within `budget`: a rounded plan lands close under the budget instead
    of up to one unit per group below it. Best-scored dropped channels come back first.

    With `window` > 0, a plan still more than `window` x budget under it afterwards also trades units
    between two groups (one unit more in one, one fewer in another, never below `lowest[gid]`, default one
    unit) while that brings it closer under the budget: on small inputs a single unit can be several
    percent of the MACs, more than the window. `four_move_trade` adds a last resort when those trades end
    under the window: one trade of four moves from the grown plan, aimed at the middle of the window.
    `budget` is in the unit of `measure` (default: deploy MACs per sample)."""
    mask = plan.keep_mask(groups)
    ranking = kept_first(scores, mask)
    counts = {g.id: int(mask[g.offset : g.offset + g.channels].sum()) for g in groups.prunable}
    landing = _Landing(groups, k, ranking, budget, lowest or {}, measure or macs_measure(groups))
    counts = landing.grow(counts)
    if window > 0:
        counts = landing.trade(counts, floor=(1 - window) * budget, four_moves=four_move_trade)
    out = plan_from_scores(groups, ranking, counts)
    out.info = dict(plan.info)
    return out


class _Landing:
    """Moves of whole width units that keep a plan's cost (`measure`: deploy MACs, or a latency model) within a
    budget (see `fill_plan`)."""

    def __init__(
        self,
        groups: ChannelGroups,
        k: RoundTo,
        ranking: torch.Tensor,
        budget: float,
        lowest: dict[str, int],
        measure: PlanMeasure,
    ) -> None:
        self.groups, self.ranking, self.budget, self.measure = groups, ranking, budget, measure
        self.unit = {g.id: width_unit(k, g) for g in groups.prunable}
        self.width = {g.id: g.channels for g in groups.prunable}
        self.lowest = {g.id: lowest.get(g.id, min(g.channels, self.unit[g.id])) for g in groups.prunable}

    def macs(self, counts: dict[str, int]) -> float:
        """The cost of the plan with these widths, in `measure`'s unit (named for the default, MACs)."""
        return self.measure(plan_from_scores(self.groups, self.ranking, counts))

    def grow(self, counts: dict[str, int]) -> dict[str, int]:
        """One unit more for the least-kept group that still fits, until none fits."""
        grown = True
        while grown:
            grown = False
            for gid in sorted(counts, key=lambda gid: counts[gid] / self.width[gid]):
                trial = {**counts, gid: counts[gid] + self.unit[gid]}
                if trial[gid] <= self.width[gid] and self.macs(trial) <= self.budget:
                    counts, grown = trial, True
                    break
        return counts

    def trade(
        self, counts: dict[str, int], floor: float, max_moves: int = 16, four_moves: bool = False
    ) -> dict[str, int]:
        """Trades of up to three unit moves (one unit more or fewer per group) that raise the MACs but stay
        within the budget, the largest rise first, until the MACs reach `floor` or no trade fits; with
        `four_moves`, as a last resort on networks with few groups, one trade of four moves aimed at the middle
        of the window (from where the trades stopped, else from `counts`). No group ends more than one unit
        away from its width in `counts` (two after a last-resort trade): the method's allocation stays its
        own."""
        start = dict(counts)
        for _ in range(max_moves):
            now = self.macs(counts)
            if now >= floor:
                break
            better = self._best_trade(counts, start, now)
            if better is None:
                break
            counts = better
        if four_moves and self.macs(counts) < floor:  # no chain of smaller trades got there: four moves at once
            origins = [dict(counts)] if counts == start else [dict(counts), start]
            for origin in origins:  # from where the trades stopped, else from where they began
                aim = (floor + self.budget) / 2 - self.macs(origin)  # the rise that lands mid-window
                four = self._best_trade(origin, origin, self.macs(origin), sizes=(4,), aim=aim)
                if four is not None and self.macs(four) > self.macs(counts):
                    counts = four
                if self.macs(counts) >= floor:
                    break
        return counts

    def _best_trade(
        self,
        counts: dict[str, int],
        start: dict[str, int],
        now: int,
        exact_checks: int = 200,
        sizes: tuple[int, ...] = (1, 2, 3),
        most_moves_for_four: int = 40,  # C(40, 4) ~ 91k estimated trades; wider networks land with fewer moves
        aim: float | None = None,
    ) -> dict[str, int] | None:
        """The trade of the largest estimated MACs rise that fits under the budget (with `aim`: the one whose
        estimated rise is nearest `aim` first), checked exactly."""
        moves = [
            (gid, sign, delta) for sign in (+1, -1) for gid, delta in self._deltas(counts, start, now, sign).items()
        ]
        if max(sizes) >= 4 and len(moves) > most_moves_for_four:
            return None
        room = self.budget - now
        trades = []
        for size in sizes:
            for combo in itertools.combinations(moves, size):
                # a trade's MACs change is nearly the sum of its moves' (adjacent layers interact a little)
                estimate = sum(delta for _, _, delta in combo)
                near = (
                    0 < estimate <= room + 0.01 * self.budget
                    if aim is None
                    else abs(estimate - aim) < 0.02 * self.budget
                )
                if near and len({gid for gid, _, _ in combo}) == size:
                    trades.append((estimate, combo))
        trades.sort(key=lambda trade: -trade[0] if aim is None else abs(trade[0] - aim))
        for _, combo in trades[:exact_checks]:
            trial = dict(counts)
            for gid, sign, _ in combo:
                trial[gid] += sign * self.unit[gid]
            if now < self.macs(trial) <= self.budget:
                return trial
        return None

    def _deltas(self, counts: dict[str, int], start: dict[str, int], now: int, sign: int) -> dict[str, int]:
        """MACs change of one unit more (sign +1) or fewer (-1) per group that allows it: within its
        lowest and dense widths, and within one unit of `start`."""
        out = {}
        for gid, count in counts.items():
            moved = count + sign * self.unit[gid]
            if self.lowest[gid] <= moved <= self.width[gid] and abs(moved - start[gid]) <= self.unit[gid]:
                out[gid] = self.macs({**counts, gid: moved}) - now
        return out


def compose_plans(first: ChannelPlan, then: ChannelPlan) -> ChannelPlan:
    """The one plan equal to removing `first`'s channels, then `then`'s from the result (whose channel
    indices number the channels `first` kept): kept indices of the dense model, info of `then`."""
    out = ChannelPlan(
        groups={gid: GroupPlan(gp.channels, list(gp.keep), gp.threshold) for gid, gp in first.groups.items()}
    )
    for gid, gp in then.groups.items():
        before = first.groups.get(gid)
        kept = before.keep if before is not None else list(range(gp.channels))
        if gp.channels != len(kept):
            raise SurgeryError(
                f"plan group {gid!r} has {gp.channels} channels, but {len(kept)} remain after the earlier plan"
            )
        dense = before.channels if before is not None else gp.channels
        out.groups[gid] = GroupPlan(dense, sorted(kept[i] for i in gp.keep), gp.threshold)
    out.info = dict(then.info)
    return out


def random_plan(groups: ChannelGroups, keep_ratio: float = 0.5, *, seed: int = 0) -> ChannelPlan:
    """Keep a random `keep_ratio` of every prunable group (at least one block): for tests and benchmarks."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(groups.global_channels, generator=generator)
    counts = {g.id: math.ceil(keep_ratio * g.channels) for g in groups.prunable}
    return plan_from_scores(groups, scores, counts, method="random", keep_ratio=keep_ratio, seed=seed)


def random_widths_plan(groups: ChannelGroups, *, step: int = 1, lowest: float = 0.15, seed: int = 0) -> ChannelPlan:
    """Each group keeps its own random share of its channels, drawn from U[`lowest`, 1] and rounded up to a
    multiple of `step` (and of its segments), random channels: unlike `random_plan`, widths differ between
    groups, as a method's plans do. For latency calibration, tests and benchmarks."""
    generator = torch.Generator().manual_seed(seed)
    counts = {}
    for g in groups.prunable:
        share = lowest + (1.0 - lowest) * float(torch.rand((), generator=generator))
        unit = math.lcm(step, g.segments)
        counts[g.id] = min(g.channels, max(unit, math.ceil(share * g.channels / unit) * unit))
    scores = torch.rand(groups.global_channels, generator=generator)
    return plan_from_scores(groups, scores, counts, method="random-widths", seed=seed)


def plan_id(plans: list[dict[str, Any]]) -> str:
    """'dense' when the channel plans (as saved: {"groups": {id: {"channels", "keep"}}}) remove nothing,
    else the first 10 hex digits of a SHA-1 of what they keep (same plans, same id)."""
    kept = [
        {
            gid: sorted(g["keep"])
            for gid, g in sorted((plan.get("groups") or {}).items())
            if len(g["keep"]) < g["channels"]
        }
        for plan in plans
    ]
    kept = [k for k in kept if k]
    if not kept:
        return "dense"
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]
