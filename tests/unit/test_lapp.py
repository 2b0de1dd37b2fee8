"""LAPP on tiny models: every invariant of docs/lapp.md#invariants, plus the hooks' schedule, baselines and
resumption. The Trainer, torch-pruning and the cost model are real."""

from __future__ import annotations

import copy
import itertools
import math
import types

import pytest
import torch
from torch import nn

from lappdeploy.config import TrainConfig
from lappdeploy.errors import ConfigError, UnknownNameError
from lappdeploy.methods import METHODS, LappConfig, method_config
from lappdeploy.methods.budgets import MacsBudget
from lappdeploy.methods.common import LANDING_WINDOW, plan_within_budget
from lappdeploy.methods.lapp import ThresholdMask, cubic_budget, prepare_
from lappdeploy.models import count_macs, create_model
from lappdeploy.surgery import (
    ChannelPlan,
    RepConvBN,
    SurgeryError,
    add_bypass_,
    analyze,
    channel_scores,
    fill_plan,
    fold_bn_,
    fold_bypass_,
    has_bypass,
    plan_cost,
    plan_from_scores,
    uniform_plan,
)
from lappdeploy.testing import quadrant_batches, randomize_norms_
from lappdeploy.train import Trainer

SIZE = 16  # px


def _batches(n: int = 12, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return quadrant_batches(n, SIZE, batch, seed)


def _example() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def _model(name: str = "tiny_resnet") -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=4)


def _macs(groups, target: float, round_to) -> MacsBudget:
    return MacsBudget(groups, target, round_to=round_to, flag=f"--target-macs {target}")


def _config(method: str = "lapp", **changes):
    return method_config(
        {"name": method, "target_macs": 0.5, "prune_epochs": 2, "round_to": 1, "log_every": 1, **changes}
    )


def _train_config(**changes) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "lr": 0.05, "device": "cpu", "seed": 0, **changes})


