"""LAPP's invariants that a weaker implementation would break: the MACs track the annealed budget, the
learned allocation departs from a uniform one where the data says so, the MACs penalty never touches a
weight, a masked channel can come back, a group held at its minimum width stops pushing its threshold,
the channels removed at the end of the phase are the ones training already saw masked, and BatchNorm
statistics are re-estimated after a removal."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F

from lappdeploy.config import TrainConfig
from lappdeploy.hooks import Hook
from lappdeploy.methods import LappConfig
from lappdeploy.methods.common import recalibrate_bn_
from lappdeploy.methods.lapp import ThresholdMask, prepare_
from lappdeploy.models import create_model
from lappdeploy.surgery import ChannelPlan, analyze, channel_scores, plan_cost, uniform_plan
from lappdeploy.testing import quadrant_batches, randomize_norms_
from lappdeploy.train import Trainer


class Records(Hook):
    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_log(self, loop, record) -> None:
        self.records.append(record)


def _train(model, controller, batches, epochs: int = 1):
    records = Records()
    config = TrainConfig(epochs=epochs, lr=0.05, device="cpu", seed=0)
    Trainer(model, batches, None, config=config, hooks=[controller, records]).fit()
    return records.records


@pytest.fixture(scope="module")
def resnet20_phase():
    """resnet20 (16/32/64 channels) on 8 px inputs, a 40-step pruning phase to half its MACs, --project."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    batches = quadrant_batches(40, 8)
    config = LappConfig(
        target_macs=0.5, prune_epochs=1, round_to=1, log_every=1, score="l2", threshold_lr=0.02, project=True
    )
    controller = prepare_(model, batches[0][0][:2], config)
    return controller, _train(model, controller, batches)


def test_masked_macs_track_the_budget_after_the_first_tenth_of_the_phase(resnet20_phase):
    _, records = resnet20_phase
    steps = [r for r in records if r["type"] == "lapp" and r["step"] > 0.1 * 40]
    assert len(steps) >= 30
    errors = [abs(r["macs"] - r["budget"]) / r["budget"] for r in steps]
    assert max(errors) <= 0.05, max(errors)


def test_the_learned_allocation_departs_from_a_uniform_plan_at_equal_macs():
    """One group's channels reach nothing (their consumer's weights are zero and frozen), so its scores say
    nothing about the task; LAPP's widths differ from the uniform plan of the same MACs by more than one
    rounding unit (1 channel here) in some group."""
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=4))
    block = model.layer2[0]
    with torch.no_grad():
        block.conv2.weight.zero_()
    block.conv2.weight.requires_grad_(False)
    batches = quadrant_batches(48, 16)
    dense = copy.deepcopy(model)
    config = LappConfig(target_macs=0.5, prune_epochs=2, round_to=1, score="l2", threshold_lr=0.05)
    controller = prepare_(model, batches[0][0][:2], config)
    _train(model, controller, batches, epochs=2)
    plan, groups = controller.plan, controller.groups
    ratio = plan_cost(groups, plan).macs / controller.dense.macs
    uniform = uniform_plan(analyze(dense, batches[0][0][:2]), ratio)  # counts only: any scores do

    def kept(p: ChannelPlan, g) -> int:
        return len(p.groups[g.id].keep) if g.id in p.groups else g.channels

    differences = [abs(kept(plan, g) - kept(uniform, g)) for g in groups.prunable]
    assert max(differences) > 1, differences


def test_the_macs_penalty_never_changes_a_weight_gradient():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=4))
    x, y = quadrant_batches(1, 16)[0]
    controller = prepare_(model, x[:2], LappConfig(target_macs=0.4, penalty=100.0, round_to=1, score="bn"))
    loop = types.SimpleNamespace(module=model, optimizer=None, steps_per_epoch=10, state=types.SimpleNamespace(step=3))
    controller.on_train_start(loop)
    F.cross_entropy(model.train()(x), y).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    controller.after_backward(loop)
    assert controller._last["penalty"] > 0, "the penalty acted on the thresholds"
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p.grad, before[name]), name


