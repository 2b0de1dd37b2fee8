"""Reconstruction after channel removal (docs/ldrf.md#reconstruction) on tiny float64 networks: the SVD
embedding recomposes exactly, writing back what plain removal left changes no bit, least squares is exact
where the kept channels carry everything the removed ones did, ldrf lowers the embedding error against plain
removal on briefly trained networks, residual streams and grouped convs are left alone with a reason, singular
systems are regularised (never NaN), and the capacity widths of `ldrf` keep every group at its valid capacity
unless the MACs target forces them lower. torch-pruning is real."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.methods import LdrfConfig
from lappdeploy.methods.budgets import MacsBudget
from lappdeploy.methods.common import frozen_copy
from lappdeploy.methods.ldrf.hook import capacity_plan
from lappdeploy.methods.oneshot import uniform_budget_plan
from lappdeploy.methods.reconstruct import (
    Consumer,
    ReconstructionSettings,
    check_calibration,
    embed,
    energy_rank,
    plan_consumers,
    recompose,
    reconstruct_,
    ridge_solve,
    valid_capacity,
)
from lappdeploy.methods.reconstruct.fits import layer_fit, write_
from lappdeploy.models import create_model
from lappdeploy.surgery import ChannelPlan, GroupPlan, analyze, channel_scores, plan_cost, random_plan, remove_channels_
from lappdeploy.testing import quadrant_batches, randomize_norms_

SIZE = 16  # px


def _images(n: int, seed: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(n, channels, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _pruned(model: nn.Module, plan_of) -> tuple[nn.Module, nn.Module, object, ChannelPlan]:
    """(teacher, the model with `plan_of(groups)` removed, the analysis before removal, the plan)."""
    x = _images(2, 99)
    groups = analyze(model, x)
    plan = plan_of(groups)
    teacher = frozen_copy(model)
    remove_channels_(model, plan, x, groups=groups)
    return teacher, model, groups, plan


@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (6, 9, 1, 1), (4, 6)])
def test_keep_all_recomposition_reproduces_the_layer_exactly(shape):
    weight = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    embedding = embed(weight, 1.0)
    assert embedding.rank == min(shape[1], math.prod(shape) // shape[1])
    assert torch.allclose(recompose(embedding.q, embedding.r, weight.shape), weight, rtol=0, atol=1e-12)
    truncated = embed(weight, 0.5)
    assert 1 <= truncated.rank < embedding.rank
    assert torch.allclose(truncated.q.T @ truncated.q, torch.eye(truncated.rank, dtype=torch.float64), atol=1e-12)


def test_energy_rank_counts_the_leading_directions_holding_the_energy():
    singular = torch.tensor([3.0, 2.0, 1.0, 0.0])  # powers 9, 4, 1, 0 of 14
    assert [energy_rank(singular, e) for e in (0.5, 0.9, 0.95, 1.0)] == [1, 2, 3, 3]
    assert energy_rank(torch.zeros(3), 0.9) == 1


def test_a_fit_that_already_holds_returns_the_prior_whatever_the_ridge():
    samples = torch.randn(50, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    prior = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gram, cross = samples.T @ samples, samples.T @ (samples @ prior)
    for ridge in (0.0, 1e-4, 10.0):
        assert torch.allclose(ridge_solve(gram, cross, prior, ridge).weights, prior, atol=1e-10)


def test_a_singular_system_is_regularised_never_nan():
    samples = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    samples = torch.cat([samples, samples[:, :1]], dim=1)  # a duplicated input: the Gram matrix is singular
    target = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    solution = ridge_solve(samples.T @ samples, samples.T @ target, torch.zeros(4, 2, dtype=torch.float64), 0.0)
    assert solution.regularised and 0 < solution.ridge < 1 and bool(torch.isfinite(solution.weights).all())
    empty = ridge_solve(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64),
                        torch.ones(2, 1, dtype=torch.float64), 1e-4)  # fmt: skip
    assert empty.regularised and torch.equal(empty.weights, torch.ones(2, 1, dtype=torch.float64))


class LinearNet(nn.Module):
    """Convolutions and pooling without any nonlinearity; channels 4..7 of the first conv are fixed linear
    combinations of channels 0..3, so the kept channels 0..3 carry everything."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(6, 4)
        self.double()  # the combinations below hold exactly in float64
        with torch.no_grad():
            mix = torch.randn(4, 4, dtype=torch.float64, generator=generator)
            self.conv0.weight[4:] = torch.einsum("ji,iakl->jakl", mix, self.conv0.weight[:4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.conv1(self.conv0(x)))))


