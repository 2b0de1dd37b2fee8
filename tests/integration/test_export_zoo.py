"""Every registered CNN, pruned by a random plan (bypass added and folded for the CIFAR models), exports
to ONNX with the default exporter at the smallest input it accepts (its registered minimum, as
`lappdeploy train` would raise a small dataset to): checker, ONNX Runtime vs PyTorch at two batch sizes,
MACs counted from the graph equal to PyTorch's. Where the default fell back from the legacy exporter to
dynamo, an explicit `exporter="legacy"` must fail in one clean line. The default suite runs a few
representatives and `pytest -m slow` (make test-all) runs the rest."""

from __future__ import annotations

import pytest
import torch

from lappdeploy.errors import ExportError
from lappdeploy.export import to_onnx
from lappdeploy.models import MODELS, create_model, list_models, resolve_input_shape
from lappdeploy.surgery import add_bypass_, analyze, fold_bn_, random_plan, remove_channels_
from lappdeploy.testing import randomize_norms_

# The default suite: one CIFAR ResNet (residual coupling, bypass), the CIFAR VGG (a plain chain), a
# torchvision net with concatenations, and the smallest torchvision VGG-style head (AlexNet, whose default
# export falls back to dynamo). The dynamo exporter costs 4-15 s per model on 2 CPU cores.
DEFAULT = {"resnet20", "vgg16_bn_cifar", "squeezenet1_1", "alexnet", "shufflenet_v2_x0_5"}

# torch 2.14's legacy (TorchScript) exporter cannot export an AdaptiveAvgPool2d whose output size does
# not divide its input size, which VGG's and AlexNet's (7x7 / 6x6 heads) are at inputs below 224 px
# (at 224 px the map is exactly 7x7); the dynamo exporter handles them.
LEGACY_ADAPTIVE_POOL = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19")


def _params():
    for name in list_models():
        if MODELS.get(name).family == "testing":
            continue
        marks = [] if name in DEFAULT else [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


def _prepare(name: str):
    """A randomly pruned deploy-ready model of `name`, and an example batch."""
    torch.manual_seed(0)
    shape = resolve_input_shape(name, 3, (1, 1))  # the architecture's minimum
    model = randomize_norms_(create_model(name, num_classes=10)).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    if MODELS.get(name).family == "cifar":
        add_bypass_(model, x)  # LAPP's training-time form; to_onnx must fold it
        randomize_norms_(model, seed=1)
    groups = analyze(model, x)
    remove_channels_(model, random_plan(groups, 0.5, seed=2), x, groups=groups)
    if MODELS.get(name).family != "cifar":
        # BN folded here with the pairs already traced (to_onnx would trace the model again to find them)
        fold_bn_(model, pairs=list(groups.bn_after_conv.items()))
    return model.eval(), x


@pytest.mark.parametrize("name", list(_params()))
def test_pruned_model_exports_with_the_default_exporter(name, tmp_path):
    model, x = _prepare(name)
    record = to_onnx(model, x, tmp_path / "model.onnx")  # exporter="auto", what `lappdeploy export` runs
    legacy_fails = name.startswith(LEGACY_ADAPTIVE_POOL) and MODELS.get(name).family == "torchvision"
    assert record.exporter == ("dynamo" if legacy_fails else "legacy"), record.fallback_reason
    assert max(row["relative_error"] for row in record.parity) <= 1e-3
    # exact, up to the adds of biases that are still exactly zero at init (SE and Linear layers)
    assert record.macs == record.torch_macs - record.zero_bias_adds_dropped
    assert (tmp_path / "model.onnx").stat().st_size == record.file_bytes
    if legacy_fails:
        with pytest.raises(ExportError, match="adaptive_avg_pool2d") as failure:
            to_onnx(model, x, tmp_path / "legacy.onnx", exporter="legacy")
        assert "\n" not in str(failure.value) and not (tmp_path / "legacy.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn_cifar", "squeezenet1_1"])
def test_pruned_model_exports_with_dynamo_too(name, tmp_path):
    model, x = _prepare(name)
    record = to_onnx(model, x, tmp_path / "dynamo.onnx", exporter="dynamo")
    assert record.exporter == "dynamo" and max(row["relative_error"] for row in record.parity) <= 1e-3
    assert record.macs == record.torch_macs - record.zero_bias_adds_dropped
