"""Latency as a budget: tables (format, checks, fingerprint), the differentiable latency model (exact at
the grid, differentiable between, monotone), the budget guarantee on it, real profiling on ONNX Runtime,
and `compress --target-latency` end to end with its bad-input errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lappdeploy.bench.ort_session import OrtSession
from lappdeploy.errors import BenchError
from lappdeploy.latency import (
    LatencyModel,
    LatencyTable,
    LatencyTableError,
    check_fingerprint,
    interpolate,
    synthetic_table,
    width_grid,
)
from lappdeploy.latency.calibration import CALIBRATION_MODELS, fit_calibration
from lappdeploy.latency.profile import (
    LayerSpec,
    PointTiming,
    cached_profile,
    layer_onnx,
    layer_specs,
    profile_model,
    speed_drift,
)
from lappdeploy.methods.budgets import LatencyBudget
from lappdeploy.methods.common import LANDING_WINDOW, GroupThresholds, plan_within_budget
from lappdeploy.models import create_model
from lappdeploy.surgery import ChannelPlan, analyze, channel_scores, random_plan, random_widths_plan, uniform_plan

SHAPE = (3, 16, 16)
FAST = PointTiming(warmup_calls=2, warmup_seconds=0.0, calls=3, seconds=0.0, max_seconds=0.01, min_calls=1)
TINY = [
    "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples",
    "64", "--synthetic-classes", "4", "--batch-size", "32", "--epochs", "1", "--prune-epochs", "1",
    "--round-to", "1", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=4, in_channels=3)
    groups = analyze(model, torch.zeros((2, *SHAPE)))
    return model, groups


@pytest.fixture(scope="module")
def table(tiny):
    return synthetic_table(tiny[0], SHAPE, model_name="tiny_resnet", step=1, points=6)


def _one_line_error(result) -> str:
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.err, result.err
    return lines[0]


# ---------------------------------------------------------------------------------------------- the model
def test_interpolation_is_exact_at_every_grid_point():
    in_grid, out_grid = (
        torch.tensor([1.0, 8, 16, 40], dtype=torch.float64),
        torch.tensor([1.0, 4, 32], dtype=torch.float64),
    )
    ms = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for i, c_in in enumerate(in_grid):
        for j, c_out in enumerate(out_grid):
            assert interpolate(in_grid, out_grid, ms, c_in, c_out).item() == pytest.approx(ms[i, j].item(), abs=1e-12)


def test_interpolation_is_differentiable_between_grid_points():
    in_grid, out_grid = torch.tensor([1.0, 8, 16], dtype=torch.float64), torch.tensor([1.0, 4, 32], dtype=torch.float64)
    ms = torch.rand(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for c_in, c_out in ((3.3, 2.2), (12.5, 20.0), (9.0, 5.0)):
        x = torch.tensor(c_in, dtype=torch.float64, requires_grad=True)
        y = torch.tensor(c_out, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: interpolate(in_grid, out_grid, ms, a, b), (x, y))
        value = interpolate(in_grid, out_grid, ms, x, y)
        value.backward()
        assert x.grad.abs().item() > 0 and y.grad.abs().item() > 0, "a random table has a slope inside a cell"


def test_predicted_latency_never_rises_when_channels_go_on_a_monotone_table(tiny, table):
    _, groups = tiny
    latency = LatencyModel(groups, table)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        mask = torch.rand(groups.global_channels, generator=generator, dtype=torch.float64).requires_grad_()
        latency(mask).backward()
        assert (mask.grad >= -1e-12).all(), "removing (part of) a channel must not raise the prediction"
        assert mask.grad.sum() > 0
    hard = torch.ones(groups.global_channels)
    before = float(latency(hard))
    for index in torch.randperm(groups.global_channels, generator=generator)[:20]:
        hard[index] = 0
        now = float(latency(hard))
        assert now <= before + 1e-9
        before = now


def test_dense_prediction_is_the_table_sum_at_full_width(tiny, table):
    _, groups = tiny
    expected = table.scale * sum(layer.ms[-1][-1] for layer in table.layers.values()) + table.remainder_ms
    assert LatencyModel(groups, table).dense_ms == pytest.approx(expected, rel=1e-12)
    assert LatencyModel(groups, table).dense_ms == pytest.approx(table.dense_ms, rel=1e-12)


@pytest.mark.parametrize("fraction", [0.9, 0.75, 0.6])
def test_the_budget_guarantee_holds_on_the_latency_model(tiny, table, fraction):
    _, groups = tiny
    latency = LatencyModel(groups, table)
    thresholds = GroupThresholds(groups)
    normalised = thresholds.normalise(channel_scores(groups, "l2"))
    budget = fraction * latency.dense_ms
    ms_budget = LatencyBudget(groups, latency, table, source="t.json", target_ms=budget, round_to=1, flag="--t")
    plan, _ = plan_within_budget(groups, thresholds, normalised, torch.zeros(len(thresholds.ids)), budget,
                                 budget=ms_budget)  # fmt: skip
    assert latency.plan_ms(plan) <= budget
    assert latency.plan_ms(plan) >= (1 - LANDING_WINDOW) * budget, "lands within the window under the budget"


def test_a_table_missing_layers_of_the_model_is_refused_naming_them(tiny):
    table = synthetic_table(tiny[0], SHAPE, model_name="tiny_resnet")
    first = next(iter(table.layers))
    del table.layers[first]
    with pytest.raises(LatencyTableError, match=f"no entry for layer.*{first}"):
        LatencyModel(tiny[1], table)


# ---------------------------------------------------------------------------------------------- tables
def test_width_grid_keeps_every_step_for_narrow_layers_and_bounds_wide_ones():
    assert width_grid(16, 8, 12) == [1, 8, 16]
    assert width_grid(20, 8, 12) == [1, 8, 16, 20]
    wide = width_grid(2048, 8, 12)
    assert len(wide) <= 12 and wide[0] == 1 and wide[-1] == 2048 and all(w % 8 == 0 for w in wide[1:])
    assert all(w % 4 == 0 for w in width_grid(64, 8, 12, multiple=4)), "grouped convs: multiples of groups"


def test_a_table_round_trips_and_corrupt_ones_are_one_line_errors(tmp_path, table):
    path = table.save(tmp_path / "t.json")
    again = LatencyTable.load(path)
    assert again.layers.keys() == table.layers.keys() and again.dense_ms == table.dense_ms
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatencyTableError, match="not readable JSON"):
        LatencyTable.load(tmp_path / "bad.json")
    data = json.loads(path.read_text())
    first = next(iter(data["layers"]))
    data["layers"][first]["ms"] = [[1.0]]  # not the grid's shape
    (tmp_path / "ragged.json").write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="grid"):
        LatencyTable.load(tmp_path / "ragged.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(LatencyTableError, match="not a lappdeploy latency table"):
        LatencyTable.load(tmp_path / "other.json")
    with pytest.raises(LatencyTableError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


def test_a_table_from_another_device_is_refused_unless_forced(table):
    foreign = LatencyTable.from_dict({**table.to_dict(), "fingerprint": {**table.fingerprint, "processor": "Jetson"}})
    with pytest.raises(LatencyTableError, match=r"measured elsewhere: processor 'Jetson'.*--force-table"):
        check_fingerprint(foreign, "t.json")
    check_fingerprint(foreign, "t.json", force=True)
    check_fingerprint(table, "t.json")  # this machine's own


# ---------------------------------------------------------------------------------------------- profiling
def test_profiling_times_every_layer_and_the_cache_reuses_the_table(tmp_path, tiny):
    model, groups = tiny
    settings = {"batch": 2, "threads": 1, "points": 3, "step": 8, "timing": FAST, "dense_seconds": 0.05}
    table, path, reused = cached_profile(model, SHAPE, model_name="tiny_resnet", cache_dir=tmp_path, **settings)
    assert not reused and path.is_file()
    names = [spec.name for spec in layer_specs(model, SHAPE)]
    assert list(table.layers) == names
    for name, layer in table.layers.items():
        spec = next(s for s in layer_specs(model, SHAPE) if s.name == name)
        assert layer.out_grid[-1] == spec.out_channels and len(layer.out_grid) <= 3
        assert all(value > 0 for row in layer.ms for value in row)
    assert table.dense_ms > 0 and len(table.calibration) == CALIBRATION_MODELS and table.scale > 0
    assert table.provenance["dense_ms_before"] > 0, "the dense model timed before the layers too"
    assert table.fingerprint["runtime"] == "ort" and table.batch == 2
    assert table.provenance["layer_timing"] == "kernels (profiler)", "ORT CPU layers are timed by their kernels"
    again, again_path, reused = cached_profile(model, SHAPE, model_name="tiny_resnet", cache_dir=tmp_path, **settings)
    assert reused and again_path == path and again.layers.keys() == table.layers.keys()
    LatencyModel(groups, again)  # names match the cost model's layers


def test_a_layer_timed_by_its_kernels_leaves_out_the_call_and_the_layout_conversions(tmp_path):
    # a conv alone on the CPU converts its input to the blocked layout and its output back; inside a model
    # that happens once at the model's edges, so the kernel time is what the layer costs there
    spec = LayerSpec("conv", "conv", 32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, (56, 56))
    layer_onnx(spec, 32, 32, 2, tmp_path / "layer.onnx")
    session = OrtSession(tmp_path / "layer.onnx", provider="cpu", threads=1, kernel_profile=True)
    session.set_batch(2)
    wall = [session.infer()[0] for _ in range(20)]
    kernels = session.kernel_ms()
    assert len(kernels) == 20 and all(k > 0 for k in kernels)
    assert np.median(kernels) < np.median(wall), "kernels are part of the call"
    assert not session.kernel_profiled
    with pytest.raises(BenchError, match="GPU provider"):
        OrtSession(tmp_path / "layer.onnx", provider="cuda", threads=1, kernel_profile=True)


def test_a_machine_whose_speed_changed_while_profiling_is_named():
    assert speed_drift(2.0, 2.15) is None, "7.5%: within timing noise"
    warning = speed_drift(4.41, 6.48)
    assert warning is not None and "4.41 ms before profiling and 6.48 ms after" in warning and "--refresh" in warning
    assert speed_drift(6.98, 4.98) is not None, "faster afterwards is a drift too"


def test_a_fresh_profile_predicts_its_own_calibration_models(tiny):
    model, groups = tiny
    table = profile_model(model, SHAPE, model_name="tiny_resnet", batch=2, points=3, timing=FAST, dense_seconds=0.05)
    latency = LatencyModel(groups, table)
    predicted = [table.scale * r["layers_ms"] + table.remainder_ms for r in table.calibration]  # no depthwise here
    assert latency.dense_ms == pytest.approx(predicted[0], rel=1e-6)
    assert table.calibration[0]["plan"] == "dense" and table.calibration[0]["measured_ms"] == table.dense_ms


def test_a_whole_model_fit_that_would_invert_the_model_falls_back_to_scale_one(tiny, table):
    _, groups = tiny
    plans = [ChannelPlan(), *(random_plan(groups, r, seed=1) for r in (0.3, 0.5, 0.7))]
    unscaled = [LatencyModel(groups, table).plan_ms(p) for p in plans]
    # timings that fall as the layers grow (noise on a tiny model): a negative slope would reward width
    measured = [(plan, 2.0 - 0.5 * ms) for plan, ms in zip(plans, unscaled, strict=True)]
    assert len(set(unscaled)) == len(plans), "distinct plans, so a line could be fitted"
    fit = fit_calibration(groups, table.layers, measured)
    assert fit.scale == 1.0 and fit.kind_scales == {}
    assert fit.remainder_ms == pytest.approx(measured[0][1] - fit.records[0]["layers_ms"], abs=1e-4)


@pytest.fixture(scope="module")
def mobilenet():
    """A MobileNetV2 at 32 px (depthwise layers), its groups, a synthetic table and the calibration plans."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=4, in_channels=3)
    shape = (3, 32, 32)
    groups = analyze(model, torch.zeros((2, *shape)))
    table = synthetic_table(model, shape, model_name="mobilenet_v2", step=8, points=4, ms_per_gmac=200.0)
    plans = [ChannelPlan(), uniform_plan(groups, 0.5), uniform_plan(groups, 0.25)]
    plans += [random_widths_plan(groups, step=8, seed=1000 + i) for i in range(6)]
    return groups, table, plans


