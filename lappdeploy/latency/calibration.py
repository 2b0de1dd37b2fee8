"""Fitting a latency table to whole models (docs/latency.md#the-latency-model).

A layer timed alone pays for work a whole model shares between its layers (one runtime call, layout
reorders at the graph's input and output), and a whole model has work no table holds (residual adds,
pooling). So a table predicts

    latency = sum over layers of scale(kind) * T_layer(c_in, c_out) + remainder_ms

with the scales and the remainder fitted on a few whole models timed during profiling: the dense one, two
uniform plans and random-width plans (each group its own share, as a method's plans have). The fit
minimises the *relative* error, the quantity a latency budget is judged by, so the narrow models count as
much as the dense one. Depthwise layers may get their own scale: alone, one pays its input and output
reorders against little arithmetic, so it over-states its cost in a model more than a dense conv does. The
split is kept only where it predicts the calibration models better when each is left out of the fit.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lappdeploy.latency.model import LatencyModel
from lappdeploy.latency.table import LatencyTable, LayerTable
from lappdeploy.surgery import ChannelPlan, analyze, random_widths_plan, remove_channels_, round_plan, uniform_plan
from lappdeploy.surgery.plan import plan_id

__all__ = ["CALIBRATION_MODELS", "CalibrationFit", "calibration_models", "fit_calibration", "fit_records"]

log = logging.getLogger(__name__)

RANDOM_PLANS = 6  # random-width plans among the calibration models (seeds 1000+; validations use others)
CALIBRATION_MODELS = 3 + RANDOM_PLANS  # whole models timed: dense, uniform 0.5 and 0.25, the random ones
OWN_SCALE_KINDS = ("depthwise",)  # layer kinds the fit may scale apart from the rest
SPLIT_GAIN = 0.9  # the per-kind fit is kept only if its leave-one-out error is below 0.9 x the one-scale fit's


@dataclass(frozen=True)
class CalibrationFit:
    scale: float  # every layer kind without its own scale
    kind_scales: dict[str, float]  # kinds with their own scale (empty: one scale for all)
    remainder_ms: float  # ms per batch
    records: list[dict]  # per whole model: plan id, summed layer ms (all, per kind), measured ms
    loo_error: float | None  # mean |relative error| with each model left out of the fit; None: too few models

    def table_fields(self) -> dict:
        """The `LatencyTable` fields this fit sets (scales, remainder, calibration records), rounded as stored."""
        return {"scale": round(self.scale, 6), "kind_scales": {k: round(v, 6) for k, v in self.kind_scales.items()},
                "remainder_ms": round(self.remainder_ms, 5), "calibration": self.records}  # fmt: skip


def _calibration_plans(groups, step: int) -> list[ChannelPlan]:
    uniform = [uniform_plan(groups, share) for share in (0.5, 0.25)]
    uniform = [round_plan(plan, groups, step) if step > 1 else plan for plan in uniform]
    randoms = [random_widths_plan(groups, step=max(step, 1), seed=1000 + i) for i in range(RANDOM_PLANS)]
    return [ChannelPlan(), *uniform, *randoms]


def calibration_models(model: nn.Module, input_shape: tuple[int, ...], step: int):
    """(groups, [(plan, pruned copy of `model`)]) of every calibration model, widths rounded to `step`; the
    dense model first."""
    example = torch.zeros((2, *input_shape))
    groups = analyze(model, example)
    out = []
    for plan in _calibration_plans(groups, step):
        pruned = copy.deepcopy(model)
        if not plan.is_empty:
            remove_channels_(pruned, plan, example)
        out.append((plan, pruned))
    return groups, out


def _bare_table(layers: dict[str, LayerTable]) -> LatencyTable:
    """A table of only these layers (scale 1, no remainder): their summed latency."""
    return LatencyTable(model="", input_shape=[], batch=1, threads=1, runtime="ort", device="cpu", fingerprint={},
                        layers=layers, remainder_ms=0.0, dense_ms=1.0)  # fmt: skip


def _relative_lstsq(design: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Coefficients minimising the sum of squared relative errors ((design @ coef - measured) / measured)."""
    weights = 1.0 / measured
    coef, *_ = np.linalg.lstsq(design * weights[:, None], measured * weights, rcond=None)
    return coef


