"""Reconstruction after channel removal with the network on a CUDA GPU: every mode refits (the joint modes pair
their producers) and lands where the same refit on the CPU lands. Skipped cleanly where no GPU is visible."""

from __future__ import annotations

import copy

import pytest
import torch

from lappdeploy.methods.common import frozen_copy, recalibrate_bn_
from lappdeploy.methods.reconstruct import ReconstructionSettings, reconstruct_
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, remove_channels_, uniform_plan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _refit(dense: torch.nn.Module, mode: str, device: str, images: torch.Tensor) -> tuple[torch.nn.Module, list]:
    """ResNet-20 with half its MACs removed, refitted by `mode` on `device` (float64: the CPU and the GPU compute
    the same sums, in a different order)."""
    model = copy.deepcopy(dense).to(device)
    images = images.to(device)
    groups = analyze(model, images[:2])
    plan = uniform_plan(groups, 0.5)
    teacher = frozen_copy(model)
    remove_channels_(model, plan, images[:2], groups=groups)
    record = reconstruct_(teacher, model, groups, plan, images, ReconstructionSettings(mode=mode, batch_size=16))
    return model.cpu(), record.fitted


@pytest.mark.parametrize("mode", ["ls", "ldrf", "ldrf-patch", "ldrf-joint", "ls-joint"])
def test_a_refit_on_the_gpu_lands_where_the_cpu_refit_lands(mode):
    images = torch.randn(48, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dense = create_model("resnet20", num_classes=10, in_channels=1).double()
    recalibrate_bn_(dense, images.split(16))
    dense.eval()
    on_gpu, fitted = _refit(dense, mode, "cuda", images)
    on_cpu, _ = _refit(dense, mode, "cpu", images)
    assert len(fitted) >= 6 and (not mode.endswith("-joint") or any(layer.get("producer") for layer in fitted))
    for name, tensor in on_cpu.state_dict().items():
        assert torch.allclose(on_gpu.state_dict()[name], tensor, rtol=1e-6, atol=1e-9), name
