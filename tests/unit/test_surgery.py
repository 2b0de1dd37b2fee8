"""Surgery on small models: groups, plans, removal (with optimizer state), bypass, folding, rounding."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from lappdeploy.models import count_macs, create_model
from lappdeploy.models.cifar import CifarResNet
from lappdeploy.surgery import (
    ChannelMasker,
    ChannelPlan,
    GroupPlan,
    RepConvBN,
    SurgeryError,
    add_bypass_,
    analyze,
    channel_scores,
    fold_bn_,
    fold_bypass_,
    plan_cost,
    plan_from_scores,
    random_plan,
    remove_channels_,
    round_plan,
    surgery_steps,
    uniform_plan,
)
from lappdeploy.testing import TinyResNet, randomize_norms_, torch_pruning_macs


class TinyGroupedNet(nn.Module):
    """A ResNeXt-like bottleneck: 1x1 -> 3x3 conv with 4 groups -> 1x1, so channels come in blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(32))
        self.expand = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.expand(torch.relu(self.grouped(self.reduce(self.stem(x))))))


def _inputs(batch: int = 4, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _folded(model: nn.Module, x: torch.Tensor) -> nn.Module:
    deploy = copy.deepcopy(model)
    fold_bypass_(deploy)
    return fold_bn_(deploy, x)


# --- groups -------------------------------------------------------------------------------------------


def test_groups_of_a_resnet_follow_its_residual_streams():
    model = TinyResNet()
    groups = analyze(model, model.example_inputs())
    ids = {g.id: g for g in groups.groups}
    # stem conv + every conv adding into the 8-channel stream share one group; block-inner convs have their own
    assert ids["conv1"].channels == 8 and "layer1.0.conv2" in ids["conv1"].modules
    assert ids["layer1.0.conv1"].prunable and ids["layer1.0.conv1"].channels == 8
    # the classifier's outputs never
    assert not ids["fc"].prunable and "output" in ids["fc"].excluded
    # the image's input channels are no module's output, so no group holds them
    assert groups.layers["conv1"].in_map is None
    assert [g.offset for g in groups.prunable] == sorted(g.offset for g in groups.prunable)
    assert groups.global_channels == sum(g.channels for g in groups.prunable)


def test_ignore_patterns_exclude_whole_groups():
    model = TinyResNet()
    groups = analyze(model, model.example_inputs(), ignore=["layer3.*"])
    excluded = {g.id for g in groups.groups if not g.prunable and "ignore" in g.excluded}
    assert "layer3.0.conv1" in excluded
    # the stream of layer3 also starts at layer3.0's projection/conv2: excluded with it
    assert all(not g.prunable for g in groups.groups if any(m.startswith("layer3.") for m in g.modules))


def test_grouped_convolution_channels_come_in_blocks():
    model = TinyGroupedNet()
    groups = analyze(model, _inputs())
    reduce = groups.group("reduce.0")
    assert reduce.segments == 4 and reduce.segment_size == 8
    plan = random_plan(groups, 0.5)
    kept = plan.groups["reduce.0"].keep
    assert len(kept) == 16 and {c % 8 for c in kept} == {c % 8 for c in kept[:4]}
    bad = ChannelPlan({"reduce.0": GroupPlan(32, list(range(16)))})  # keeps whole blocks, not positions
    with pytest.raises(SurgeryError, match="same positions"):
        bad.validate(groups)


# --- plans --------------------------------------------------------------------------------------------


def test_plan_round_trips_through_json(tmp_path):
    model = TinyResNet()
    groups = analyze(model, model.example_inputs())
    plan = random_plan(groups, 0.4, seed=3)
    plan.groups["conv1"].threshold = 0.25
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = ChannelPlan.load(path)
    assert loaded == plan
    assert json.loads(path.read_text())["groups"]["conv1"]["threshold"] == 0.25
    assert torch.equal(loaded.keep_mask(groups), plan.keep_mask(groups))
    rebuilt = ChannelPlan.from_keep_mask(groups, plan.keep_mask(groups))
    assert {gid: gp.keep for gid, gp in rebuilt.groups.items()} == {gid: gp.keep for gid, gp in plan.groups.items()}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"nope": GroupPlan(8, [0])}, "no channel group"),
        ({"fc": GroupPlan(10, [0, 1])}, "cannot be pruned"),
        ({"conv1": GroupPlan(9, [0])}, "has 9 channels"),
        ({"conv1": GroupPlan(8, [])}, "keeps no channel"),
        ({"conv1": GroupPlan(8, [0, 8])}, "invalid channel indices"),
    ],
)
def test_invalid_plans_are_refused_before_any_change(entry, message):
    model = TinyResNet()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SurgeryError, match=message):
        remove_channels_(model, ChannelPlan(entry), model.example_inputs())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert surgery_steps(model) == []


