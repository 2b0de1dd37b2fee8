"""Every torchvision classification CNN builds for synthetic 3x64x64 and for Fashion-MNIST (1 channel),
forward-passes, and `lappdeploy inspect` prints its MACs."""

from __future__ import annotations

import json

import pytest

from lappdeploy.models import MODELS, resolve_input_shape
from lappdeploy.models.torchvision_zoo import TRANSFORMER_PREFIXES, torchvision_cnn_names

# Building these takes > 5 s each on 2 CPU cores (hundreds of millions of parameters): `make test-all`.
SLOW = {"regnet_y_128gf"}


def _params():
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in torchvision_cnn_names()]


def test_the_list_covers_every_torchvision_cnn_and_no_transformer():
    import torchvision.models

    every = torchvision.models.list_models(module=torchvision.models)
    cnns = [n for n in every if not n.startswith(TRANSFORMER_PREFIXES)]
    assert set(cnns) == set(torchvision_cnn_names())
    assert len(cnns) >= 60
    assert all(MODELS.get(n).family == "torchvision" for n in cnns)
    assert not any(n.startswith(("vit_", "swin_", "maxvit")) for n in MODELS.names())


@pytest.mark.parametrize("name", _params())
def test_builds_forwards_and_inspects(name, cli, fake_fashion_dir):
    synthetic = cli("inspect", name, "--dataset", "synthetic", "--synthetic-shape", "3x64x64", "--json")
    assert synthetic.code == 0, synthetic.err
    report = json.loads(synthetic.out)
    assert report["output_shape"] == [10]
    assert report["input_shape"] == list(resolve_input_shape(name, 3, (64, 64)))  # 64 px, or the model's minimum
    assert report["macs"] > 0 and report["macs"] == sum(layer["macs"] for layer in report["layers"])

    fashion = cli("inspect", name, "--dataset", "fashion-mnist", "--data-dir", fake_fashion_dir, "--json")
    assert fashion.code == 0, fashion.err
    report = json.loads(fashion.out)
    assert report["input_shape"] == list(resolve_input_shape(name, 1, (28, 28)))
    assert report["kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert report["output_shape"] == [10]
    assert report["macs"] > 0


def test_inspect_prints_a_macs_table(cli):
    result = cli("inspect", "mobilenet_v2", "--input-shape", "3x224x224", "--num-classes", "1000")
    assert result.code == 0, result.err
    assert "MACs / image" in result.out
    assert "300.8M" in result.out  # MobileNetV2 at 224 px: ~300M MACs (torchvision reports 0.30 GFLOPS)
    assert "features.18.0" in result.out and "classifier.1" in result.out