@pytest.mark.parametrize("mode", ["ls", "ldrf"])
def test_least_squares_is_exact_on_a_linear_network_when_the_kept_channels_span_the_rest(mode):
    torch.manual_seed(0)
    teacher, model, groups, plan = _pruned(
        LinearNet(), lambda groups: ChannelPlan({"conv0": GroupPlan(8, [0, 1, 2, 3])})
    )
    plain = copy.deepcopy(model)
    settings = ReconstructionSettings(mode=mode, positions=10, ridge=0.0, energy=1.0)
    record = reconstruct_(teacher, model, groups, plan, _images(16, 1), settings)
    assert [layer["name"] for layer in record.fitted] == ["conv1"] and record.fitted[0]["error_refitted"] < 1e-12
    x = _images(8, 2)  # images the fit never saw
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), rtol=0, atol=1e-12)
        assert not torch.allclose(plain(x), teacher(x), atol=1e-3), "plain removal alone is not exact"


def _embedding_and_logits(network: nn.Module, name: str, x: torch.Tensor, basis: torch.Tensor):
    """(the input pixels of layer `name` in the embedding coordinates of its own weight, the logits).

    A version W' of a layer whose teacher is W = Q R (`embed`) sees its input pixels through Q' = M' R^+ (M': W'
    as c_in x c_out k k; `basis` = R^+): the teacher through Q, plain removal through Q[kept], the ldrf refit
    through the fitted projection."""
    seen = []
    layer = network.get_submodule(name)
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        logits = network.eval()(x)
    handle.remove()
    pixels = seen[0].flatten(2).transpose(1, 2).reshape(-1, seen[0].shape[1])
    weight = layer.weight.detach().double()
    projection = weight.transpose(0, 1).reshape(weight.shape[1], -1) @ basis
    return pixels @ projection, logits


def _chain(seed: int = 0, steps: int = 20) -> nn.Module:
    """conv-BN-ReLU, then a strided conv with neither bias nor BatchNorm (so its fit has no output offset and
    the embedding is all it fits), ReLU, pooling, a classifier; trained `steps` SGD steps on the 4-class
    quadrant task (batches of 16 images of SIZE px), so its channels are those of a trained network."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, 4),
    )  # fmt: skip
    model = randomize_norms_(model, seed=seed).double().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for images, labels in quadrant_batches(steps, size=SIZE, seed=seed):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images.double()), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ldrf_lowers_the_embedding_error_against_plain_removal_on_fresh_images(seed):
    plan_of = lambda groups: ChannelPlan({"0": GroupPlan(8, [0, 2, 3, 6])})  # noqa: E731
    teacher, model, groups, plan = _pruned(_chain(seed), plan_of)
    plain = copy.deepcopy(model)
    calibration = _images(32, 10 + seed)
    record = reconstruct_(teacher, model, groups, plan, calibration, ReconstructionSettings(mode="ldrf", seed=seed))
    (layer,) = record.fitted
    assert layer["name"] == "3" and layer["offset_in"] is None and layer["samples"] == 32 * 10
    assert 1 <= layer["rank"] <= 8 and layer["error_refitted"] < layer["error_removed"], layer
    x = _images(64, 20 + seed)  # images the fit never saw
    embedding = embed(teacher[3].weight, 0.9)
    basis = torch.linalg.pinv(embedding.r.reshape(embedding.rank, -1))  # R^+: (c_out k k, rank)
    wanted, wanted_logits = _embedding_and_logits(teacher, "3", x, basis)
    errors = {}
    for name, network in (("plain", plain), ("ldrf", model)):
        embedded, logits = _embedding_and_logits(network, "3", x, basis)
        errors[name] = (float((embedded - wanted).norm() / wanted.norm()), float((logits - wanted_logits).norm()))
    assert errors["ldrf"][0] < 0.95 * errors["plain"][0] and errors["ldrf"][1] < errors["plain"][1], errors


@pytest.mark.parametrize("mode", ["ls", "ldrf", "ldrf-patch"])
def test_writing_a_solution_equal_to_the_prior_leaves_every_tensor_bit_identical(mode):
    """Keep-all through the real write path, in float64: a conv with a bias (its offset goes to the bias) and
    one without, followed by a BatchNorm (its offset goes to the running mean)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5),
    )  # fmt: skip
    model = randomize_norms_(model).double()
    teacher, before = frozen_copy(model), copy.deepcopy(model.state_dict())
    settings = ReconstructionSettings(mode=mode, energy=1.0)
    every = torch.arange
    for index, consumer in enumerate([Consumer("0", every(3), every(6), None), Consumer("2", every(6), every(5), "3")]):
        layer = layer_fit(consumer, index, teacher, model, settings, relu_after=False)
        assert layer.offset_in == ("bias" if consumer.name == "0" else "3")
        write_(layer, layer.prior.clone(), model)
    for key, value in model.state_dict().items():  # float64 and int64 alike: 8-byte words compared bit by bit
        assert torch.equal(value.view(torch.int64), before[key].view(torch.int64)), key