def _plausible(coef: np.ndarray, design: np.ndarray) -> bool:
    """Positive scales and positive predictions: a model whose latency falls as layers widen would reward
    keeping channels (noisy timings of a tiny model can fit one)."""
    return bool(np.all(coef[:-1] > 0) and (design @ coef).min() > 0)


def _leave_one_out(design: np.ndarray, measured: np.ndarray) -> float | None:
    """Mean |relative error| of each model predicted by the fit on the others; None with too few models."""
    rows, params = design.shape
    if rows <= params:
        return None
    errors = []
    for i in range(rows):
        keep = np.arange(rows) != i
        coef = _relative_lstsq(design[keep], measured[keep])
        errors.append(abs(design[i] @ coef - measured[i]) / measured[i])
    return float(np.mean(errors))


def _candidates(kind_ms: list[dict[str, float]], own_kinds) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """(kinds with their own scale, design matrix [shared layers ms, own kinds' ms..., 1]) per candidate fit."""
    own = [k for k in own_kinds if any(ms.get(k, 0.0) > 0 for ms in kind_ms)]
    out = []
    for split in ([], own) if own else ([],):
        shared = [sum(v for k, v in ms.items() if k not in split) for ms in kind_ms]
        columns = [shared, *([ms.get(k, 0.0) for ms in kind_ms] for k in split), [1.0] * len(kind_ms)]
        out.append((tuple(split), np.array(columns, dtype=np.float64).T))
    return out


def fit_records(records: list[dict], own_kinds: tuple[str, ...] = OWN_SCALE_KINDS) -> CalibrationFit:
    """The fit on calibration records (`kind_ms`, `measured_ms` per whole model, the dense one first): one
    scale, or one per kind of `own_kinds` where that predicts left-out models clearly better. An implausible
    fit falls back to scale 1 and the dense model's remainder. `own_kinds=()` forces one scale."""
    kind_ms = [r["kind_ms"] for r in records]
    y = np.array([r["measured_ms"] for r in records], dtype=np.float64)
    best = None
    for split, design in _candidates(kind_ms, own_kinds):
        coef = _relative_lstsq(design, y)
        if len(y) < 2 or np.ptp(design[:, 0]) == 0 or not _plausible(coef, design):
            continue
        error = _leave_one_out(design, y)
        if best is None or (error is not None and best[2] is not None and error < SPLIT_GAIN * best[2]):
            best = (split, coef, error)
    if best is None:
        log.warning("the whole-model fit is implausible: using scale 1 and the dense remainder")
        return CalibrationFit(1.0, {}, float(y[0] - sum(kind_ms[0].values())), records, None)
    split, coef, error = best
    kind_scales = {kind: float(coef[1 + i]) for i, kind in enumerate(split)}
    return CalibrationFit(float(coef[0]), kind_scales, float(coef[-1]), records, error)


def fit_calibration(groups, layers: dict[str, LayerTable], measured: list[tuple[ChannelPlan, float]]) -> CalibrationFit:
    """Fit the table's scales and remainder (`fit_records`) to whole models, `measured` = [(plan, measured
    ms), ...], the dense model first."""
    unscaled = LatencyModel(groups, _bare_table(layers))
    records = []
    for plan, ms in measured:
        parts = unscaled.kind_ms(plan)
        kind_ms = {kind: round(value, 5) for kind, value in parts.items()}
        records.append({"plan": plan_id([plan.to_dict()]), "layers_ms": round(sum(parts.values()), 5),
                        "kind_ms": kind_ms, "measured_ms": round(ms, 5)})  # fmt: skip
    return fit_records(records)
