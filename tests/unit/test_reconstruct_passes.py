"""The pruned network's calibration passes resumed from cached activations (methods/reconstruct/passes.py): the
refit is bit for bit the one computed with every pass from the input, the network's first layers run once per
batch instead of once per refitted layer, a value cached at the cut that a later node writes in place is copied
for each pass, the cache stays within its limit, and a network fx cannot trace runs from the input. torch,
torch.fx and torch-pruning are real."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lappdeploy.methods.common import frozen_copy, recalibrate_bn_
from lappdeploy.methods.reconstruct import ReconstructionSettings, reconstruct_
from lappdeploy.methods.reconstruct.passes import StudentPasses
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, remove_channels_, uniform_plan


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _refit(model: nn.Module, mode: str, cache_bytes: int, images: torch.Tensor):
    """(the refitted model, its record, how often its stem conv ran during the reconstruction); NAME+relu: the fit
    after the ReLU."""
    recalibrate_bn_(model, images.split(16))
    model.eval()
    groups = analyze(model, images[:1])
    plan = uniform_plan(groups, 0.5)
    teacher = frozen_copy(model)
    remove_channels_(model, plan, images[:1], groups=groups)
    calls = []
    handle = model.conv1.register_forward_pre_hook(lambda *_: calls.append(1))
    settings = ReconstructionSettings(
        mode=mode.removesuffix("+relu"), relu=mode.endswith("+relu"), batch_size=16, cache_bytes=cache_bytes
    )
    record = reconstruct_(teacher, model, groups, plan, images, settings)
    handle.remove()
    return model, record, len(calls)


@pytest.mark.parametrize("mode", ["ls", "ls+relu", "ldrf", "ldrf-patch", "ldrf-joint", "ls-joint"])
def test_resumed_passes_refit_bit_for_bit_like_passes_from_the_input(mode):
    images = _images(48, 0)
    torch.manual_seed(0)
    dense = create_model("resnet20", num_classes=10, in_channels=1)
    from_input, plain, stem_from_input = _refit(_copy(dense), mode, 0, images)
    resumed, record, stem_resumed = _refit(_copy(dense), mode, 2**30, images)
    assert record.resumed_passes and len(record.fitted) >= 6
    assert not mode.endswith("-joint") or any(layer.get("producer") for layer in record.fitted), "the joint fit ran"
    for name, tensor in from_input.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    batches = len(images) // 16
    # passes from the input run the stem for every refitted layer; resumed ones once per batch to reach the first
    # cut, plus the trace's check on one batch (twice: the trace and the network)
    assert stem_from_input >= batches * len(plain.fitted)
    assert stem_resumed <= batches + 2


def _copy(model: nn.Module) -> nn.Module:
    clone = create_model("resnet20", num_classes=10, in_channels=1)
    clone.load_state_dict(model.state_dict())
    return clone


class InPlaceNet(nn.Module):
    """conv2 reads h, then h is written in place: at a cut before conv2, the cached h would be written by every
    pass. `through_view`: the write goes through a view of h (a slice), not h itself."""

    def __init__(self, through_view: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)
        self.through_view = through_view

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        y = self.conv2(h)
        if self.through_view:
            h[:, :2].mul_(3.0)
        else:
            h.add_(y)  # a method: fx keeps it in place (it traces `h += ...` as an out-of-place add)
        return self.conv3(h + y)


def _inputs_of(module: nn.Module, run) -> list[torch.Tensor]:
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    run()
    handle.remove()
    return seen


@pytest.mark.parametrize("through_view", [False, True])
def test_a_cached_value_written_in_place_downstream_is_copied_for_each_pass(through_view):
    torch.manual_seed(0)
    net, images = InPlaceNet(through_view).eval(), _images(8, 1)
    passes = StudentPasses(net, images, 4, cache_limit=2**30)
    passes.advance(["conv2", "conv3"])
    assert passes.cut > 0
    with torch.no_grad():
        eager = _inputs_of(net.conv3, lambda: [net(b) for b in images.split(4)])
    for _ in range(2):  # without the copy, the second pass adds conv2's output to h twice
        resumed = _inputs_of(net.conv3, lambda: passes.run(lambda _index: None))
        assert all(torch.equal(a, b) for a, b in zip(eager, resumed, strict=True))


def test_the_cache_stays_within_its_limit_else_passes_run_from_the_input():
    torch.manual_seed(0)
    net, images = InPlaceNet().eval(), _images(8, 1)
    one_cut = 8 * 4 * 16 * 16 * 4  # h for every image: 4 channels of 16 x 16 float32
    refused = StudentPasses(net, images, 4, cache_limit=one_cut - 1)
    refused.advance(["conv2"])
    assert refused.cut == 0 and refused.cache == []
    kept = StudentPasses(net, images, 4, cache_limit=one_cut)
    kept.advance(["conv2"])
    cached = sum(v.numel() * v.element_size() for batch in kept.cache for v in batch.values())
    assert kept.cut > 0 and cached <= one_cut


class Branching(nn.Module):
    """Control flow on a tensor's value: fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        if x.mean() > -1:  # always true; decided on a value, which a symbolic trace cannot do
            x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def test_a_network_that_does_not_trace_runs_every_pass_from_the_input():
    torch.manual_seed(0)
    images = _images(32, 2)
    results = []
    for cache_bytes in (0, 2**30):
        torch.manual_seed(0)
        model, record, _ = _refit(Branching(), "ls", cache_bytes, images)
        results.append(model.state_dict())
        assert not record.resumed_passes and record.fitted
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


class PaddedConv(nn.Conv2d):
    """A conv subclass defined outside torch.nn (like timm's Conv2dSame)."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))


class CustomLinear(nn.Linear):
    """A Linear subclass defined outside torch.nn: refitted like any Linear, but fx would trace through it and the
    hook the fit puts on it would never fire; the passes keep it one call."""

    def forward(self, x):
        return super().forward(x)


class CustomLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = PaddedConv(1, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = CustomLinear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("mode", ["ls", "ldrf-joint"])
def test_layer_subclasses_outside_torch_nn_are_refitted_through_resumed_passes(mode):
    images = _images(32, 3)
    results, records = [], []
    for cache_bytes in (0, 2**30):
        torch.manual_seed(0)
        model, record, _ = _refit(CustomLayers(), mode, cache_bytes, images)
        results.append(model.state_dict())
        records.append(record)
    assert records[1].resumed_passes and not records[0].resumed_passes
    assert {layer["name"] for layer in records[1].fitted} == {"conv2", "conv3", "head"}
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