def test_residual_stream_readers_are_left_as_plain_removal_with_the_reason():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=4)).double()
    teacher, model, groups, plan = _pruned(model, lambda groups: random_plan(groups, 0.5, seed=2))
    plain = copy.deepcopy(model)
    record = reconstruct_(teacher, model, groups, plan, _images(32, 1), ReconstructionSettings(mode="ls"))
    fitted = {layer["name"] for layer in record.fitted}
    skipped = {layer["name"]: layer["reason"] for layer in record.skipped}
    assert {"layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"} <= fitted
    for reader in ("layer1.0.conv1", "layer2.0.conv1", "layer2.0.shortcut.0", "layer3.0.conv1"):
        assert "residual stream" in skipped[reader] and "docs/ldrf.md#residual-streams" in skipped[reader]
        assert torch.equal(model.get_submodule(reader).weight, plain.get_submodule(reader).weight)
    assert not torch.equal(model.layer1[0].conv2.weight, plain.layer1[0].conv2.weight)


def _changed_modules(model: nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {key.rsplit(".", 1)[0] for key, value in model.state_dict().items() if not torch.equal(value, before[key])}


@pytest.mark.parametrize("mode", ["ls", "ls+relu", "ldrf", "ldrf-patch", "ldrf-joint"])
def test_the_record_names_every_module_the_reconstruction_wrote(mode):
    """Other DDP ranks load exactly `record.modules` from rank 0: a module written but not named there would stay
    as plain removal on them. ldrf-joint also writes producers, among them stream readers whose own inputs stay
    as plain removal: their record says so."""
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=4)).double()
    teacher, model, groups, plan = _pruned(model, lambda groups: random_plan(groups, 0.5, seed=2))
    before = copy.deepcopy(model.state_dict())
    settings = ReconstructionSettings(mode=mode.removesuffix("+relu"), relu=mode.endswith("+relu"))
    record = reconstruct_(teacher, model, groups, plan, _images(32, 1), settings)
    changed = _changed_modules(model, before)
    assert changed and changed <= set(record.modules), changed - set(record.modules)
    producers = {layer["name"]: layer.get("filters_refitted_for") for layer in record.skipped}
    producers = {name: consumer for name, consumer in producers.items() if consumer}
    if mode == "ldrf-joint":
        assert producers.get("layer2.0.conv1") == "layer2.0.conv2", record.skipped
        assert "layer2.0.conv1" in changed and "layer2.0.bn1" in changed
    else:
        assert not producers and "layer2.0.conv1" not in changed


def test_grouped_convolutions_are_not_refitted():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 4),
    )  # fmt: skip
    groups = analyze(model, torch.randn(2, 3, SIZE, SIZE))
    consumers, skipped = plan_consumers(groups, random_plan(groups, 0.5, seed=0))
    assert any(s["name"] == "3" and "grouped" in s["reason"] for s in skipped), skipped
    assert "3" not in [c.name for c in consumers]


