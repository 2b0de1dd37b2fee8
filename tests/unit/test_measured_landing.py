"""The measured landing of a latency budget: a plan landed on the latency model is timed, and landed again on a
corrected limit until its deploy model measures within MEASURED_TOLERANCE of the target.

The loop is checked with runtimes of known bias (a timer function that scales the prediction: what a table that
mis-predicts its pruned models looks like, deterministically); the real timing path is run once on ONNX Runtime."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lappdeploy.latency import LatencyModel, synthetic_table
from lappdeploy.latency.profile import PointTiming, profile_model
from lappdeploy.methods import LappConfig
from lappdeploy.methods.budgets import MEASURED_ATTEMPTS, MEASURED_TOLERANCE, LatencyBudget
from lappdeploy.methods.common import LANDING_WINDOW, GroupThresholds, minimum_plan, plan_within_budget
from lappdeploy.methods.oneshot import uniform_budget_plan
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, channel_scores, remove_channels_

SHAPE = (3, 16, 16)
FAST = PointTiming(warmup_calls=2, warmup_seconds=0.0, calls=3, seconds=0.0, max_seconds=0.01, min_calls=1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=4, in_channels=3)
    return model, analyze(model, torch.zeros((2, *SHAPE)))


def _budget(groups, table, fraction: float | None, target_ms: float | None = None, dense=None) -> LatencyBudget:
    model = LatencyModel(groups, table)
    target = target_ms if target_ms is not None else fraction * table.dense_ms
    return LatencyBudget(groups, model, table, source="t.json", target_ms=target, round_to=1, flag="--target-latency",
                         fraction=fraction, dense_model=dense, measured_landing=True)  # fmt: skip


def _lapp_landing(groups):
    """LAPP's landing at the freeze: every threshold at 0, raised by a common offset until the plan fits."""
    thresholds = GroupThresholds(groups)
    normalised = thresholds.normalise(channel_scores(groups, "l2"))

    def land(budget: LatencyBudget):
        return lambda limit: plan_within_budget(
            groups, thresholds, normalised, torch.zeros(len(thresholds.ids)), limit, budget=budget
        )

    return land


def _biased_timer(budget: LatencyBudget, pruned_bias: float, dense_ms: float | None = None):
    """A runtime on which every pruned model runs `pruned_bias` x its prediction and the dense model at
    `dense_ms` (default: as the table says)."""
    return lambda plan: (pruned_bias * budget.model.plan_ms(plan), dense_ms or budget.table.dense_ms)


@pytest.mark.parametrize("bias", [1.2, 0.85])
def test_a_biased_prediction_is_corrected_to_within_the_tolerance_of_a_ms_target(tiny, bias):
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0)
    budget = _budget(groups, table, None, target_ms=0.6 * table.dense_ms)
    plan, _ = budget.land(_lapp_landing(groups)(budget), timer=_biased_timer(budget, bias))
    first, last = budget.landing[0], budget.landing[-1]
    assert first["measured_vs_target"] == pytest.approx(bias * first["predicted_ms"] / budget.target, rel=1e-3)
    assert abs(first["measured_vs_target"] - 1) > MEASURED_TOLERANCE, "the uncorrected landing misses"
    measured = bias * budget.model.plan_ms(plan)
    assert abs(measured / budget.target - 1) <= MEASURED_TOLERANCE, budget.landing
    kept = measured / budget.target
    assert last["measured_vs_target"] == pytest.approx(kept, rel=1e-3), "the kept plan is the last timed"
    assert 2 <= len(budget.landing) <= MEASURED_ATTEMPTS
    assert [a.get("kept", False) for a in budget.landing] == [False] * (len(budget.landing) - 1) + [True]
    assert budget.limit == pytest.approx(max(budget.target, budget.model.plan_ms(plan)))


def test_a_fraction_target_is_read_against_the_dense_model_timed_alongside(tiny):
    """The machine runs everything 1.3x slower than when it was profiled: the plan at 0.6 of the table's dense
    latency measures 0.6 of the dense model timed with it, and is kept as landed (one timing)."""
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0)
    budget = _budget(groups, table, 0.6)
    scale = table.dense_ms / budget.model.dense_ms  # the table's measured dense vs its prediction
    timer = _biased_timer(budget, 1.3 * scale, 1.3 * table.dense_ms)
    budget.land(_lapp_landing(groups)(budget), timer=timer)
    assert len(budget.landing) == 1 and abs(budget.landing[0]["measured_vs_target"] - 1) <= LANDING_WINDOW + 1e-3
    assert budget.limit == budget.target