def test_malformed_plan_file_gives_a_clear_error():
    with pytest.raises(SurgeryError, match="needs 'channels' and 'keep'"):
        ChannelPlan.from_dict({"groups": {"conv1": {"keep": [0]}}})


def test_channel_scores_are_weight_norms_and_bn_gammas():
    model = create_model("tiny_convnet")
    randomize_norms_(model)
    groups = analyze(model, model.example_inputs())
    g = groups.group("features.0")
    l2 = channel_scores(groups, "l2")[g.offset : g.offset + g.channels]
    assert torch.allclose(l2, model.features[0].weight.flatten(1).norm(dim=1))
    bn = channel_scores(groups, "bn")[g.offset : g.offset + g.channels]
    assert torch.allclose(bn, model.features[1].weight.abs())
    assert channel_scores(groups).requires_grad  # differentiable for LAPP


def test_plan_from_scores_keeps_the_best_scored_channels():
    model = create_model("tiny_convnet")
    groups = analyze(model, model.example_inputs())
    scores = torch.arange(groups.global_channels, dtype=torch.float).flip(0)
    plan = plan_from_scores(groups, scores, {"features.0": 3})
    assert plan.groups["features.0"].keep == [0, 1, 2]


def test_uniform_plan_meets_its_macs_ratio():
    model = create_model("resnet20")
    groups = analyze(model, torch.randn(2, 3, 32, 32))
    dense = plan_cost(groups, ChannelPlan()).macs
    for ratio in (0.3, 0.5, 0.8):
        plan = uniform_plan(groups, ratio)
        macs = plan_cost(groups, plan).macs
        assert macs <= ratio * dense
        assert macs > 0.9 * ratio * dense  # the largest uniform fraction, not just any
        kept = [len(gp.keep) / gp.channels for gp in plan.groups.values()]
        assert max(kept) - min(kept) < 0.1  # uniform
    assert uniform_plan(groups, 1.0).is_empty


@pytest.mark.parametrize("k", [8, 16])
def test_round_plan_makes_multiples_of_k_within_budget(k):
    model = CifarResNet(20, width=32)  # 32/64/128 channels
    groups = analyze(model, torch.randn(2, 3, 32, 32))
    scores = channel_scores(groups)
    dense = plan_cost(groups, ChannelPlan()).macs
    for seed in range(3):
        plan = random_plan(groups, 0.45, seed=seed)
        budget = 1.05 * plan_cost(groups, plan).macs
        rounded = round_plan(plan, groups, k, scores=scores, budget=budget)
        counts = [len(rounded.groups[g.id].keep) if g.id in rounded.groups else g.channels for g in groups.prunable]
        assert all(c % k == 0 and c >= k for c in counts)
        assert plan_cost(groups, rounded).macs <= budget
        assert plan_cost(groups, rounded).macs < dense
        # rounding up re-uses the plan's channels first: every kept channel of the rounded-down
        # groups was kept by the plan
        for gid, gp in rounded.groups.items():
            original = plan.groups[gid].keep
            assert set(gp.keep) <= set(original) or set(original) <= set(gp.keep)


def test_round_plan_never_goes_below_k_and_rounds_to_nearest_without_budget():
    model = CifarResNet(20, width=32)
    groups = analyze(model, torch.randn(2, 3, 32, 32))
    tiny = ChannelPlan({g.id: GroupPlan(g.channels, [0, 1]) for g in groups.prunable})
    rounded = round_plan(tiny, groups, 8)
    assert all(len(gp.keep) == 8 for gp in rounded.groups.values())
    eleven = ChannelPlan({"conv1": GroupPlan(32, list(range(13)))})
    assert len(round_plan(eleven, groups, 8).groups["conv1"].keep) == 16  # 13 -> nearest 16
    with pytest.raises(SurgeryError, match="round-to"):
        round_plan(eleven, groups, 0)


def test_round_plan_respects_grouped_convolutions():
    model = TinyGroupedNet()
    groups = analyze(model, _inputs())
    rounded = round_plan(random_plan(groups, 0.3), groups, 8)
    kept = rounded.groups["reduce.0"].keep if "reduce.0" in rounded.groups else list(range(32))
    assert len(kept) % 8 == 0
    rounded.validate(groups)