def test_a_singular_layer_is_regularised_and_logged(caplog):
    """Two identical producer channels kept side by side: their samples coincide, so with no ridge the
    system is singular; the fit is regularised, logged, and the weights stay finite."""
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_convnet", num_classes=4)).double()
    with torch.no_grad():
        conv, bn = model.features[0], model.features[1]
        conv.weight[1] = conv.weight[0]
        for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            tensor[1] = tensor[0]
    teacher, model, groups, plan = _pruned(
        model, lambda groups: ChannelPlan({"features.0": GroupPlan(8, [0, 1, 2, 3, 4])})
    )
    with caplog.at_level("WARNING", logger="lappdeploy"):
        record = reconstruct_(
            teacher, model, groups, plan, _images(24, 1), ReconstructionSettings(mode="ldrf", ridge=0)
        )
    assert record.fitted[0]["regularised"] and any("singular" in r.getMessage() for r in caplog.records)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _low_rank_convnet() -> nn.Module:
    """tiny_convnet with 16 classes whose second conv reads its 8 inputs through 2 directions only: the first
    group's valid capacity is 2, the second's (read by a full-rank 16 x 16 classifier) its whole width, 16."""
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_convnet", num_classes=16))
    with torch.no_grad():
        q, r = torch.randn(8, 2), torch.randn(2, 16, 3, 3)
        model.features[3].weight.copy_(torch.einsum("ij,jokl->oikl", q, r))
    return model


def test_capacity_widths_keep_every_group_at_its_valid_capacity_unless_the_target_forces_it(caplog):
    model = _low_rank_convnet()
    groups = analyze(model, torch.randn(2, 3, SIZE, SIZE))
    assert valid_capacity(groups, 1.0) == {"features.0": 2, "features.3": 16}
    scores = channel_scores(groups, "l2").detach()
    dense = plan_cost(groups, ChannelPlan()).macs
    config = LdrfConfig(target_macs=0.6, round_to=1, ldrf_widths="capacity", ldrf_energy=1.0)
    budget = MacsBudget(groups, 0.6, round_to=1, flag="--target-macs 0.6")
    plan = capacity_plan(groups, config, budget, 0.6 * dense, scores, valid_capacity(groups, 1.0))
    assert "features.3" not in plan.groups, "kept whole: its capacity is its width"
    assert len(plan.groups["features.0"].keep) >= 2 and plan_cost(groups, plan).macs <= 0.6 * dense
    assert len(uniform_budget_plan(groups, config, budget, 0.6 * dense, scores).groups["features.3"].keep) < 16
    with caplog.at_level("WARNING", logger="lappdeploy"):
        forced = capacity_plan(groups, config.replace(target_macs=0.2),
                               MacsBudget(groups, 0.2, round_to=1, flag="--target-macs 0.2"), 0.2 * dense, scores,
                               {"features.0": 2, "features.3": 16})  # fmt: skip
    assert plan_cost(groups, forced).macs <= 0.2 * dense and len(forced.groups["features.3"].keep) < 16
    assert any("valid capacities" in r.getMessage() for r in caplog.records)


class BorderNet(nn.Module):
    """A linear network on 7 x 7 images (24 of 49 positions on the zero-padded border), whose first conv has a
    bias and whose kept channels 0..3 carry everything the removed 4..7 did: channels 5..7 are combinations of
    0..2, and channel 4 is, like kept channel 3, a constant (zero filter, non-zero bias), so channel 4 =
    (b4 / b3) x channel 3 at every pixel, padding included. An intercept fitted in the embedding, mapped through
    every kernel tap, is wrong there at the borders (the removed constant is missing from the padded taps)."""

    def __init__(self, consumer_bias: bool) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(6)
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=consumer_bias)
        self.norm = nn.Identity() if consumer_bias else nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(6, 4)
        self.double()
        with torch.no_grad():
            mix = torch.randn(3, 3, dtype=torch.float64, generator=generator)
            self.conv0.weight[5:] = torch.einsum("ji,iakl->jakl", mix, self.conv0.weight[:3])
            self.conv0.bias[5:] = mix @ self.conv0.bias[:3]
            self.conv0.weight[3:5] = 0
            self.conv0.bias[3:5] = torch.tensor([0.7, -1.3], dtype=torch.float64)
        if not consumer_bias:
            randomize_norms_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.norm(self.conv1(self.conv0(x))))))


