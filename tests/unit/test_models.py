from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import lappdeploy
from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.models import (
    MODELS,
    count_macs,
    create_model,
    model_card,
    read_checkpoint,
    register_model,
    resolve_input_shape,
)
from lappdeploy.models.torchvision_zoo import MIN_INPUT_SIZE
from lappdeploy.surgery import load_model, save_model
from lappdeploy.testing import same_threads_env, torch_pruning_macs


def test_cifar_resnet20_matches_the_paper_scale():
    model = create_model("resnet20", num_classes=10, in_channels=3)
    report = count_macs(model, (3, 32, 32))
    # He et al. report ~0.27M params / ~41M MACs for ResNet-20 (ours has 1x1 projection shortcuts).
    assert report.params == 272_474
    assert report.macs == 40_813_194
    assert report.output_shape == (10,)
    assert len(report.layers) == 22  # 19 3x3 convs, 2 projections, 1 fc


def test_cifar_depths_and_invalid_depth():
    params = [count_macs(create_model(f"resnet{d}"), (3, 32, 32)).params for d in (20, 32, 44, 56, 110)]
    assert params == sorted(params) and len(set(params)) == 5
    from lappdeploy.models.cifar import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def test_conv_macs_formula_with_groups_stride_and_bias():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=True), nn.Flatten(), nn.Linear(200, 5))
    report = count_macs(model, (4, 9, 9))
    conv, fc = report.layers
    assert conv.output_shape == (8, 5, 5)
    assert conv.macs == 5 * 5 * 3 * 3 * (4 // 2) * 8 + 8 * 5 * 5  # MACs + one add per output for the bias
    assert fc.macs == 200 * 5 + 5
    assert report.macs == conv.macs + fc.macs


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet20", (1, 28, 28)),
        ("vgg16_bn_cifar", (3, 32, 32)),
        ("tiny_convnet", (3, 16, 16)),
        ("mobilenet_v2", (3, 64, 64)),  # depthwise
        ("resnext50_32x4d", (3, 64, 64)),  # grouped
        ("efficientnet_b0", (1, 64, 64)),  # squeeze-excitation
        ("shufflenet_v2_x0_5", (3, 64, 64)),
        ("googlenet", (3, 64, 64)),  # concatenations
    ],
)
def test_count_macs_equals_torch_pruning_for_conv_and_linear(name, shape):
    model = create_model(name, num_classes=10, in_channels=shape[0])
    assert count_macs(model, shape).macs == torch_pruning_macs(model, shape)


def test_count_macs_restores_training_mode():
    model = create_model("tiny_convnet").train()
    count_macs(model, (3, 8, 8))
    assert model.training


@pytest.mark.parametrize("family", sorted(MIN_INPUT_SIZE))
def test_min_input_size_table_is_exact(family):
    name = {"convnext": "convnext_tiny", "densenet": "densenet121", "vgg": "vgg11"}.get(family, family)
    size = MODELS.get(name).min_input_size
    model = create_model(name, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 4)
        with pytest.raises(RuntimeError):
            model(torch.zeros(2, 3, size - 1, size - 1))


def test_resolve_input_shape():
    assert resolve_input_shape("resnet18", 1, (28, 28)) == (1, 28, 28)
    assert resolve_input_shape("vgg16", 1, (28, 28)) == (1, 32, 32)
    assert resolve_input_shape("alexnet", 1, (28, 28)) == (1, 64, 64)  # 63 rounded up to a multiple of 8
    assert resolve_input_shape("inception_v3", 3, (32, 32)) == (3, 80, 80)
    assert resolve_input_shape("inception_v3", 3, (299, 299)) == (3, 299, 299)
    assert resolve_input_shape("resnet18", 3, (40, 60)) == (3, 40, 60)  # non-square kept when large enough
    assert resolve_input_shape("resnet18", 3, None) == (3, 224, 224)  # variable-size images (ImageFolder)
    assert resolve_input_shape("vgg16", 1, (28, 28), requested=40) == (1, 40, 40)
    with pytest.raises(ConfigError, match="at least 32x32"):
        resolve_input_shape("vgg16", 1, (28, 28), requested=16)


def test_create_model_records_architecture_and_validates():
    model = create_model("resnet20", num_classes=7, in_channels=1)
    assert model.lappdeploy_arch == {"name": "resnet20", "kwargs": {"num_classes": 7, "in_channels": 1}}
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    with pytest.raises(ConfigError):
        create_model("resnet20", num_classes=0)
    with pytest.raises(lappdeploy.LappDeployError, match="unknown model"):
        create_model("resnet21")


def test_register_user_model_and_duplicate():
    @register_model("test_user_net", min_input_size=4)
    def build(*, num_classes: int = 10, in_channels: int = 3):
        return nn.Sequential(
            nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
        )

    model = create_model("test_user_net", num_classes=3)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    assert MODELS.get("test_user_net").family == "user"
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_user_net")(build)


def test_portable_checkpoint_loads_in_a_fresh_process_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1).eval()
    with torch.no_grad():  # make BN statistics non-trivial so they must be saved too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    card = model_card(model, input_shape=(1, 28, 28), mean=(0.286,), std=(0.353,), dataset="fashion-mnist")
    path = tmp_path / "model.pt"
    save_model(model, path, card)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x)
    code = (
        "import sys, torch\n"
        "from lappdeploy import load_model\n"
        "loaded = load_model(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad(): torch.save(loaded.model(x), sys.argv[3])\n"
        "assert loaded.card.input_shape == (1, 28, 28) and loaded.card.mean == (0.286,)\n"
    )
    paths = [str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")]
    subprocess.run([sys.executable, "-c", code, *paths], check=True, env=same_threads_env())  # bit-equal: same threads
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), expected)
    payload = torch.load(path, weights_only=True)  # no pickled classes
    assert payload["card"]["architecture"] == "resnet20"


def test_load_rejects_foreign_and_mismatched_checkpoints(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(LappDeployError, match="not a lappdeploy checkpoint"):
        read_checkpoint(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save(nn.Linear(2, 2), pickled)  # a whole pickled module
    with pytest.raises(LappDeployError, match="cannot read it"):
        read_checkpoint(pickled)
    model = create_model("tiny_convnet")
    card = model_card(model, input_shape=(3, 16, 16))
    card.kwargs["num_classes"] = 5  # weights are for 10 classes
    save_model(model, tmp_path / "m.pt", card)
    with pytest.raises(LappDeployError, match="do not fit"):
        load_model(tmp_path / "m.pt")
    with pytest.raises(LappDeployError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_model_card_needs_a_registered_builder():
    with pytest.raises(LappDeployError, match="register_model"):
        model_card(nn.Linear(2, 2), input_shape=(3, 4, 4))
