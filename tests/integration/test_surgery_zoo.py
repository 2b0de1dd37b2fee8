"""Every registered CNN: a random plan keeping ~50% of each group is removed physically; the pruned
model computes the masked dense model's logits, its measured MACs equal the analytic ones, and it
saves and loads (in this process and in a fresh one) with identical logits. ShuffleNetV2 included: its
channel shuffle is a barrier the surgery keeps whole (lappdeploy.models.shuffle)."""

from __future__ import annotations

import copy

import pytest
import torch

from lappdeploy.models import count_macs, create_model, list_models, model_card, resolve_input_shape
from lappdeploy.surgery import (
    ChannelMasker,
    analyze,
    fold_bn_,
    load_model,
    plan_cost,
    random_plan,
    remove_channels_,
    save_model,
)
from lappdeploy.testing import randomize_norms_, reload_errors_in_fresh_process

# The default suite: every CIFAR and testing model, and one torchvision model per family (the smallest, or the
# one with a distinct structure: VGG with and without BatchNorm, ResNet's basic and bottleneck blocks, RegNet X
# and Y); the other torchvision models run with `pytest -m slow` / `make test-all` (the larger ones take
# minutes on 2 CPU cores: dependency-graph builds grow with the number of concatenations and the width).
TORCHVISION_DEFAULT = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
    "inception_v3", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
    "resnet18", "resnet50", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "vgg11", "vgg11_bn",
}  # fmt: skip


def _params():
    from lappdeploy.models import MODELS

    for name in list_models():
        slow = MODELS.get(name).family == "torchvision" and name not in TORCHVISION_DEFAULT
        yield pytest.param(name, marks=[pytest.mark.slow] if slow else [], id=name)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pruned_zoo")


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(_params()))
def test_random_half_plan_is_removed_exactly(name, saved_dir):
    torch.manual_seed(0)
    shape = resolve_input_shape(name, 3, (64, 64))
    model = randomize_norms_(create_model(name, num_classes=10)).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    groups = analyze(model, x)
    assert groups.prunable, f"{name} has no prunable group"
    plan = random_plan(groups, 0.5, seed=2)
    with ChannelMasker(groups) as masker, torch.no_grad():
        masker.set(plan)
        masked = model(x)
    predicted = plan_cost(groups, plan)

    remove_channels_(model, plan, x, groups=groups)
    with torch.no_grad():
        assert _relative_error(model(x), masked) < 1e-4
    deploy = fold_bn_(copy.deepcopy(model), x)
    with torch.no_grad():
        logits = deploy(x)
    assert _relative_error(logits, masked) < 1e-4
    measured = count_macs(deploy, shape)
    assert measured.macs == predicted.macs
    assert measured.params == predicted.params

    path = saved_dir / f"{name}.pt"
    save_model(deploy, path, model_card(deploy, input_shape=shape))
    loaded = load_model(path).model
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
    torch.save({"inputs": x, "logits": logits}, saved_dir / f"{name}.expected")


def test_pruned_checkpoints_load_in_a_fresh_process(saved_dir):
    names = sorted(p.stem for p in saved_dir.glob("*.pt"))
    if not names:
        pytest.skip("no pruned model was saved (the per-model tests were deselected)")
    worst = reload_errors_in_fresh_process(saved_dir, names)
    assert set(worst) == set(names)
    assert all(value == 0.0 for value in worst.values()), worst