def _border_images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("consumer_bias", [True, False], ids=["offset-in-bias", "offset-in-batchnorm"])
@pytest.mark.parametrize("mode", ["ls", "ldrf", "ldrf-patch"])
def test_refits_are_exact_at_zero_padded_borders_with_an_output_offset(mode, consumer_bias):
    torch.manual_seed(0)
    model = BorderNet(consumer_bias).eval()
    x = _border_images(2, 99)
    groups = analyze(model, x)
    plan = ChannelPlan({"conv0": GroupPlan(8, [0, 1, 2, 3])})
    teacher = frozen_copy(model)
    remove_channels_(model, plan, x, groups=groups)
    settings = ReconstructionSettings(mode=mode, positions=49, ridge=0.0, energy=1.0)
    record = reconstruct_(teacher, model, groups, plan, _border_images(24, 1), settings)
    assert [layer["name"] for layer in record.fitted] == ["conv1"]
    assert record.fitted[0]["offset_in"] == (None if consumer_bias else "norm")
    fresh = _border_images(8, 2)
    with torch.no_grad():
        got, wanted = model.norm(model.conv1(model.conv0(fresh))), teacher.norm(teacher.conv1(teacher.conv0(fresh)))
    border = torch.ones(7, 7, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    # 1e-6: the patch systems are ill-conditioned here (a constant channel's taps equal the intercept inside); an
    # offset mapped through every tap is off by the removed constant's share of the kernel, O(0.1)
    assert torch.allclose(got[..., border], wanted[..., border], rtol=0, atol=1e-6), "border positions"
    assert torch.allclose(got, wanted, rtol=0, atol=1e-6)


def test_the_patch_fit_at_full_energy_is_least_squares():
    """ldrf-patch with every output direction kept (P square and orthogonal) solves the same problem as ls."""
    weights = {}
    for mode in ("ls", "ldrf-patch"):
        torch.manual_seed(0)
        plan = ChannelPlan({"conv0": GroupPlan(8, [0, 2, 5, 6])})  # not spanning the removed channels
        teacher, model, groups, plan = _pruned(LinearNet(), lambda groups, plan=plan: plan)
        settings = ReconstructionSettings(mode=mode, positions=20, ridge=0.0, energy=1.0)
        record = reconstruct_(teacher, model, groups, plan, _images(24, 1), settings)
        assert not record.fitted[0]["regularised"]
        weights[mode] = model.conv1.weight.detach().clone()
    assert torch.allclose(weights["ls"], weights["ldrf-patch"], rtol=0, atol=1e-10)


def _two_layer_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 4),
    )  # fmt: skip
    return randomize_norms_(model, seed=seed).double().eval()