def _timed_as(groups, table, plans, shared: float, depthwise: float, remainder: float, noise: float = 0.0):
    """Stand-in whole-model timings: `shared` x the table's non-depthwise layers + `depthwise` x its depthwise
    ones + `remainder` ms, times a fixed +-`noise` wobble."""
    unscaled = LatencyModel(groups, table)
    out = []
    for i, plan in enumerate(plans):
        parts = unscaled.kind_ms(plan)
        ms = shared * (parts["conv"] + parts.get("linear", 0.0)) + depthwise * parts["depthwise"] + remainder
        out.append((plan, ms * (1 + noise * (-1) ** i)))
    return out


def test_the_fit_gives_depthwise_layers_their_own_scale_where_whole_models_say_so(mobilenet):
    groups, table, plans = mobilenet
    measured = _timed_as(groups, table, plans, shared=0.8, depthwise=0.2, remainder=0.2, noise=0.001)
    fit = fit_calibration(groups, table.layers, measured)
    assert fit.kind_scales["depthwise"] == pytest.approx(0.2, rel=0.2) and fit.scale == pytest.approx(0.8, rel=0.05)
    assert fit.loo_error < 0.005
    fitted = LatencyModel(groups, replace(table, scale=fit.scale, kind_scales=fit.kind_scales,
                                          remainder_ms=fit.remainder_ms))  # fmt: skip
    for plan, ms in measured:
        assert fitted.plan_ms(plan) == pytest.approx(ms, rel=0.005)


