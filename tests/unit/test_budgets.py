"""One budget abstraction for every method: each method, from the CLI, meets a parameter budget and a latency
budget (a synthetic table: its predictions, not a machine's, so the check is exact), reports it in the same
`budget` section, and refuses an unreachable one before anything is written. No method asks which kind of budget
it has: the branches on the kind live in `methods/budgets/` only (checked on the source)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from lappdeploy.latency import LatencyTable, synthetic_table
from lappdeploy.methods import METHODS, PcpConfig, UniformConfig, spec_for
from lappdeploy.methods.budgets import MacsBudget, ParamsBudget
from lappdeploy.methods.common import LANDING_WINDOW
from lappdeploy.models import create_model
from lappdeploy.surgery import ChannelPlan, analyze, plan_cost

SHAPE = (3, 16, 16)
RUN = [
    "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples",
    "160", "--batch-size", "16", "--epochs", "2", "--prune-epochs", "1",
    "--round-to", "1", "--holdout", "32", "--device", "cpu",
]  # fmt: skip
# methods whose plan is landed within LANDING_WINDOW under the limit (the iterative ones stop at their last step)
LANDED = {"lapp", "uniform", "global", "ldrf"}
METHOD_ARGS = {
    "laasp": ["--step-macs", "0.3"],
    "pcp": ["--attempt-fraction", "0.3"],
    "ldrf": ["--holdout", "64", "--calib-images", "48"],
}


def _compress(cli, tmp_path, tiny_run, method: str, *budget: str) -> dict:
    """A compress run's report; ldrf prunes the trained tiny run (--init-from, --prune-epochs 0)."""
    out = tmp_path / method
    own = METHOD_ARGS.get(method, []) + (
        ["--init-from", str(tiny_run), "--prune-epochs", "0"] if method == "ldrf" else []
    )
    result = cli("compress", *RUN, "--method", method, *own, *budget, "--out", out)
    assert result.code == 0, result.err
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10, in_channels=3)
    path = tmp_path_factory.mktemp("budgets") / "tiny.json"
    synthetic_table(model, SHAPE, model_name="tiny_resnet", step=1, points=6, ms_per_gmac=200.0).save(path)
    return path


@pytest.mark.parametrize("method", sorted(METHODS.names()))
def test_every_method_meets_a_parameter_budget(cli, tmp_path, tiny_run, method):
    report = _compress(cli, tmp_path, tiny_run, method, "--target-params", "0.5")
    budget = report["budget"]
    assert budget["kind"] == "params" and budget["unit"] == "parameters" and report["target_params"] == 0.5
    assert budget["cost"] == report["deploy_params"], "the budget counts the deploy model's parameters"
    assert budget["ratio"] <= 0.5 + 1e-9, budget
    if method in LANDED:
        assert budget["ratio"] >= 0.5 * (1 - LANDING_WINDOW) - 1e-9, budget
    assert report["target_macs"] is None, "the MACs fall where the parameter budget puts them"


@pytest.mark.parametrize("method", ["laasp", "pcp", "ldrf"])
def test_the_attempt_methods_and_ldrf_meet_a_latency_budget(cli, tmp_path, tiny_run, table_file, method):
    report = _compress(cli, tmp_path, tiny_run, method, "--target-latency", "0.6", "--latency-table", str(table_file))
    latency, budget = report["latency"], report["budget"]
    assert budget["kind"] == "latency" and latency["target_ms"] == pytest.approx(
        0.6 * LatencyTable.load(table_file).dense_ms, rel=1e-4
    )
    assert latency["predicted_ms"] <= latency["target_ms"] * (1 + 1e-9), latency
    assert budget["cost"] == pytest.approx(latency["predicted_ms"], rel=1e-4)


@pytest.mark.parametrize("method", ["uniform", "pcp"])
def test_an_unreachable_parameter_budget_is_one_line_and_writes_nothing(cli, tmp_path, method):
    result = cli("compress", *RUN, "--method", method, "--target-params", "0.001", "--out", tmp_path / "run")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "--target-params 0.001 is unreachable" in lines[0], result.err
    assert "parameters" in lines[0] and not (tmp_path / "run").exists()


def test_two_budgets_at_once_are_refused(cli, tmp_path):
    result = cli("compress", *RUN, "--target-params", "0.5", "--target-latency", "0.5", "--out", tmp_path / "run")
    assert result.code == 2 and "set two budgets" in result.err, result.err


def test_a_budget_costs_plans_as_the_surgery_counts_them():
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=4, in_channels=3)
    groups = analyze(model, torch.zeros((2, *SHAPE)))
    plan = ChannelPlan.from_dict({"groups": {}})
    macs, params = MacsBudget(groups, 0.5, round_to=1, flag="m"), ParamsBudget(groups, 0.5, round_to=1, flag="p")
    dense = plan_cost(groups, plan)
    assert (macs.dense, params.dense) == (dense.macs, dense.params)
    assert macs.target == 0.5 * dense.macs and params.limit == 0.5 * dense.params
    mask = torch.ones(groups.global_channels, dtype=torch.float64, requires_grad=True)
    soft = params.soft(mask)
    soft.backward()
    assert float(soft) == pytest.approx(dense.params) and mask.grad.abs().sum() > 0, "differentiable"


def test_a_resumed_run_refuses_another_kind_or_target():
    from lappdeploy.errors import ConfigError

    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=4, in_channels=3)
    groups = analyze(model, torch.zeros((2, *SHAPE)))
    macs = MacsBudget(groups, 0.5, round_to=1, flag="--target-macs 0.5")
    macs.check_resumed(macs.identity())
    for other in (ParamsBudget(groups, 0.5, round_to=1, flag="p"), MacsBudget(groups, 0.4, round_to=1, flag="m")):
        with pytest.raises(ConfigError, match="this run started with the budget"):
            other.check_resumed(macs.identity())


def test_methods_ask_the_budget_never_its_kind():
    """Outside methods/budgets/ (and the configs that parse and cross-check the flags), no method module compares
    a budget kind or reads a latency-only attribute: a new kind of budget needs no change to the methods."""
    root = Path(__file__).resolve().parents[2] / "lappdeploy" / "methods"
    kinds = {"macs", "params", "latency"}
    offenders = []
    for path in root.rglob("*.py"):
        if "budgets" in path.parts or path.relative_to(root).as_posix() in ("options.py", "base.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in kinds for c in [node.left, *node.comparators]
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
            if isinstance(node, ast.Name) and node.id == "LatencyBudget":
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders


def test_configs_carry_the_budget_group_and_only_their_own_groups():
    assert "target_params" in {f for f in UniformConfig.__dataclass_fields__}
    assert "reconstruct" not in METHODS.get("lapp").config.__dataclass_fields__
    assert spec_for(PcpConfig(target_params=0.5)).name == "pcp"
    assert PcpConfig(target_params=0.5).budget_kind() == "params"


def test_a_config_saved_when_lapp_had_the_reconstruction_options_still_loads():
    """Runs of earlier versions saved LAPP's (unused) reconstruction options at their defaults: those load;
    a value that would do something is still refused, naming the methods that have the option."""
    from lappdeploy.errors import ConfigError
    from lappdeploy.methods import LappConfig, method_config

    saved = {"name": "lapp", "target_macs": 0.5, "reconstruct": "none", "calib_images": 512, "ldrf_energy": 0.9}
    assert method_config(saved) == LappConfig(target_macs=0.5)
    with pytest.raises(ConfigError, match=r"--reconstruct is an option of method .*ldrf.*not of lapp"):
        method_config({**saved, "reconstruct": "ls"})
