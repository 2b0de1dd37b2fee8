"""`--bypass width`: a 1x1 bypass that stays, so a pruned kxk conv keeps its output width. Its filters are
a channel group of their own (residual-tied convs included), the deploy form is a kxk conv over the kept
filters (the 1x1 in their centre tap) plus a 1x1 over the others, merged in channel order; analytic MACs
equal measured, removal equals masking, the fold is exact, ONNX Runtime agrees, and it saves and loads.
torch-pruning, onnx and onnxruntime are real."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.export import to_onnx
from lappdeploy.methods import method_config
from lappdeploy.methods.lapp import prepare_
from lappdeploy.models import count_macs, create_model, model_card
from lappdeploy.surgery import (
    ChannelMasker,
    ChannelPlan,
    GroupPlan,
    add_bypass_,
    analyze,
    cost_model,
    deploy_cost,
    fold_bn_,
    fold_bypass_,
    load_model,
    plan_cost,
    random_plan,
    remove_channels_,
    save_model,
    surgery_steps,
)
from lappdeploy.surgery.widthconv import ChannelScatter, WidthBypassConvBN, WidthBypassDeploy
from lappdeploy.testing import bare_loop, logits_in_fresh_process, randomize_norms_

SHAPE = (3, 32, 32)


def _inputs(batch: int = 2) -> torch.Tensor:
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(1))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _wrapped_resnet20() -> tuple[nn.Module, list[str]]:
    torch.manual_seed(0)
    model = randomize_norms_(create_model("resnet20")).eval()
    wrapped = add_bypass_(model, _inputs(), kind="width")
    randomize_norms_(model, seed=1)  # the bypass BNs too
    return model, wrapped


def _deploy(model: nn.Module, x: torch.Tensor) -> nn.Module:
    deploy = copy.deepcopy(model)
    fold_bypass_(deploy)
    return fold_bn_(deploy, x)


def _prune_and_fold_exactly(model: nn.Module, x: torch.Tensor, plan: ChannelPlan):
    """Remove `plan` from `model` (float64) and fold it; both compute the masked model (1e-10 relative).
    Returns the plan's analytic cost and the deploy model."""
    groups = analyze(model, x)
    with ChannelMasker(groups) as masker, torch.no_grad():
        masker.set(plan)
        masked = model(x)
    cost = plan_cost(groups, plan)
    remove_channels_(model, plan, x)
    deploy = _deploy(model, x)
    with torch.no_grad():
        assert _relative_error(model(x), masked) < 1e-10
        assert _relative_error(deploy(x), masked) < 1e-10
    return cost, deploy


def test_every_kxk_conv_gets_its_own_group_and_the_streams_keep_their_width():
    model, wrapped = _wrapped_resnet20()
    # the stem and both 3x3 convs of all 9 blocks, the residual-tied conv2s included
    assert len(wrapped) == 19 and "conv1" in wrapped and "layer3.2.conv2" in wrapped
    groups = analyze(model, _inputs())
    assert sorted(g.id for g in groups.prunable) == sorted(f"{name}.conv" for name in wrapped)
    streams = [g for g in groups.groups if g.excluded and "width bypass" in g.excluded]
    assert len(streams) >= 4  # the stem's output and the three stages' residual streams, at least
    # with every filter kept the deploy model costs what the dense one does
    dense = plan_cost(analyze(create_model("resnet20"), _inputs()), ChannelPlan())
    assert plan_cost(groups, ChannelPlan()) == dense


def test_removal_equals_masking_and_the_fold_is_exact_at_the_analytic_cost():
    model, _ = _wrapped_resnet20()
    model.double()
    x = _inputs().double()
    cost, deploy = _prune_and_fold_exactly(model, x, random_plan(analyze(model, x), 0.4, seed=4))
    assert any(isinstance(m, WidthBypassDeploy) for m in deploy.modules())
    assert not any(isinstance(m, (WidthBypassConvBN, nn.BatchNorm2d)) for m in deploy.modules())
    deploy.float()
    assert count_macs(deploy, SHAPE).macs == cost.macs
    assert sum(p.numel() for p in deploy.parameters()) == cost.params
    assert [s["op"] for s in surgery_steps(deploy)] == ["add_bypass", "remove_channels", "fold_bypass", "fold_bn"]
    assert surgery_steps(deploy)[0]["kind"] == "width"


