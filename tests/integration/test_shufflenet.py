"""ShuffleNetV2 under channel surgery: the channel shuffle as a module (same function, same state dict, one
autograd node while traced), the channels that cross a shuffle kept whole, the channels inside each branch
prunable, and `compress` -> `export` end to end with ONNX Runtime parity. The zoo tests
(test_surgery_zoo.py, test_export_zoo.py) check removal, MACs, save/load and export for every width."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models.shufflenetv2 import channel_shuffle, shufflenet_v2_x0_5

from lappdeploy.models import create_model
from lappdeploy.models.shuffle import ChannelShuffle, as_one_op
from lappdeploy.surgery import analyze

SHAPE = (3, 32, 32)


def test_the_module_is_torchvisions_shuffle_and_its_one_op_form_has_the_same_gradient():
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64, requires_grad=True)
    shuffle = ChannelShuffle(12, groups=2)
    assert torch.equal(shuffle(x), channel_shuffle(x, 2))
    with as_one_op():
        y = shuffle(x)
        assert y.grad_fn.next_functions[0][0] is x.grad_fn or y.grad_fn.next_functions[0][0].variable is x
        torch.autograd.gradcheck(lambda t: shuffle(t), (x,))
    assert torch.equal(y, channel_shuffle(x, 2))


def test_a_lappdeploy_shufflenet_loads_torchvisions_state_dict_and_computes_the_same():
    torch.manual_seed(0)
    ours = create_model("shufflenet_v2_x0_5", num_classes=10, in_channels=3).eval()
    reference = shufflenet_v2_x0_5(num_classes=10).eval()
    reference.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))
    assert sum(isinstance(m, ChannelShuffle) for m in ours.modules()) == 16


def test_channels_crossing_a_shuffle_are_kept_and_branch_channels_are_prunable():
    model = create_model("shufflenet_v2_x0_5", num_classes=10, in_channels=3)
    groups = analyze(model, torch.zeros((2, *SHAPE)))
    prunable = {g.id for g in groups.prunable}
    # the first 1x1 conv of every block's main branch (16 blocks), the stem and the last 1x1 conv
    assert {f"stage2.{i}.branch2.0" for i in range(4)} <= prunable and "conv1.0" in prunable
    assert len(prunable) == 18, sorted(prunable)
    crossing = [g for g in groups.groups if g.excluded and "channel shuffle" in g.excluded]
    assert crossing and all(not g.prunable for g in crossing)
    assert all(g.id.endswith(("branch2.5", "branch1.2")) or g.id.startswith("stage") for g in crossing)


@pytest.mark.parametrize("method", ["lapp", "uniform"])
def test_compress_and_export_a_shufflenet(cli, tmp_path, method):
    out = tmp_path / "run"
    args = [
        "compress", "--model", "shufflenet_v2_x0_5", "--method", method, "--dataset", "synthetic",
        "--synthetic-shape", "3x32x32", "--synthetic-samples", "64", "--synthetic-classes", "4", "--batch-size",
        "32", "--epochs", "2", "--prune-epochs", "1", "--target-macs", "0.6", "--device", "cpu", "--out", out,
    ]  # fmt: skip
    result = cli(*args)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert 0.597 <= report["macs_ratio"] <= 0.6, report["macs_ratio"]
    result = cli("export", out)
    assert result.code == 0, result.err
    onnx = json.loads((out / "export" / "export.json").read_text())["onnx"]
    assert max(row["relative_error"] for row in onnx["parity"]) <= 1e-3
    assert onnx["macs"] == onnx["torch_macs"] - onnx["zero_bias_adds_dropped"]