def test_a_masked_channel_can_come_back_before_the_freeze():
    """A masked channel's output is 0 and the ReLU after it passes no gradient, so its score does not
    move; it comes back when the thresholds come down: here the budget is still dense, and holding the
    MACs at it lowers the threshold that masked the channel."""
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_convnet", num_classes=4))
    x = quadrant_batches(1, 16)[0][0]
    controller = prepare_(model, x[:2], LappConfig(target_macs=0.5, round_to=1, score="bn", project=True))
    g = controller.groups.group("features.0")
    loop = types.SimpleNamespace(module=model, optimizer=None, steps_per_epoch=10, state=types.SimpleNamespace(step=0))
    controller.on_train_start(loop)
    with torch.no_grad():
        controller.thresholds[controller.mask.ids.index(g.id)] = 2.0  # every channel of the group masked
    assert controller.current_mask()[g.offset : g.offset + g.channels].sum() == 1, "only its minimum is left"
    model.train()(x)  # a training forward: the MACs are held at the (dense) budget of step 0
    assert controller.current_mask()[g.offset : g.offset + g.channels].sum() == g.channels, "all came back"


def test_a_group_at_its_minimum_width_stops_pushing_its_threshold():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=4))
    groups = analyze(model, torch.randn(2, 3, 16, 16))
    mask = ThresholdMask(groups, tau=0.1, min_channels=2)
    scores = mask.normalise(channel_scores(groups, "bn")).detach()
    thresholds = torch.zeros(len(mask.ids))
    at_minimum = mask.ids.index("layer1.0.conv1")
    thresholds[at_minimum] = 50.0  # far above every score: only the 2 forced channels stay
    thresholds.requires_grad_(True)
    kept = mask(scores, thresholds)
    g = groups.group("layer1.0.conv1")
    assert int(kept[g.offset : g.offset + g.channels].sum()) == 2
    kept.sum().backward()
    assert thresholds.grad[at_minimum] == 0, "forced channels pass no gradient to the threshold"
    assert (thresholds.grad[[i for i in range(len(mask.ids)) if i != at_minimum]] != 0).any()


def test_removal_after_the_snap_changes_nothing_the_model_computes():
    torch.manual_seed(0)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=4))
    x = quadrant_batches(1, 16)[0][0]
    config = LappConfig(target_macs=0.5, round_to=4, score="bn", recalibrate_bn=0)
    controller = prepare_(model, x[:2], config)
    with torch.no_grad():
        controller.thresholds.uniform_(0.8, 1.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = types.SimpleNamespace(
        module=model, optimizer=optimizer, steps_per_epoch=10, state=types.SimpleNamespace(step=9)
    )
    plan = controller.freeze_(loop)
    assert all(len(gp.keep) % 4 == 0 for gp in plan.groups.values()), "the fixed plan is already rounded"
    with torch.no_grad():
        masked = model.eval()(x)
    controller.remove_(loop)
    with torch.no_grad():
        removed = model.eval()(x)
    assert torch.allclose(masked, removed, atol=1e-5)
    assert controller.plan is plan


def test_batchnorm_statistics_are_reestimated_as_the_average_over_batches():
    torch.manual_seed(0)
    model = create_model("tiny_convnet", num_classes=4)
    batches = [x for x, _ in quadrant_batches(3, 16)]
    stale = copy.deepcopy(model.features[1].running_mean)
    assert recalibrate_bn_(model, iter(batches)) == 3
    conv = model.features[0]
    with torch.no_grad():
        expected = torch.stack([conv(b).mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(model.features[1].running_mean, expected, atol=1e-5)
    assert not torch.allclose(stale, expected)
    assert model.features[1].momentum == 0.1, "the momentum is restored"
    assert recalibrate_bn_(model, iter([])) == 0 and torch.allclose(model.features[1].running_mean, expected)
