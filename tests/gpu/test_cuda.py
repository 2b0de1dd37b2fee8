"""CUDA paths of the training engine. Skipped cleanly where no GPU is visible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lappdeploy.config import TrainConfig
from lappdeploy.data.transforms import BatchTransform
from lappdeploy.train import run_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY = {
    "model": "tiny_resnet",
    "dataset": "synthetic",
    "synthetic_shape": (3, 16, 16),
    "synthetic_samples": 512,
    "synthetic_classes": 4,
    "batch_size": 64,
    "epochs": 2,
    "device": "cuda",
}


@pytest.mark.parametrize(
    "options",
    [{}, {"amp": True, "amp_dtype": "fp16"}, {"amp": True, "amp_dtype": "bf16", "channels_last": True}],
    ids=["fp32", "amp-fp16", "amp-bf16-channels-last"],
)
def test_training_on_cuda(tmp_path, options):
    report = run_training(TrainConfig(**TINY, **options), tmp_path / "run")
    assert report["device"].startswith("cuda")
    assert report["top1"] > 0.4, report  # 4 classes: chance 0.25
    assert report["val_loss"] == report["val_loss"]  # not NaN


def test_batch_transform_runs_on_the_gpu():
    images = torch.randint(0, 255, (8, 1, 28, 28), dtype=torch.uint8, device="cuda")
    transform = BatchTransform(mean=(0.5,), std=(0.5,), native_size=28, size=32, crop_padding=2, hflip=True)
    out = transform(images, torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda" and out.shape == (8, 1, 32, 32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for NCCL")
def test_ddp_nccl_two_gpus(tmp_path):
    worker = Path(__file__).parents[1] / "integration" / "ddp_worker.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(tmp_path / "run"),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