# --- removal ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_convnet", "tiny_resnet", "resnet20", "mobilenet_v2"])
def test_removal_equals_masking_and_analytic_cost_equals_measured(name):
    model = randomize_norms_(create_model(name)).eval()
    x = _inputs(size=32)
    groups = analyze(model, x)
    plan = random_plan(groups, 0.5, seed=7)
    with ChannelMasker(groups) as masker, torch.no_grad():
        masker.set(plan)
        masked = model(x)
        masker.clear()
        assert _relative_error(model(x), masked) > 1e-3  # the mask does drop something
    predicted = plan_cost(groups, plan)
    pruned = remove_channels_(copy.deepcopy(model), plan, x)
    with torch.no_grad():
        assert _relative_error(pruned(x), masked) < 1e-5
    deploy = _folded(pruned, x)
    with torch.no_grad():
        assert _relative_error(deploy(x), masked) < 1e-5
    measured = count_macs(deploy, x.shape[1:])
    assert predicted.macs == measured.macs == torch_pruning_macs(deploy, x.shape[1:])
    assert predicted.params == measured.params
    assert predicted.macs < 0.4 * plan_cost(groups, ChannelPlan()).macs


def test_soft_mask_cost_is_differentiable_and_exact_at_zero_one():
    from lappdeploy.surgery import deploy_cost

    model = create_model("resnet20")
    groups = analyze(model, torch.randn(2, 3, 32, 32))
    mask = torch.full((groups.global_channels,), 0.5, dtype=torch.float64, requires_grad=True)
    macs, _ = deploy_cost(groups, mask)
    macs.backward()
    assert (mask.grad > 0).all()  # every prunable channel costs MACs
    ones = torch.ones(groups.global_channels, dtype=torch.float64)
    assert deploy_cost(groups, ones)[0].item() == plan_cost(groups, ChannelPlan()).macs


def _train(model: nn.Module, optimizer, steps: int, *, seed: int, grad_mask=None) -> None:
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if grad_mask is not None:
            for name, p in model.named_parameters():
                p.grad.mul_(grad_mask[name])
        optimizer.step()


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_removal_mid_training_carries_optimizer_state(optimizer_name):
    """Prune after 5 steps, train 5 more == the same run on a dense model whose dropped weights are
    frozen at zero from the pruning point on."""
    torch.manual_seed(0)
    model = TinyResNet()
    x = model.example_inputs()

    def make_optimizer(m: nn.Module):
        if optimizer_name == "sgd":
            return torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return torch.optim.Adam(m.parameters(), lr=1e-3)

    optimizer = make_optimizer(model)
    _train(model, optimizer, 5, seed=1)
    groups = analyze(model, x)
    plan = random_plan(groups, 0.5, seed=2)

    reference = copy.deepcopy(model)
    reference_optimizer = make_optimizer(reference)
    # deep copy: load_state_dict shares the scalar "step" tensors, which Adam increments in place
    reference_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    kept = _kept_masks(reference, plan, x)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.mul_(kept[name])
        for state in reference_optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    state[key] = value * kept[_name_of(reference, reference_optimizer, value)]

    remove_channels_(model, plan, x, optimizer=optimizer)
    assert all(p in optimizer.state for p in model.parameters())  # state re-keyed to the new parameters
    _train(model, optimizer, 5, seed=3)
    _train(reference, reference_optimizer, 5, seed=3, grad_mask=kept)

    model.eval(), reference.eval()
    with torch.no_grad():
        assert _relative_error(model(x), reference(x)) < 1e-5


def _kept_masks(model: nn.Module, plan: ChannelPlan, x: torch.Tensor) -> dict[str, torch.Tensor]:
    from lappdeploy.surgery import kept_elements

    masks = {}
    for name, index in kept_elements(model, plan, x).items():
        p = dict(model.named_parameters())[name]
        mask = torch.zeros(p.numel())
        mask[index] = 1
        masks[name] = mask.view_as(p)
    return masks


def _name_of(model: nn.Module, optimizer, value: torch.Tensor) -> str:
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        if any(v is value for v in state.values()):
            return name
    raise AssertionError("state tensor without a parameter")


def test_removal_keeps_frozen_parameters_frozen_and_records_the_plan():
    model = TinyResNet()
    model.conv1.weight.requires_grad_(False)
    groups = analyze(model, model.example_inputs())
    plan = random_plan(groups, 0.5)
    remove_channels_(model, plan, model.example_inputs(), groups=groups)
    assert not model.conv1.weight.requires_grad
    assert model.conv1.out_channels == 4
    (step,) = surgery_steps(model)
    assert step["op"] == "remove_channels" and ChannelPlan.from_dict(step["plan"]) == plan


