"""Width steps and `--round-to auto`: the block size read off a probe, per-group multiples from a table,
rounding and landing with one multiple per group, profiling that probes, and compress end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lappdeploy.latency import LatencyTable, LatencyTableError, synthetic_table
from lappdeploy.latency.profile import PointTiming, profile_model
from lappdeploy.latency.steps import detect_multiple, group_multiples, probe_layers, probe_widths
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, fill_plan, random_plan, round_plan
from lappdeploy.surgery.plan import macs_measure, plan_cost

SHAPE = (3, 16, 16)
FAST = PointTiming(warmup_calls=2, warmup_seconds=0.0, calls=3, seconds=0.0, max_seconds=0.01, min_calls=1)
TINY = [
    "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples",
    "64", "--synthetic-classes", "4", "--batch-size", "32", "--epochs", "1", "--prune-epochs", "1", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=4, in_channels=3)
    return model, analyze(model, torch.zeros((2, *SHAPE)))


def _padded(widths, period: int, noise: float, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    padded = [np.ceil(w / period) * period for w in widths]
    return [0.01 * p * (1 + noise * rng.standard_normal()) for p in padded]


@pytest.mark.parametrize(
    ("period", "noise"), [(1, 0.0), (4, 0.0), (8, 0.0), (16, 0.0), (1, 0.03), (4, 0.01), (8, 0.03), (16, 0.03)]
)
def test_the_block_size_is_read_off_a_probe(period, noise):
    widths = probe_widths(64)
    assert widths == list(range(32, 65))
    assert detect_multiple(widths, _padded(widths, period, noise)) == period


def test_steps_lost_in_the_noise_mostly_read_as_no_steps_not_as_coarser_blocks():
    widths = probe_widths(64)
    found = [detect_multiple(widths, _padded(widths, 4, 0.03, seed)) for seed in range(10)]
    assert set(found) <= {1, 4, 16} and sum(m > 4 for m in found) <= 1, found


def test_one_slow_timing_does_not_decide_the_block_size():
    widths = probe_widths(64)
    ms = _padded(widths, 16, 0.01)
    ms[7] *= 3  # a scheduler hiccup
    assert detect_multiple(widths, ms) == 16
    smooth = _padded(widths, 1, 0.01)
    smooth[7] *= 3
    assert detect_multiple(widths, smooth) == 1


def test_a_layer_whose_latency_is_flat_over_all_its_widths_is_one_block():
    widths = probe_widths(16)
    assert widths[0] == 1 and detect_multiple(widths, [0.5] * len(widths)) == 16


@pytest.mark.parametrize("pad_to", [1, 4, 8])
def test_group_multiples_follow_the_table_and_every_group_is_probed(tiny, pad_to):
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, pad_to=pad_to)
    assert set(probe_layers(groups, _specs(model)).keys()) == {g.id for g in groups.prunable}
    multiples = group_multiples(groups, table)
    assert set(multiples) == {g.id for g in groups.prunable}
    # narrow groups whose every width fits one block are one block (flat latency): min(pad, width) or wider
    assert all(m == pad_to or (m >= g.channels and g.channels <= pad_to) for g in groups.prunable
               for m in [multiples[g.id]]), multiples  # fmt: skip


def _specs(model):
    from lappdeploy.export.onnx_export import deploy_copy
    from lappdeploy.latency.profile import layer_specs

    return layer_specs(deploy_copy(model, torch.zeros((2, *SHAPE))), SHAPE)


def test_a_table_without_probes_cannot_round_auto(tiny):
    model, groups = tiny
    table = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6)
    table.steps = {}
    with pytest.raises(LatencyTableError, match=r"has none.*--round-to K"):
        group_multiples(groups, table)


def test_rounding_and_landing_keep_each_group_on_its_own_multiple(tiny):
    _, groups = tiny
    per_group = {g.id: (4 if g.channels >= 16 else 1) for g in groups.prunable}
    plan = random_plan(groups, 0.55, seed=3)
    rounded = round_plan(plan, groups, per_group)
    counts = {gid: len(gp.keep) for gid, gp in rounded.groups.items()}
    assert all(counts.get(g.id, g.channels) % per_group[g.id] == 0 for g in groups.prunable), counts
    budget = 0.7 * plan_cost(groups, rounded.__class__()).macs
    landed = fill_plan(rounded, groups, per_group, scores=torch.rand(groups.global_channels), budget=budget)
    assert macs_measure(groups)(landed) <= budget
    counts = {gid: len(gp.keep) for gid, gp in landed.groups.items()}
    assert all(counts.get(g.id, g.channels) % per_group[g.id] == 0 for g in groups.prunable), counts
    assert rounded.info["round_to"] == per_group


def test_profiling_probes_every_group_and_the_table_round_trips(tmp_path, tiny):
    model, groups = tiny
    table = profile_model(model, SHAPE, model_name="tiny_resnet", batch=2, points=2, timing=FAST, dense_seconds=0.05)
    assert set(table.steps) == set(probe_layers(groups, _specs(model)).values())
    probe = table.steps["layer3.0.conv1"]
    assert probe["widths"] == list(range(1, 33)) and len(probe["ms"]) == 32 and probe["multiple"] >= 1
    again = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert again.steps == table.steps
    assert set(group_multiples(groups, again)) == {g.id for g in groups.prunable}
    no_probe = profile_model(model, SHAPE, model_name="tiny_resnet", batch=2, points=2, timing=FAST,
                             dense_seconds=0.05, probe_steps=False)  # fmt: skip
    assert no_probe.steps == {} and no_probe.measurements < table.measurements


def test_a_malformed_probe_is_a_one_line_table_error(tmp_path, tiny):
    model, _ = tiny
    data = synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6).to_dict()
    name = next(iter(data["steps"]))
    data["steps"][name]["ms"] = data["steps"][name]["ms"][:-1]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match=f"probe of layer '{name}' is malformed"):
        LatencyTable.load(path)


@pytest.fixture(scope="module")
def padded_table(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("steps") / "tiny-pad8.json"
    synthetic_table(tiny[0], SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0, pad_to=8).save(path)
    return path


@pytest.mark.parametrize("method", ["lapp", "uniform"])
def test_compress_round_to_auto_lands_on_the_table_multiples(cli, tmp_path, padded_table, method):
    out = tmp_path / "run"
    args = ["--method", method, "--target-latency", "0.8", "--latency-table", padded_table, "--round-to", "auto"]
    result = cli("compress", *TINY, *args, "--out", out)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    multiples = report["latency"]["round_to"]
    assert report["round_to"] == "auto" and set(multiples.values()) == {8}, multiples
    plan = json.loads((out / "plan.json").read_text())
    for gid, group in plan["groups"].items():
        assert len(group["keep"]) % multiples[gid] == 0, (gid, len(group["keep"]))
    assert report["latency"]["predicted_ms"] <= report["latency"]["target_ms"] * (1 + 1e-9)
    assert report["macs_ratio"] < 1, "something was pruned"


def test_round_to_auto_without_a_latency_budget_or_with_a_bad_value_is_one_line(cli, tmp_path):
    result = cli("compress", *TINY, "--round-to", "auto", "--out", tmp_path / "a")
    assert result.code == 2 and "--round-to auto reads the width steps" in result.err
    assert "Traceback" not in result.err and not (tmp_path / "a").exists()
    result = cli("compress", *TINY, "--round-to", "sixteen", "--out", tmp_path / "b")
    assert result.code == 2 and "neither a whole number of channels nor auto" in result.err