def test_a_layer_pruned_to_one_filter_still_passes_every_output_channel():
    model, _ = _wrapped_resnet20()
    x = _inputs()
    block = model.layer2[1].conv1
    plan = ChannelPlan({"layer2.1.conv1.conv": GroupPlan(channels=32, keep=[5])})
    groups = analyze(model, x)
    costs = cost_model(groups)
    kept_outputs = dict(zip(costs.names, costs.kept_counts(plan.keep_mask(groups))[1].tolist(), strict=True))
    remove_channels_(model, plan, x)
    assert block.conv.out_channels == 1 and block.scatter.kept.tolist() == [5]
    with torch.no_grad():
        out = block(torch.randn(2, 32, 16, 16))
    assert out.shape[1] == 32 and bool((out.abs().flatten(2).amax(-1) > 0).all())  # no output channel is dead
    # deploy cost of that layer: 3x3 over 1 filter + 1x1 over the other 31 outputs; 32 inputs, 16 x 16 px, bias
    assert kept_outputs["layer2.1.conv1.conv"] == 1 and kept_outputs["layer2.1.conv1.bypass_conv"] == 31
    deploy = _deploy(model, x)
    layer = deploy.layer2[1].conv1
    assert (layer.main.out_channels, layer.others.out_channels) == (1, 31)
    assert count_macs(layer, (32, 16, 16)).macs == 16 * 16 * (9 * 32 * 1 + 1) + 16 * 16 * (32 * 31 + 31)


def test_the_soft_cost_charges_a_kept_filter_its_kxk_minus_its_1x1():
    model, _ = _wrapped_resnet20()
    groups = analyze(model, _inputs())
    mask = torch.ones(groups.global_channels, dtype=torch.float64, requires_grad=True)
    macs, _ = deploy_cost(groups, mask)
    (grad,) = torch.autograd.grad(macs, mask)
    g = groups.group("layer2.1.conv1.conv")
    # d MACs / d kept filter = 16 x 16 positions x 32 inputs x (9 - 1) taps: the 1x1 takes over a dropped one
    expected = torch.full((32,), 16.0 * 16 * 32 * 8, dtype=torch.float64)
    assert torch.allclose(grad[g.offset : g.offset + g.channels], expected)