class Records:
    """Collects what the controller passes to `trainer.log`."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def hook(self):
        from lappdeploy.train import Hook

        outer = self

        class Collect(Hook):
            def on_log(self, trainer, record):
                outer.records.append(record)

        return Collect()


def _train(model, controller, *, epochs=3, batches=None, records=None):
    batches = batches if batches is not None else _batches()
    hooks = [controller] + ([records.hook()] if records is not None else [])
    trainer = Trainer(model, batches, batches[:2], config=_train_config(epochs=epochs), hooks=hooks)
    trainer.fit()
    return trainer


# -------------------------------------------------------------------- masks and budget
def test_straight_through_mask_is_hard_with_the_sigmoid_surrogate_gradient():
    model = _model()
    groups = analyze(model, _example())
    mask = ThresholdMask(groups, tau=0.1)
    scores = mask.normalise(channel_scores(groups, "l2")).detach().requires_grad_(True)
    thresholds = torch.full((len(mask.ids),), 1.0, requires_grad=True)
    m = mask(scores, thresholds)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    owner = mask.owner(scores.device)
    z = (scores.detach() - 1.0) / 0.1
    expected_kept = (z > 0) | mask.forced(scores.detach())
    assert torch.equal(m.detach().bool(), expected_kept)
    m.sum().backward()
    # channels kept only by their group's minimum width pass no surrogate gradient
    sigmoid_prime = torch.sigmoid(z) * (1 - torch.sigmoid(z)) * ((z > 0) | ~expected_kept)
    expected_t = -torch.zeros(len(mask.ids)).index_add(0, owner, sigmoid_prime / 0.1)
    assert torch.allclose(thresholds.grad, expected_t, rtol=1e-5)
    assert torch.allclose(scores.grad, sigmoid_prime / 0.1, rtol=1e-5)


def test_scores_are_normalised_per_group_and_every_group_keeps_its_minimum():
    model = _model()
    randomize_norms_(model)
    groups = analyze(model, _example())
    mask = ThresholdMask(groups, tau=0.1, min_channels=3)
    normalised = mask.normalise(channel_scores(groups, "bn"))
    for g in groups.prunable:
        assert normalised[g.offset : g.offset + g.channels].mean().item() == pytest.approx(1.0, rel=1e-5)
    kept = mask.hard(normalised, torch.full((len(mask.ids),), 1e9))
    for g, minimum in zip(groups.prunable, mask.min_keep, strict=True):
        block = kept[g.offset : g.offset + g.channels]
        assert block.sum().item() == minimum == 3
        best = normalised[g.offset : g.offset + g.channels].topk(3).indices
        assert block[best].all()


def test_cubic_budget_anneals_from_dense_to_target_then_stays():
    assert cubic_budget(0, 3, 100.0, 40.0) == 100.0
    assert cubic_budget(3, 3, 100.0, 40.0) == 40.0
    assert cubic_budget(5, 3, 100.0, 40.0) == 40.0
    assert cubic_budget(1.5, 3, 100.0, 40.0) == pytest.approx(40 + 60 * 0.125)
    values = [cubic_budget(e / 10, 3, 100.0, 40.0) for e in range(31)]
    assert all(a > b for a, b in itertools.pairwise(values))


# -------------------------------------------------------------------- invariants: initial state
@pytest.mark.parametrize("bypass", ["none", "rep"])
def test_at_init_masks_are_all_ones_and_the_cost_is_dense(bypass):
    model = _model()
    reference = copy.deepcopy(model)
    controller = prepare_(model, _example(), _config(bypass=bypass))
    assert has_bypass(model) == (bypass == "rep")
    assert bool(controller.current_mask().all())
    assert (
        controller.current_macs()
        == controller.dense.macs
        == plan_cost(analyze(reference, _example()), ChannelPlan()).macs
    )
    # the masked model computes what the un-wrapped model (with the bypass branch, if any) computes
    if bypass == "rep":
        add_bypass_(reference, _example())
        reference.load_state_dict(model.state_dict())  # the same bypass weights
    x = _example()
    model.eval(), reference.eval()
    assert torch.equal(model(x), reference(x))


def test_unreachable_target_is_refused_with_the_floor():
    with pytest.raises(ConfigError, match="unreachable"):
        prepare_(_model(), _example(), _config(target_macs=0.01, round_to=8))


# -------------------------------------------------------------------- the schedule on the Trainer
@pytest.fixture(scope="module")
def lapp_run():
    """TinyResNet, 3 epochs of 12 steps, pruning phase 2 epochs, target 0.5. So short a phase needs faster
    thresholds (lr 0.05) and l2 scores (bn scores all start at 1, so masking would begin in one burst)."""
    model = _model()
    controller = prepare_(model, _example(), _config(bypass="rep", threshold_lr=0.05, score="l2"))
    records = Records()
    trainer = Trainer(
        model,
        _batches(),
        _batches()[:2],
        config=_train_config(),
        hooks=[controller, records.hook()],
    )
    trainer.fit()
    return types.SimpleNamespace(model=model, controller=controller, trainer=trainer, records=records.records)


def test_macs_follow_the_budget_and_thresholds_move_smoothly(lapp_run):
    steps = [r for r in lapp_run.records if r["type"] == "lapp"]
    # logged every step until the masks are fixed to the final plan, after 90% of the 24-step phase (snap 0.1)
    assert [r["step"] for r in steps] == list(range(1, 23))
    # the budget of each step: dense at step 0, cubically down to the target
    assert steps[0]["budget"] == 1.0 and steps[-1]["budget"] == pytest.approx(0.5, abs=1e-3)
    assert all(a["budget"] > b["budget"] for a, b in itertools.pairwise(steps))
    # the thresholds rise under the penalty, each step by at most about one Adam step (lr 0.05)
    first = steps[0]["thresholds"]
    last = steps[-1]["thresholds"]
    assert all(last[g] > first[g] for g in first)
    for a, b in itertools.pairwise(steps):
        assert max(abs(b["thresholds"][g] - a["thresholds"][g]) for g in a["thresholds"]) <= 1.5 * 0.05
    assert all(r["penalty"] >= 0 for r in steps)
    assert steps[-1]["macs"] < 1.0, "the masks were pruning before the freeze"


def test_freeze_meets_the_budget_and_removes_the_masked_channels(lapp_run):
    controller = lapp_run.controller
    plan = controller.plan
    assert plan is not None and not plan.is_empty
    assert plan.info["macs"] <= 0.5 * controller.dense.macs
    freeze = [r for r in lapp_run.records if r["type"] == "lapp_freeze"]
    assert len(freeze) == 1 and freeze[0]["step"] == 22, "the widths are fixed for the last 10% of the phase"
    assert controller._masker is None, "the mask hooks are gone after removal"
    # the model trained on after removal: its parameters are the pruned ones, in the optimizer
    optimizer_params = {id(p) for group in lapp_run.trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in lapp_run.model.parameters()} <= optimizer_params
    assert lapp_run.trainer.state.step == 36


def test_estimated_macs_equal_measured_macs_of_the_pruned_folded_model(lapp_run):
    model = copy.deepcopy(lapp_run.model).eval()
    fold_bypass_(model)
    fold_bn_(model, _example())
    assert count_macs(model, (3, SIZE, SIZE)).macs == lapp_run.controller.plan.info["macs"]


def test_masked_and_pruned_folded_models_give_the_same_logits():
    """The masked dense model (eval) and the pruned, folded model agree within 1e-4."""
    model = _model()
    randomize_norms_(model)
    controller = prepare_(model, _example(), _config(bypass="rep"))
    for m in model.modules():
        if isinstance(m, RepConvBN):
            randomize_norms_(m)
    with torch.no_grad():
        controller.thresholds.uniform_(0.6, 1.2)  # a non-trivial, group-dependent mask
    model.eval()
    x = _example()
    masked_logits = model(x)
    assert 0 < controller.current_mask().mean().item() < 1
    loop = types.SimpleNamespace(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    plan = ChannelPlan.from_keep_mask(controller.groups, controller.current_mask())
    controller.apply_(loop, plan)
    fold_bypass_(model)
    fold_bn_(model, x)
    pruned_logits = model(x)
    assert ((pruned_logits - masked_logits).abs().max() / masked_logits.abs().max()).item() < 1e-4
    assert count_macs(model, (3, SIZE, SIZE)).macs == plan.info["macs"]


def test_keep_ratios_differ_between_groups(lapp_run):
    plan = lapp_run.controller.plan
    ratios = {
        g.id: (len(plan.groups[g.id].keep) if g.id in plan.groups else g.channels) / g.channels
        for g in lapp_run.controller.groups.prunable
    }
    assert len(set(round(r, 4) for r in ratios.values())) > 1, ratios


@pytest.mark.parametrize("target", [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("round_to", [1, 4])
def test_final_macs_within_budget_for_every_reachable_target(target, round_to):
    model = _model()
    randomize_norms_(model)
    groups = analyze(model, _example())
    mask = ThresholdMask(groups, tau=0.1, round_to=round_to)
    normalised = mask.normalise(channel_scores(groups, "bn"))
    thresholds = torch.rand(len(mask.ids), generator=torch.Generator().manual_seed(round_to)) * 0.5
    dense = plan_cost(groups, ChannelPlan()).macs
    limit = target * dense  # the target is a ceiling
    from lappdeploy.methods.common import minimum_plan

    floor = plan_cost(groups, minimum_plan(groups, mask, channel_scores(groups, "bn"))).macs
    if floor > limit:  # unreachable: a clear error, never a plan over budget
        with pytest.raises(SurgeryError, match="minimum widths"):
            plan_within_budget(groups, mask, normalised, thresholds, limit, budget=_macs(groups, target, round_to))
        return
    plan, offset = plan_within_budget(
        groups, mask, normalised, thresholds, limit, budget=_macs(groups, target, round_to)
    )
    macs = plan_cost(groups, plan).macs
    assert macs <= limit
    assert offset >= 0
    if macs < (1 - LANDING_WINDOW) * limit:  # under the window only when no width unit fits any more
        grown = fill_plan(plan, groups, round_to, scores=normalised, budget=limit)
        assert plan_cost(groups, grown).macs == macs, f"{macs / dense:.4f} of dense could have grown"
    for g in groups.prunable:
        kept = len(plan.groups[g.id].keep) if g.id in plan.groups else g.channels
        assert kept % round_to == 0 or kept == g.channels


def test_a_plan_no_three_move_trade_lands_is_landed_by_four():
    """The widths a LAPP run froze at (ResNet-20 at 28 px, --round-to 8, target 0.3): 0.2982 of dense, under the
    window (0.2985-0.3); no trade of up to three unit moves lands it, one of four does."""
    model = create_model("resnet20", num_classes=10, in_channels=1)
    groups = analyze(model, torch.randn(2, 1, 28, 28))
    frozen = {
        "layer3.0.conv2": 24, "layer2.0.conv2": 16, "conv1": 8, "layer1.0.conv1": 8, "layer1.1.conv1": 8,
        "layer1.2.conv1": 8, "layer2.0.conv1": 32, "layer2.1.conv1": 8, "layer2.2.conv1": 16, "layer3.0.conv1": 56,
    }  # fmt: skip
    scores = torch.rand(groups.global_channels, generator=torch.Generator().manual_seed(0))
    plan = plan_from_scores(groups, scores, frozen)
    dense, limit = plan_cost(groups, ChannelPlan()).macs, 0.3 * plan_cost(groups, ChannelPlan()).macs
    assert plan_cost(groups, plan).macs < (1 - LANDING_WINDOW) * limit
    assert (
        plan_cost(groups, fill_plan(plan, groups, 8, scores=scores, budget=limit, window=LANDING_WINDOW)).macs
        < (1 - LANDING_WINDOW) * limit
    ), "no trade of up to three moves lands it"
    landed = fill_plan(plan, groups, 8, scores=scores, budget=limit, window=LANDING_WINDOW, four_move_trade=True)
    macs = plan_cost(groups, landed).macs
    assert (1 - LANDING_WINDOW) * limit <= macs <= limit, macs / dense
    widths = {g.id: len(landed.groups[g.id].keep) if g.id in landed.groups else g.channels for g in groups.prunable}
    assert all(abs(widths[gid] - frozen.get(gid, g.channels)) <= 8 for gid, g in ((g.id, g) for g in groups.prunable))


# -------------------------------------------------------------------- any loop; resume; baselines
def test_hooks_drive_a_hand_written_training_loop():
    """The controller needs no Trainer: a plain loop with the documented attributes is enough."""
    model = _model()
    controller = prepare_(model, _example(), _config(prune_epochs=1))
    batches = _batches(n=8)
    loop = types.SimpleNamespace(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        steps_per_epoch=len(batches),
        state=types.SimpleNamespace(step=0),
    )
    controller.on_train_start(loop)
    model.train()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        loop.optimizer.zero_grad()
        loss.backward()
        controller.after_backward(loop)
        loop.optimizer.step()
        loop.state.step += 1
        controller.on_step_end(loop, loss.detach())
    assert controller.frozen
    assert count_macs(model, (3, SIZE, SIZE)).macs < count_macs(_model(), (3, SIZE, SIZE)).macs
    loss = nn.functional.cross_entropy(model(batches[0][0]), batches[0][1])
    loss.backward()
    loop.optimizer.step()  # the optimizer holds the pruned parameters


def test_resume_mid_phase_reaches_the_same_plan_and_weights():
    batches = _batches()

    def fresh():
        model = _model()
        return model, prepare_(model, _example(), _config(bypass="rep"))

    model_a, lapp_a = fresh()
    trainer_a = Trainer(model_a, batches, None, config=_train_config(), hooks=[lapp_a])
    trainer_a.fit()

    model_b, lapp_b = fresh()
    trainer_b = Trainer(model_b, batches, None, config=_train_config(epochs=3), hooks=[lapp_b])
    trainer_b.train_one_epoch(0)  # one epoch of the two-epoch pruning phase, then "killed"
    trainer_b.state.epoch = 1
    state = trainer_b.state_dict()

    model_c, lapp_c = fresh()
    trainer_c = Trainer(model_c, batches, None, config=_train_config(), hooks=[lapp_c])
    trainer_c.load_state_dict(state)
    trainer_c.fit()
    assert lapp_c.plan.to_dict() == lapp_a.plan.to_dict()
    a, c = model_a.state_dict(), model_c.state_dict()
    assert a.keys() == c.keys()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_after_removal_replays_it_before_loading_weights(lapp_run):
    state = lapp_run.trainer.state_dict()
    model = _model()
    controller = prepare_(model, _example(), _config(bypass="rep"))
    trainer = Trainer(model, _batches(), None, config=_train_config(), hooks=[controller])
    trainer.load_state_dict(state)
    assert controller.frozen and controller._masker is None
    x = _example()
    model.eval(), lapp_run.model.eval()
    assert torch.equal(model(x), lapp_run.model(x))


@pytest.mark.parametrize("method", ["uniform", "global"])
def test_baselines_prune_once_at_the_end_of_the_phase_within_budget(method):
    model = _model()
    hook = METHODS.get(method).prepare(model, _example(), _config(method, round_to=4))
    records = Records()
    trainer = _train(model, hook, records=records)
    assert hook.plan is not None and hook.plan.info["method"] == method
    assert hook.plan.info["macs"] <= 0.5 * hook.dense.macs
    assert [r["step"] for r in records.records] == [24]
    assert count_macs(trainer.module, (3, SIZE, SIZE)).macs < count_macs(_model(), (3, SIZE, SIZE)).macs
    for gp in hook.plan.groups.values():
        assert len(gp.keep) % 4 == 0


def test_global_ranking_differs_from_uniform():
    model = _model()
    randomize_norms_(model)
    block = model.layer1[0]
    weak = torch.arange(0, block.conv1.out_channels, 2)
    with torch.no_grad():  # half the channels of one group nearly dead, in every layer the group spans
        block.conv1.weight[weak] *= 0.01
        block.bn1.weight[weak] *= 0.01
        block.conv2.weight[:, weak] *= 0.01
    example = _example()
    groups = analyze(model, example)
    from lappdeploy.methods.baselines.oneshot import global_plan, uniform_budget_plan

    limit = 0.5 * plan_cost(groups, ChannelPlan()).macs
    config = _config()
    from lappdeploy.surgery import channel_scores

    l2, group_l2 = channel_scores(groups, "l2").detach(), channel_scores(groups, "group_l2")
    budget = _macs(groups, 0.5, config.round_to)
    uniform = uniform_budget_plan(groups, config, budget, limit, l2)
    glob = global_plan(groups, config, budget, limit, group_l2)
    ratio = lambda plan, g: len(plan.groups[g].keep) / plan.groups[g].channels if g in plan.groups else 1.0  # noqa: E731
    # uniform: the same fraction everywhere, up to the units that landing it on the budget moves (here 1)
    same_fraction = uniform_plan(groups, 0.5, scores=l2)
    for g in groups.prunable:
        assert abs(ratio(uniform, g.id) - ratio(same_fraction, g.id)) * g.channels <= 2, g.id
    # torch-pruning's global ranking (mean-normalised per group) removes the dead half first
    assert ratio(glob, "layer1.0.conv1") <= 0.5 < ratio(glob, "layer1.1.conv1")
    assert set(glob.groups["layer1.0.conv1"].keep).isdisjoint(weak.tolist())
    assert plan_cost(groups, glob).macs <= limit


def test_uniform_meets_its_budget_where_per_group_multiples_leave_narrow_groups_only_their_full_width():
    """--round-to auto can give a 16-channel group a step of 16: the fraction found on exact widths rounds
    that group back to full width and would overshoot; uniform searches the fraction on rounded plans."""
    from lappdeploy.methods.baselines.oneshot import uniform_budget_plan
    from lappdeploy.surgery import channel_scores

    groups = analyze(_model(), _example())
    narrowest = min(g.channels for g in groups.prunable)
    multiples = {g.id: g.channels if g.channels == narrowest else 4 for g in groups.prunable}
    assert 0 < sum(m != 4 for m in multiples.values()) < len(multiples), "some groups fixed, some free"
    limit = 0.5 * plan_cost(groups, ChannelPlan()).macs
    scores = channel_scores(groups, "l2").detach()
    plan = uniform_budget_plan(groups, _config(), _macs(groups, 0.5, multiples), limit, scores)
    assert plan_cost(groups, plan).macs <= limit
    for g in groups.prunable:
        kept = len(plan.groups[g.id].keep) if g.id in plan.groups else g.channels
        assert kept % multiples[g.id] == 0 or kept == g.channels, (g.id, kept)


@pytest.mark.parametrize("target", [0.5, 0.4, 0.3])
def test_baselines_land_within_half_a_percent_under_the_target_on_resnet20(target):
    """Compared methods spend the same MACs: each one-shot plan lands in [0.995, 1] x target, widths
    rounded to 8 (ResNet-20 at 28x28, as in the Fashion-MNIST benchmark). Not at 0.2: there the window
    (0.1% of the dense MACs) is finer than the ~0.18% steps that moves of 8 channels can make."""
    from lappdeploy.methods.baselines.oneshot import global_plan, uniform_budget_plan

    torch.manual_seed(0)
    groups = analyze(create_model("resnet20", num_classes=10, in_channels=1).eval(), torch.randn(1, 1, 28, 28))
    dense = plan_cost(groups, ChannelPlan()).macs
    config = LappConfig(target_macs=target, round_to=8)
    l2, group_l2 = channel_scores(groups, "l2").detach(), channel_scores(groups, "group_l2").detach()
    limit = target * dense
    budget = _macs(groups, target, 8)
    for plan in (
        uniform_budget_plan(groups, config, budget, limit, l2),
        global_plan(groups, config, budget, limit, group_l2),
    ):
        ratio = plan_cost(groups, plan).macs / dense
        assert (1 - LANDING_WINDOW) * target <= ratio <= target, ratio


def test_config_validation():
    with pytest.raises(ConfigError, match="target_macs"):
        LappConfig(target_macs=0)
    with pytest.raises(ConfigError, match="target_macs"):
        LappConfig(target_macs=1.5)
    with pytest.raises(UnknownNameError, match="unknown method 'lap'; did you mean lapp"):
        method_config({"name": "lap"})
    with pytest.raises(ConfigError, match="prune_epochs"):
        LappConfig(prune_epochs=3).check_against(TrainConfig(epochs=2))
    assert LappConfig(ignore="layer3.*, fc").ignore == ("layer3.*", "fc")
    assert math.isclose(LappConfig.from_dict(LappConfig(tau=0.2).to_dict()).tau, 0.2)


def test_each_method_has_its_own_config_type_and_handler():
    from lappdeploy.methods import GlobalConfig, UniformConfig, method_section, spec_for

    for config, name in ((LappConfig(), "lapp"), (UniformConfig(), "uniform"), (GlobalConfig(), "global")):
        assert spec_for(config).name == name and type(config).method == name
        assert method_config(method_section(config)) == config  # the config.yaml section round-trips
    assert not hasattr(UniformConfig(), "tau"), "a baseline holds no LAPP option"
    with pytest.raises(ConfigError, match="--tau is an option of method lapp, not of uniform"):
        method_config({"name": "uniform", "tau": 0.2})
    with pytest.raises(ConfigError, match="needs a LappConfig, got a UniformConfig"):
        METHODS.get("lapp").prepare(_model(), _example(), UniformConfig())


def test_the_aliases_deprecated_in_0_2_are_gone_in_0_3():
    import importlib

    import lappdeploy
    import lappdeploy.models
    import lappdeploy.train

    assert not hasattr(lappdeploy, "CompressConfig") and not hasattr(lappdeploy.models, "load_model")
    assert not hasattr(lappdeploy.train, "RunDir"), "moved to lappdeploy.rundir in 0.2"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lappdeploy.lapp")
    assert lappdeploy.load_model.__module__ == "lappdeploy.surgery.portable", "the stable name stays"
