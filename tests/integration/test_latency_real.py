"""The latency model against real timings: a small network profiled for real on ONNX Runtime CPU (a small grid,
seconds), its predictions for plans of very different sizes against those plans timed whole, interleaved; and
`compress` under a measured-latency target (fraction, milliseconds, and with the measured landing) checked against
the target by the final model's own timing.

Tolerances. `make test` runs these alone (marker `timing`), but a shared CI machine still moves a few-millisecond
timing by 10-20% between rounds (the benchmark, on a quiet machine, finds 1-4% median error: docs/latency.md). What a
broken latency model does is larger and different in kind: a model blind to widths orders plans at random, one off in
scale misses every plan by the same large factor. So: every two plans measured more than 40% apart (that noise combined
with the coarse test table's interpolation error: one run here found a plan predicted 19% low, ordered against one
22% faster) are ordered alike by the prediction (plans spanning a 4x range of latency), the median relative error is
<= 25%, and a compressed model lands within 30% of its latency target (the target a fraction of the dense model timed
in the same conditions). Plans keep widths in multiples of 8, the table's step: between grid points a CPU pads
channels to its vector width, which no interpolation of the grid sees (compress rounds the same way by default)."""

from __future__ import annotations

import copy
import json
import statistics
import sys

import pytest
import torch

from lappdeploy.latency import LatencyModel
from lappdeploy.latency.profile import PointTiming, measure_models_ms, profile_model
from lappdeploy.methods.budgets.latency import MEASURED_TOLERANCE
from lappdeploy.surgery import analyze, random_widths_plan, remove_channels_, round_plan, uniform_plan

SHAPE = (3, 16, 16)
BATCH = 8
CHAIN = '''
from torch import nn

def build(num_classes=10, in_channels=3, width=32):
    """Four 3x3 convs with BatchNorm and ReLU, then a classifier: a network whose latency follows its widths."""
    layers, channels = [], in_channels
    for out in (width, 2 * width, 2 * width, 4 * width):
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, num_classes))
'''
pytestmark = pytest.mark.timing

TIMING = PointTiming(warmup_calls=3, warmup_seconds=0.0, calls=15, seconds=0.0, max_seconds=0.05, min_calls=8)


@pytest.fixture(scope="module")
def chain_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    (folder / "latency_chain.py").write_text(CHAIN)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("latency_chain", None)


@pytest.fixture(scope="module")
def profiled(chain_module):
    from lappdeploy.models import create_model

    torch.manual_seed(0)
    model = create_model("latency_chain:build", num_classes=10, in_channels=3).eval()
    table = profile_model(model, SHAPE, model_name="latency_chain:build", batch=BATCH, threads=1, points=4,
                          timing=TIMING, dense_seconds=0.2, probe_steps=False)  # fmt: skip
    return model, table


def _discordant(predicted: list[float], measured: list[float], apart: float = 1.4) -> list[tuple[int, int]]:
    """Pairs of models whose measured latencies differ by more than `apart` x but whose predictions order them the
    other way. (Near-equal measurements are left out: their order is the machine's noise, not the model's.)"""
    pairs = []
    for i in range(len(measured)):
        for j in range(len(measured)):
            if measured[i] > apart * measured[j] and not predicted[i] > predicted[j]:
                pairs.append((i, j))
    return pairs


def test_a_real_table_predicts_plans_of_very_different_sizes(profiled):
    model, table = profiled
    groups = analyze(model, torch.zeros((2, *SHAPE)))
    latency = LatencyModel(groups, table)
    # widths in multiples of 8, the table's grid step (what compress's --round-to 8 gives): between them a CPU
    # pads channels to its vector width, which no interpolation of the grid sees
    plans = [round_plan(uniform_plan(groups, macs), groups, 8) for macs in (0.05, 0.15, 0.35, 0.6)]
    plans += [random_widths_plan(groups, step=8, seed=seed) for seed in (1, 2)]
    models = []
    for plan in plans:
        pruned = copy.deepcopy(model)
        remove_channels_(pruned, plan, torch.zeros((2, *SHAPE)))
        models.append(pruned)
    measured = measure_models_ms([model, *models], SHAPE, batch=BATCH, threads=1, seconds=0.3)
    predicted = [latency.dense_ms, *(latency.plan_ms(plan) for plan in plans)]
    assert max(measured) / min(measured) > 4, f"the plans must span a wide range of latency: {measured}"
    errors = [abs(p / m - 1) for p, m in zip(predicted, measured, strict=True)]
    assert not _discordant(predicted, measured), (predicted, measured)
    assert statistics.median(errors) <= 0.25, (predicted, measured)


@pytest.fixture
def table_file(profiled, tmp_path):
    path = tmp_path / "chain.json"
    profiled[1].save(path)
    return path


TRAIN = ["--model", "latency_chain:build", "--dataset", "synthetic", "--synthetic-shape", "3x16x16",
         "--synthetic-samples", "64", "--batch-size", "32", "--epochs", "1", "--prune-epochs", "1",
         "--method", "uniform", "--device", "cpu"]  # fmt: skip


def _latency(out) -> dict:
    return json.loads((out / "report.json").read_text())["latency"]


@pytest.mark.parametrize("flags", [["--target-latency", "0.5"], ["--target-latency", "0.5", "--measured-landing"]])
def test_compress_under_a_latency_target_measures_close_to_it(cli, chain_module, table_file, tmp_path, flags):
    result = cli("compress", *TRAIN, *flags, "--latency-table", table_file, "--out", tmp_path / "run")
    assert result.code == 0, result.err
    latency = _latency(tmp_path / "run")
    if "--measured-landing" in flags:  # the ceiling is the measurement: the prediction may sit above the target
        attempts = latency["measured_landing"]
        kept = next(a for a in attempts if a.get("kept"))
        fastest = min(a["measured_vs_target"] for a in attempts)
        assert kept["measured_vs_target"] <= 1 + MEASURED_TOLERANCE or kept["measured_vs_target"] == fastest, attempts
    else:
        assert latency["predicted_ms"] <= latency["target_ms"] * (1 + 1e-9), "a ceiling on the model"
    # the final model timed interleaved with the dense one (not against the dense timing in the table, made minutes
    # earlier under another load): its share of dense against the asked fraction
    share = latency["measured_ms"] / latency["dense_measured_now_ms"]
    assert share == pytest.approx(latency["measured_vs_dense"], abs=1e-3)
    assert abs(share / 0.5 - 1) <= 0.3, latency
    if "--measured-landing" in flags:
        attempts = latency["measured_landing"]
        assert attempts and sum(bool(a.get("kept")) for a in attempts) == 1, attempts


def test_compress_under_a_target_in_milliseconds(cli, chain_module, table_file, profiled, tmp_path):
    target = round(0.6 * profiled[1].dense_ms, 4)
    result = cli("compress", *TRAIN, "--target-latency-ms", target, "--latency-table", table_file,
                 "--out", tmp_path / "run")  # fmt: skip
    assert result.code == 0, result.err
    latency = _latency(tmp_path / "run")
    assert latency["target_ms"] == pytest.approx(target) and latency["predicted_ms"] <= target * (1 + 1e-9)
    # milliseconds drift with the machine between profiling and now (the other worker's load): the final model is
    # read against the dense one timed with it, scaled to the dense model's latency when the table was made
    now = latency["measured_ms"] / latency["dense_measured_now_ms"] * profiled[1].dense_ms
    assert abs(now / target - 1) <= 0.3, latency
