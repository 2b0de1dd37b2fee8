"""Every registered CNN, pruned by a random plan (bypass added and folded for the CIFAR models), exports
to ONNX with both exporters: checker, ONNX Runtime vs PyTorch at two batch sizes, MACs counted from the
graph equal to PyTorch's. Small inputs (32 px, or the architecture's minimum) keep it affordable; the
default suite runs a few representatives and `pytest -m slow` (make test-all) runs the rest."""

from __future__ import annotations

import pytest
import torch

from lappdeploy.errors import ExportError
from lappdeploy.export import to_onnx
from lappdeploy.models import MODELS, create_model, list_models, resolve_input_shape
from lappdeploy.surgery import add_bypass_, analyze, fold_bn_, random_plan, remove_channels_
from lappdeploy.testing import randomize_norms_

# The default suite: one CIFAR ResNet (residual coupling, bypass), the CIFAR VGG (a plain chain) and a
# torchvision net with concatenations. The dynamo exporter costs 4-15 s per model on 2 CPU cores.
DEFAULT = {"resnet20", "vgg16_bn_cifar", "squeezenet1_1"}

# torch 2.14's legacy (TorchScript) exporter cannot export an AdaptiveAvgPool2d whose output size does
# not divide its input size, which VGG's and AlexNet's (7x7 / 6x6 heads) are at inputs below 224 px
# (at 224 px the map is exactly 7x7); the dynamo exporter handles them.
LEGACY_ADAPTIVE_POOL = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19")

# surgery cannot trace ShuffleNetV2's channel_shuffle (see test_surgery_zoo.py): exported dense
DENSE_ONLY = ("shufflenet_v2",)


def _params():
    for name in list_models():
        if MODELS.get(name).family == "testing":
            continue
        marks = [] if name in DEFAULT else [pytest.mark.slow]
        yield pytest.param(name, marks=marks, id=name)


def _prepare(name: str):
    """A randomly pruned deploy-ready model of `name`, and an example batch."""
    torch.manual_seed(0)
    shape = resolve_input_shape(name, 3, (32, 32))
    model = randomize_norms_(create_model(name, num_classes=10)).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1))
    if name.startswith(DENSE_ONLY):
        return model, x
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
def test_pruned_model_exports_with_both_exporters(name, tmp_path):
    model, x = _prepare(name)
    for exporter in ("legacy", "dynamo"):
        path = tmp_path / f"{exporter}.onnx"
        if exporter == "legacy" and name.startswith(LEGACY_ADAPTIVE_POOL) and MODELS.get(name).family == "torchvision":
            with pytest.raises(ExportError, match="adaptive_avg_pool2d"):
                to_onnx(model, x, path, exporter=exporter)
            assert not path.exists()
            continue
        record = to_onnx(model, x, path, exporter=exporter)
        assert record.exporter == exporter
        assert max(row["relative_error"] for row in record.parity) <= 1e-3
        # exact, up to the adds of biases that are still exactly zero at init (SE and Linear layers)
        assert record.macs == record.torch_macs - record.zero_bias_adds_dropped
        assert path.stat().st_size == record.file_bytes