def test_one_scale_is_kept_where_a_depthwise_scale_predicts_no_better(mobilenet):
    groups, table, plans = mobilenet
    measured = _timed_as(groups, table, plans, shared=0.7, depthwise=0.7, remainder=0.1, noise=0.01)
    fit = fit_calibration(groups, table.layers, measured)
    assert fit.kind_scales == {} and fit.scale == pytest.approx(0.7, rel=0.05)


def test_a_version_1_table_reads_with_one_scale_and_bad_kind_scales_are_refused(table):
    old = {k: v for k, v in table.to_dict().items() if k != "kind_scales"}
    loaded = LatencyTable.from_dict({**old, "version": 1, "scale": 0.5})
    assert loaded.kind_scales == {} and loaded.layer_scale("depthwise") == loaded.layer_scale("conv") == 0.5
    with pytest.raises(LatencyTableError, match="kind_scales must map layer kinds to positive numbers"):
        LatencyTable.from_dict({**table.to_dict(), "kind_scales": {"depthwise": -1.0}})
    with pytest.raises(LatencyTableError, match="version 3; this lappdeploy reads 1, 2"):
        LatencyTable.from_dict({**table.to_dict(), "version": 3})


# ---------------------------------------------------------------------------------------------- compress
@pytest.fixture(scope="module")
def table_file(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("latency") / "tiny.json"
    synthetic_table(tiny[0], SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0).save(path)
    return path


def test_compress_meets_a_latency_target_and_reports_predicted_and_measured(cli, tmp_path, table_file):
    out = tmp_path / "run"
    result = cli("compress", *TINY, "--target-latency", "0.6", "--latency-table", table_file, "--out", out)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    latency = report["latency"]
    assert latency["target_ms"] == pytest.approx(0.6 * LatencyTable.load(table_file).dense_ms, rel=1e-4)
    assert latency["predicted_ms"] <= latency["target_ms"] * (1 + 1e-9)
    assert latency["predicted_ms"] >= (1 - LANDING_WINDOW) * latency["target_ms"]
    assert latency["measured_ms"] > 0, "the table is this machine's: the final model is timed on its runtime"
    assert report["target_macs"] is None and report["macs_ratio"] < 1
    assert "latency, predicted" in result.out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("type") == "lapp" and "latency" in r for r in records)