def test_an_unreachable_correction_keeps_the_fastest_plan_timed(tiny):
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0)
    budget = _budget(groups, table, None, target_ms=0.6 * table.dense_ms)
    plan, _ = budget.land(_lapp_landing(groups)(budget), timer=_biased_timer(budget, 10.0))
    ratios = [attempt["measured_vs_target"] for attempt in budget.landing]
    assert min(ratios) > 1 + MEASURED_TOLERANCE, "10x slower than predicted: no plan reaches the target"
    kept = 10.0 * budget.model.plan_ms(plan) / budget.target
    assert kept == pytest.approx(min(ratios), rel=1e-3)
    assert [a.get("kept", False) for a in budget.landing].count(True) == 1
    assert next(a for a in budget.landing if a.get("kept"))["measured_vs_target"] == min(ratios)


def test_a_plan_measured_far_below_the_target_never_steps_back_to_the_dense_network(tiny):
    """Every pruned model measures 0.3x its prediction: the corrected limits rise toward the dense prediction by
    at most half the remaining way each time, so no attempt lands the unpruned network (which measures
    1 / fraction of the target by construction)."""
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0)
    budget = _budget(groups, table, None, target_ms=0.6 * table.dense_ms)
    plan, _ = budget.land(_lapp_landing(groups)(budget), timer=_biased_timer(budget, 0.3))
    assert len(budget.landing) >= 2, "0.3x is outside the tolerance: the limit is corrected"
    assert all(attempt["predicted_ms"] < budget.model.dense_ms for attempt in budget.landing), budget.landing
    assert not plan.is_empty and budget.model.plan_ms(plan) < budget.model.dense_ms


def test_the_uniform_baseline_lands_by_measurement_too(tiny):
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0)
    budget = _budget(groups, table, None, target_ms=0.7 * table.dense_ms)
    config = LappConfig(target_latency_ms=budget.target, round_to=1)
    scores = channel_scores(groups, "l2")

    def land(limit: float):
        return uniform_budget_plan(groups, config, budget, limit, scores), None

    plan, _ = budget.land(land, timer=_biased_timer(budget, 1.15))
    assert abs(1.15 * budget.model.plan_ms(plan) / budget.target - 1) <= MEASURED_TOLERANCE, budget.landing


def test_a_modelled_table_is_not_landed_by_measurement(tiny):
    """A synthetic table predicts no machine: there is nothing to correct toward, so no timing happens."""
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0)
    budget = _budget(groups, table, 0.6, dense=copy.deepcopy(model).eval())
    plan, _ = budget.land(_lapp_landing(groups)(budget))
    assert budget.landing == [] and budget.model.plan_ms(plan) <= budget.target


def _measured_budget(model, groups) -> tuple[LatencyBudget, float]:
    """A budget on a table profiled here, its target 60% of the way from the narrowest widths' predicted latency
    to the dense one's (short timings of a tiny model are noisy: a fixed fraction can fall below the floor)."""
    table = profile_model(model, SHAPE, model_name="tiny_resnet", batch=2, points=3, timing=FAST, dense_seconds=0.05)
    latency = LatencyModel(groups, table)
    thresholds = GroupThresholds(groups)
    floor = latency.plan_ms(minimum_plan(groups, thresholds, thresholds.normalise(channel_scores(groups, "l2"))))
    fraction = (floor + 0.6 * (latency.dense_ms - floor)) / table.dense_ms
    return _budget(groups, table, fraction, dense=copy.deepcopy(model).eval()), fraction


def test_a_table_measured_here_is_landed_by_timing_the_deploy_model_on_onnx_runtime(tiny):
    model, groups = tiny
    budget, fraction = _measured_budget(model, groups)
    landed = _lapp_landing(groups)(budget)
    plan, _ = budget.land(landed)
    assert 1 <= len(budget.landing) <= MEASURED_ATTEMPTS
    for attempt in budget.landing:
        assert attempt["measured_ms"] > 0 and attempt["dense_ms"] > 0
        assert attempt["measured_vs_target"] == pytest.approx(
            attempt["measured_ms"] / (fraction * attempt["dense_ms"]), rel=1e-2
        )
    assert budget.model.plan_ms(plan) < budget.model.dense_ms
    assert json.loads(json.dumps(budget.report(plan)))["latency"]["measured_landing"] == budget.landing
    # the report reads the final model against the dense model timed with it, as the landing did
    section = budget.deploy_report(plan, remove_channels_(copy.deepcopy(model), plan, torch.zeros((2, *SHAPE))))
    latency = section["latency"]
    assert latency["measured_ms"] > 0 and latency["dense_measured_now_ms"] > 0
    expected = latency["measured_ms"] / (fraction * latency["dense_measured_now_ms"])
    assert latency["measured_vs_target"] == pytest.approx(expected, rel=1e-3)


def test_the_measured_landing_is_off_unless_asked_for():
    assert LappConfig(target_latency=0.8).measured_landing is False
    assert LappConfig(target_latency=0.8, measured_landing=True).measured_landing is True


def test_no_measured_landing_keeps_the_predicted_landing(tiny):
    model, groups = tiny
    budget, _ = _measured_budget(model, groups)
    budget.measured_landing = False
    plan, _ = budget.land(_lapp_landing(groups)(budget))
    assert budget.landing == [] and budget.model.plan_ms(plan) <= budget.target