# --- bypass and folding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"), [("resnet20", 32), ("resnet18", 16), ("vgg16_bn_cifar", 16), ("mobilenet_v2", 16)]
)
def test_bypass_trains_then_folds_exactly_at_dense_deploy_cost(name, size):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(4, 3, size, size)
    dense_cost = plan_cost(analyze(model, x), ChannelPlan())
    wrapped = add_bypass_(model, x)
    assert wrapped and all(isinstance(model.get_submodule(n), RepConvBN) for n in wrapped)
    groups = analyze(model, x)
    assert plan_cost(groups, ChannelPlan()) == dense_cost  # the bypass costs no deploy MACs
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(20):
        generator = torch.Generator().manual_seed(step)
        inputs = torch.randn(8, 3, size, size, generator=generator)
        loss = nn.functional.cross_entropy(model(inputs), torch.randint(0, 10, (8,), generator=generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.get_submodule(wrapped[0]).bypass_conv.weight.grad.abs().sum() > 0  # the bypass trained
    # float64: the fold is exact algebra; in float32 rounding differences grow through 50 layers
    model.eval().double()
    x = x.double()
    with torch.no_grad():
        logits = model(x)
    fold_bypass_(model)
    assert not any(isinstance(m, RepConvBN) for m in model.modules())
    fold_bn_(model, x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert _relative_error(model(x), logits) < 1e-5
    model.float()
    assert count_macs(model, x.shape[1:]).macs == dense_cost.macs
    assert sum(p.numel() for p in model.parameters()) == dense_cost.params


def test_bypass_model_prunes_with_the_dense_plan():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("resnet20")).eval()
    x = torch.randn(2, 3, 32, 32)
    dense_groups = analyze(model, x)
    add_bypass_(model, x)
    groups = analyze(model, x)
    assert [g.id for g in groups.prunable] == [g.id for g in dense_groups.prunable]
    plan = random_plan(dense_groups, 0.5, seed=4)
    with ChannelMasker(groups) as masker, torch.no_grad():
        masker.set(plan)
        masked = model(x)
    remove_channels_(model, plan, x)
    with torch.no_grad():
        assert _relative_error(model(x), masked) < 1e-5
    deploy = _folded(model, x)
    with torch.no_grad():
        assert _relative_error(deploy(x), masked) < 1e-5
    assert count_macs(deploy, x.shape[1:]).macs == plan_cost(groups, plan).macs
    assert [s["op"] for s in surgery_steps(deploy)] == ["add_bypass", "remove_channels", "fold_bypass", "fold_bn"]


def test_bypass_skips_depthwise_pointwise_and_unprunable_convs():
    model = create_model("mobilenet_v2")
    x = torch.randn(2, 3, 32, 32)
    wrapped = add_bypass_(model, x)
    assert wrapped == ["features.0.0"]  # the only 3x3 conv with groups 1; the rest are 1x1 or depthwise


def test_fold_bn_refuses_a_model_with_unfolded_bypass():
    model = create_model("resnet20")
    x = torch.randn(2, 3, 32, 32)
    add_bypass_(model, x)
    with pytest.raises(SurgeryError, match="fold the bypass blocks first"):
        fold_bn_(model, x)


def test_fold_bn_matches_eval_mode_exactly():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("resnet20")).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    fold_bn_(model, x)
    with torch.no_grad():
        assert _relative_error(model(x), before) < 1e-5
    assert model.conv1.bias is not None and isinstance(model.bn1, nn.Identity)
    assert math.isclose(count_macs(model, (3, 32, 32)).macs, plan_cost(analyze(model, x), ChannelPlan()).macs)


def test_pruned_model_with_bypass_saves_and_loads_portably(tmp_path):
    from lappdeploy.models import model_card
    from lappdeploy.surgery import load_model, save_model

    torch.manual_seed(0)
    model = randomize_norms_(create_model("resnet20")).eval()
    x = torch.randn(2, 3, 32, 32)
    add_bypass_(model, x)
    remove_channels_(model, random_plan(analyze(model, x), 0.5), x)
    path = tmp_path / "model.pt"
    save_model(model, path, model_card(model, input_shape=(3, 32, 32)))
    payload = torch.load(path, weights_only=True)  # no pickled classes
    assert [s["op"] for s in payload["surgery"]] == ["add_bypass", "remove_channels"]
    loaded = load_model(path).model
    assert any(isinstance(m, RepConvBN) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the loaded model goes on to deploy like the original
    deploy = _folded(loaded, x)
    with torch.no_grad():
        assert _relative_error(deploy(x), model(x)) < 1e-5