def test_latency_target_errors_are_one_line_and_write_nothing(cli, tmp_path, table_file, table):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({**json.loads(table_file.read_text()), "fingerprint": {"processor": "Orin"}}))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": "lappdeploy.latency_table", "version": 1, "layers": {"a": 1}}')
    dense_ms = LatencyTable.load(table_file).dense_ms
    cases = [
        (["--target-latency", "0.6", "--latency-table", foreign], "measured elsewhere"),
        (["--target-latency", "0.6", "--latency-table", corrupt], "malformed"),
        (["--target-latency-ms", str(dense_ms * 1.01), "--latency-table", table_file], "at or above the dense"),
        (["--target-latency", "0.001", "--latency-table", table_file], "unreachable"),
        (["--target-latency", "0.5", "--target-latency-ms", "1", "--latency-table", table_file], "set two budgets"),
        (["--latency-table", table_file], "need --target-latency"),
    ]
    for index, (args, expected) in enumerate(cases):
        out = tmp_path / f"run{index}"
        error = _one_line_error(cli("compress", *TINY, *args, "--out", out))
        assert expected in error, error
        assert not out.exists(), f"{args}: nothing is written"


def test_a_foreign_table_runs_with_force_table_but_is_not_timed_here(cli, tmp_path, table_file):
    foreign = tmp_path / "foreign.json"
    data = json.loads(table_file.read_text())
    foreign.write_text(json.dumps({**data, "fingerprint": {**data["fingerprint"], "processor": "Orin"}}))
    out = tmp_path / "run"
    args = ["--target-latency", "0.6", "--latency-table", foreign, "--force-table", "--out", out]
    result = cli("compress", *TINY, *args)
    assert result.code == 0, result.err
    latency = json.loads((out / "report.json").read_text())["latency"]
    assert latency["measured_ms"] is None and latency["predicted_ms"] <= latency["target_ms"] * (1 + 1e-9)