@pytest.mark.parametrize("alone, joint", [("ldrf", "ldrf-joint"), ("ls", "ls-joint")])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_joint_refit_lowers_the_two_layer_error_below_the_consumer_only_refit(seed, alone, joint):
    """Half the first conv's channels removed: refitting its kept filters with the consumer (its projection, or its
    k x k kernel for ls) reaches a lower error of what is fitted on the calibration samples than the consumer's fit
    alone, and a lower error of the consumer's output on images neither fit saw."""
    errors = {}
    for mode in (alone, joint):
        teacher, model, groups, plan = _pruned(
            _two_layer_net(seed), lambda g: ChannelPlan({"0": GroupPlan(8, [0, 2, 5, 7])})
        )
        settings = ReconstructionSettings(mode=mode, energy=1.0, seed=seed)
        record = reconstruct_(teacher, model, groups, plan, _images(32, 10 + seed), settings, _images(32, 50 + seed))
        (layer,) = record.fitted
        errors[mode] = layer
    fitted = errors[joint]
    assert fitted["mode"] == joint and fitted["producer"] == "0" and fitted["fit_units"] == errors[alone]["fit_units"]
    # round 1 is the consumer's fit alone, on the same samples (the border patches' zero padding included)
    assert fitted["joint_error"][0] == pytest.approx(errors[alone]["error_refitted"], rel=1e-6)
    assert fitted["error_refitted"] < errors[alone]["error_refitted"], fitted["joint_error"]
    assert fitted["output_error"] < errors[alone]["output_error"], (fitted, errors[alone])


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, size",
    [(3, 1, 1, 1, 7), (3, 2, 1, 1, 7), (5, 1, 2, 1, 6), (3, 1, 2, 2, 7), (1, 1, 0, 1, 5), (3, 1, 0, 1, 5)],
)
def test_each_tap_of_a_patch_names_the_input_pixel_it_holds(kernel, stride, padding, dilation, size):
    """ls-joint pairs every kernel tap of a consumer's patch with the producer's pixel there: a tap inside the map
    holds exactly the input pixel it names, and a tap marked outside is zero padding."""
    from lappdeploy.methods.reconstruct.calibration import conv_patches_at, sampled_outputs
    from lappdeploy.methods.reconstruct.joint import _by_tap, _tap_pixels

    conv = nn.Conv2d(4, 2, kernel, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(3, 4, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(kernel + size))
    where = sampled_outputs(conv, x, 1000, seed=1)  # every output position of each image
    taps = _by_tap(conv_patches_at(conv, x, where), 4)  # (images x positions x taps, channels)
    pixels, inside = _tap_pixels(conv, x, where)
    images = torch.arange(3)[:, None].expand_as(pixels)
    named = x.flatten(2).transpose(1, 2)[images.flatten(), pixels.flatten()]  # (images x positions x taps, 4)
    assert torch.equal(taps[inside.flatten()], named[inside.flatten()])
    assert not taps[~inside.flatten()].any() and (padding == 0) == bool(inside.all())


def test_the_wanted_patches_at_a_border_hold_the_padded_taps_at_zero():
    """ls-joint's T-step solves for the taps inside the map only: at border positions the output asked for is
    reproduced with the padded taps at 0 (as the network computes), better than by a solve over the whole patch
    whose padded taps are then dropped."""
    from lappdeploy.methods.reconstruct.calibration import conv_patches_at, sampled_outputs
    from lappdeploy.methods.reconstruct.joint import _by_tap, _tap_pixels, _wanted_inputs, _wanted_patches, _with_taps

    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(2, 24, 3, padding=1)
    x = torch.rand(4, 2, 5, 5, dtype=torch.float64, generator=generator)
    where = sampled_outputs(conv, x, 25, seed=0)  # every position of a 5x5 map: 16 of its 25 at the border
    p, inside = conv_patches_at(conv, x, where), _tap_pixels(conv, x, where)[1].flatten()
    kernel = torch.randn(18, 24, dtype=torch.float64, generator=generator)  # 24 outputs from 2 channels x 9 taps
    wanted = p @ kernel  # reachable with every padded tap at 0: by p itself
    start = torch.zeros_like(p)
    border = ~inside.reshape(len(p), 9).all(dim=1)

    def error(taps: torch.Tensor) -> float:
        return float(((_with_taps(p, taps, inside, 2) @ kernel - wanted)[border] ** 2).sum())

    restricted = _wanted_patches(wanted, kernel, start, inside, 2)
    whole = _by_tap(_wanted_inputs(wanted, kernel, start), 2)[inside]
    assert error(restricted) < 0.5 * error(whole), (error(restricted), error(whole))


@pytest.mark.parametrize(
    "between, reason",
    [
        (nn.MaxPool2d(2), "differ in size"),  # 16x16 -> 8x8: both sample 10 positions, at different pixels
        (nn.MaxPool2d(3, stride=1, padding=1), "not the producer's BatchNorm and ReLU output"),  # same size
    ],
    ids=["pool-halving", "pool-same-size"],
)
@pytest.mark.parametrize("alone, joint", [("ldrf", "ldrf-joint"), ("ls", "ls-joint")])
def test_the_joint_refit_falls_back_to_the_consumer_alone_where_a_pooling_lies_between(between, reason, alone, joint):
    """The joint fits model the consumer's input as relu(BatchNorm(producer)) at the same pixels; a pooling
    between the two breaks that, so the layer gets its fit alone and the producer is left as removed."""
    results = {}
    for mode in (alone, joint):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), copy.deepcopy(between),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 4),
        )  # fmt: skip
        model = randomize_norms_(model, seed=0).double().eval()
        teacher, model, groups, plan = _pruned(model, lambda g: ChannelPlan({"0": GroupPlan(8, [0, 2, 5, 7])}))
        producer = model[0].weight.detach().clone()
        record = reconstruct_(teacher, model, groups, plan, _images(32, 10), ReconstructionSettings(mode=mode))
        (layer,) = record.fitted
        results[mode] = (layer, model[4].weight.detach().clone())
        assert torch.equal(model[0].weight, producer), "the producer is left as plain removal"
    layer, consumer = results[joint]
    assert layer["mode"] == alone and reason in layer["joint"], layer
    assert torch.equal(consumer, results[alone][1]), f"the same fit as --reconstruct {alone}"