def test_removal_mid_training_carries_the_optimizer_state_of_kept_filters():
    model, _ = _wrapped_resnet20()
    model.train()
    x = _inputs(8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    nn.functional.cross_entropy(model(x), torch.arange(8) % 10).backward()
    optimizer.step()
    block = model.layer1[0].conv2
    momentum = optimizer.state[block.conv.weight]["momentum_buffer"].clone()
    plan = random_plan(analyze(model, x), 0.5, seed=2)
    kept = plan.groups["layer1.0.conv2.conv"].keep
    remove_channels_(model, plan, x, optimizer=optimizer)
    assert torch.equal(optimizer.state[block.conv.weight]["momentum_buffer"], momentum[kept])
    assert block.scatter.kept.tolist() == sorted(kept)
    nn.functional.cross_entropy(model(x), torch.arange(8) % 10).backward()  # the compact model trains on
    optimizer.step()


def test_scatter_is_one_node_while_traced_and_keeps_its_gradient():
    from lappdeploy.models.tracing import as_one_op

    scatter = ChannelScatter(6)
    scatter.kept = torch.tensor([0, 2, 5])
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    plain = scatter(x)
    assert torch.equal(plain[:, [1, 3, 4]], torch.zeros(2, 3, 4, 4, dtype=torch.float64))
    with as_one_op():
        y = scatter(x)
        assert y.grad_fn.next_functions[0][0].variable is x
        torch.autograd.gradcheck(scatter, (x,))
    assert torch.equal(y, plain)


def test_onnx_export_agrees_with_pytorch(tmp_path):
    model, _ = _wrapped_resnet20()
    x = _inputs()
    remove_channels_(model, random_plan(analyze(model, x), 0.5, seed=5), x)
    record = to_onnx(model, x, tmp_path / "model.onnx")
    assert record.parity and max(check["relative_error"] for check in record.parity) < 1e-4
    assert record.macs == record.torch_macs == count_macs(_deploy(model, x), SHAPE).macs


def test_a_pruned_width_bypass_model_saves_and_loads_in_a_fresh_process(tmp_path):
    model, _ = _wrapped_resnet20()
    x = _inputs()
    remove_channels_(model, random_plan(analyze(model, x), 0.5, seed=6), x)
    path = tmp_path / "model.pt"
    save_model(model, path, model_card(model, input_shape=SHAPE))
    loaded = load_model(path).model.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
    assert _relative_error(logits_in_fresh_process(path, x, tmp_path), expected) < 1e-6


def test_mobilenet_gets_a_width_bypass_only_on_its_full_3x3_conv():
    # 1x1 and depthwise convs get none: a 1x1 bypass beside a 1x1 conv is no lighter than the conv
    wrapped = add_bypass_(create_model("mobilenet_v2"), torch.randn(2, *SHAPE), kind="width")
    assert wrapped == ["features.0.0"]


def test_lapp_learns_one_threshold_per_layer_and_freezes_within_budget():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    config = method_config({"name": "lapp", "target_macs": 0.5, "prune_epochs": 1, "round_to": 1, "bypass": "width"})
    controller = prepare_(model, _inputs(), config)
    assert len(controller.thresholds) == 19  # one per 3x3 conv
    with torch.no_grad():
        controller.thresholds.uniform_(0.8, 1.4)  # a plan above the budget: the freeze must raise them
    loop = bare_loop(model, _inputs(8))
    plan = controller.freeze_(loop)
    assert plan_cost(controller.groups, plan).macs <= 0.5 * controller.dense.macs  # a ceiling
    controller.remove_(loop)
    deploy = _deploy(model.eval(), _inputs())
    assert count_macs(deploy, SHAPE).macs == plan.info["macs"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_latency": 0.7}, "--bypass width deploys two convs"),
        ({"name": "uniform", "reconstruct": "ls"}, "cannot refit layers trained with --bypass width"),
    ],
)
def test_combinations_that_cannot_work_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        method_config({"name": "lapp", "bypass": "width", **options})


def test_residual_tied_convs_are_pruned_one_by_one():
    """With the streams at full width, the conv2 of two blocks on one stream keep different filter counts."""
    model, _ = _wrapped_resnet20()
    x = _inputs()
    groups = analyze(model, x)
    plan = ChannelPlan(
        {
            "layer1.0.conv2.conv": GroupPlan(channels=16, keep=list(range(4))),
            "layer1.1.conv2.conv": GroupPlan(channels=16, keep=list(range(12))),
        }
    )
    cost = plan_cost(groups, plan)
    remove_channels_(model, plan, x)
    assert (model.layer1[0].conv2.conv.out_channels, model.layer1[1].conv2.conv.out_channels) == (4, 12)
    assert model.layer1[0].conv2.bypass_conv.out_channels == 16  # the stream's width
    assert math.isclose(count_macs(_deploy(model, x), SHAPE).macs, cost.macs)


@pytest.mark.parametrize("name", ["resnet50", "vgg16_bn_cifar"])
def test_other_architectures_prune_mask_exactly_at_the_analytic_cost(name):
    """ResNet-50 mixes both kinds of group: its 3x3 convs get a width bypass and their filters a group each,
    its 1x1 convs stay in ordinary groups, which the bypass's inputs then follow."""
    torch.manual_seed(0)
    model = randomize_norms_(create_model(name)).double().eval()
    x = _inputs().double()
    wrapped = add_bypass_(model, x, kind="width")
    randomize_norms_(model, seed=1)
    groups = analyze(model, x)
    prunable = {g.id for g in groups.prunable}
    assert {f"{n}.conv" for n in wrapped} <= prunable
    if name == "resnet50":
        assert len(prunable) > len(wrapped)  # and the groups of its 1x1 convs
    cost, deploy = _prune_and_fold_exactly(model, x, random_plan(groups, 0.5, seed=7))
    assert count_macs(deploy.float(), SHAPE).macs == cost.macs