def test_profile_cli_writes_a_table_and_refuses_to_overwrite_it(cli, tmp_path, monkeypatch):
    out = tmp_path / "t.json"
    args = ["profile", "tiny_resnet", "--input-shape", "3x16x16", "--batch", "2", "--points", "2", "--out", out]
    defaults = profile_model.__kwdefaults__  # the command's timing, shortened for a test
    monkeypatch.setitem(defaults, "timing", FAST)
    monkeypatch.setitem(defaults, "dense_seconds", 0.05)
    result = cli(*args)
    assert result.code == 0, result.err
    assert LatencyTable.load(out).model == "tiny_resnet" and "table:" in result.out
    assert "exists; pass --force" in _one_line_error(cli(*args))


def test_random_plans_are_cheaper_than_dense_on_a_profiled_table(tiny, table):
    _, groups = tiny
    latency = LatencyModel(groups, table)
    for seed in range(3):
        assert latency.plan_ms(random_plan(groups, 0.5, seed=seed)) < latency.plan_ms(ChannelPlan())


def test_a_resumed_run_refuses_another_table_or_target(tmp_path, tiny, table_file):
    from lappdeploy.errors import ConfigError
    from lappdeploy.methods import method_config, spec_for

    def hook(table: str, target: float):
        torch.manual_seed(0)
        model = create_model("tiny_resnet", num_classes=4, in_channels=3)
        config = method_config({"name": "lapp", "target_latency": target, "latency_table": table, "round_to": 1})
        return spec_for(config).prepare(model, torch.zeros((2, *SHAPE)), config)

    state = hook(str(table_file), 0.6).state_dict()
    assert state["budget"]["table"] == LatencyTable.load(table_file).digest()
    hook(str(table_file), 0.6).load_state_dict(state, None)  # the same table and target resume
    other = tmp_path / "other.json"
    synthetic_table(tiny[0], SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=300.0).save(other)
    for table, target in ((str(other), 0.6), (str(table_file), 0.7)):
        with pytest.raises(ConfigError, match="this run started with latency table"):
            hook(table, target).load_state_dict(state, None)