class SharedStemNet(nn.Module):
    """The stem's channels are read by two convs (a residual stream): `produce` cannot be refitted as a reader,
    but ldrf-joint refits its kept filters as the producer of what `consume` reads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.produce = nn.Sequential(nn.Conv2d(24, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.consume = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.side = nn.Conv2d(24, 4, 1, bias=False)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        return self.head(self.consume(self.produce(stem)) + self.side(stem))


def test_calibration_is_checked_against_the_joint_producers_unknowns_too():
    """produce.0: 24 inputs x 9 taps + 1 offset = 217 unknowns, 10 positions per image -> 22 images; the readers
    alone need at most 5 (head.2: 4 features + 1 offset, one row per image; consume.0: 4 x 9 + 1 = 37 -> 4)."""
    model = SharedStemNet().eval()
    groups = analyze(model, torch.randn(2, 3, SIZE, SIZE))
    check_calibration(groups, ReconstructionSettings(mode="ldrf-patch", positions=10), images=5)
    with pytest.raises(ConfigError, match=r"layer head\.2 .* use --calib-images 5 or more"):
        check_calibration(groups, ReconstructionSettings(mode="ldrf-patch", positions=10), images=4)
    check_calibration(groups, ReconstructionSettings(mode="ldrf-joint", positions=10), images=22)
    with pytest.raises(ConfigError, match=r"layer produce\.0 .* 217 unknowns .* use --calib-images 22 or more"):
        check_calibration(groups, ReconstructionSettings(mode="ldrf-joint", positions=10), images=21)


@pytest.mark.parametrize("mode", ["ls", "ldrf-patch"])
def test_the_fit_after_the_relu_lowers_the_error_after_the_relu(mode):
    """--reconstruct-relu fits what the next layer reads (after the BatchNorm and ReLU), so there its error on the
    calibration images is below the linear fit's, which minimises the error before the ReLU instead."""
    errors = {}
    for relu in (False, True):
        teacher, model, groups, plan = _pruned(_two_layer_net(0), lambda g: ChannelPlan({"0": GroupPlan(8, [0, 5])}))
        images = _images(32, 10)
        settings = ReconstructionSettings(mode=mode, relu=relu, energy=1.0, positions=64)
        (layer,) = reconstruct_(teacher, model, groups, plan, images, settings).fitted
        assert layer["mode"] == mode + ("+relu" if relu else "")
        with torch.no_grad():
            got, wanted = model[:6](images), teacher[:6](images)
        errors[relu] = float(((got - wanted) ** 2).sum() / (wanted**2).sum())
    assert errors[True] < errors[False], errors


@pytest.mark.parametrize("mode, fitted_as", [("ldrf-joint", "ldrf-joint"), ("ls-joint", "ls")])
def test_the_joint_refit_pairs_a_linear_reading_a_flattened_one_pixel_map(mode, fitted_as):
    """A classifier reading a 1x1 map through a flatten reads the producer's pixel itself: ldrf-joint applies;
    ls-joint pairs k x k patches, so it fits a Linear by ls alone and says why."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(1), nn.Linear(8, 4)
    )
    model = randomize_norms_(model, seed=0).double().eval()
    images = torch.randn(64, 3, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = images[:2]
    groups = analyze(model, x)
    plan = ChannelPlan({"0": GroupPlan(8, [0, 2, 5, 7])})
    teacher = frozen_copy(model)
    remove_channels_(model, plan, x, groups=groups)
    record = reconstruct_(teacher, model, groups, plan, images, ReconstructionSettings(mode=mode))
    (layer,) = record.fitted
    assert layer["mode"] == fitted_as, layer
    assert layer.get("producer") == "0" if mode == "ldrf-joint" else "not a convolution" in layer["joint"], layer
