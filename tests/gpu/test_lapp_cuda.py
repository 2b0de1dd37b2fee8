"""LAPP on CUDA: thresholds, masks and their optimizer live on the GPU, fp16 AMP (gradient scaling)
works, and the budget is met; a resume on the GPU restores Adam state on the right device. Skipped
cleanly where no GPU is visible."""

from __future__ import annotations

import pytest
import torch

from lappdeploy.config import TrainConfig
from lappdeploy.io import read_json
from lappdeploy.methods import LappConfig
from lappdeploy.methods.compress import run_compress
from lappdeploy.train import Hook

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY = {
    "model": "resnet20",
    "dataset": "synthetic",
    "synthetic_shape": (3, 32, 32),
    "synthetic_samples": 1024,
    "synthetic_classes": 4,
    "batch_size": 64,
    "epochs": 3,
    "device": "cuda",
}


class ThresholdDevice(Hook):
    def after_backward(self, trainer) -> None:
        lapp = trainer.hooks[0]
        if not lapp.frozen:
            self.device = lapp.thresholds.device


@pytest.mark.parametrize(
    "options", [{}, {"amp": True, "amp_dtype": "fp16"}, {"amp": True, "channels_last": True}], ids=str
)
def test_compress_on_cuda(tmp_path, options):
    probe = ThresholdDevice()
    compress = LappConfig(target_macs=0.5, prune_epochs=2, bypass="rep", threshold_lr=0.05)
    report = run_compress(TrainConfig(**TINY, **options), compress, tmp_path / "run", hooks=[probe])
    assert probe.device.type == "cuda"
    assert report["macs_ratio"] <= 0.5, "--target-macs is a ceiling"
    assert read_json(tmp_path / "run" / "plan.json")["info"]["method"] == "lapp"


class StopAfterFirstEpoch(Hook):
    def on_checkpoint(self, trainer, path) -> None:
        raise KeyboardInterrupt  # as if the process were stopped right after the epoch-1 checkpoint


def test_resume_on_cuda_matches_an_uninterrupted_run(tmp_path):
    compress = LappConfig(target_macs=0.5, prune_epochs=2, threshold_lr=0.05)
    config = TrainConfig(**TINY, deterministic=True)
    run_compress(config, compress, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_compress(config, compress, tmp_path / "cut", hooks=[StopAfterFirstEpoch()])
    run_compress(config, compress, tmp_path / "cut", resume=True)  # Adam state must land on the GPU
    assert read_json(tmp_path / "cut" / "plan.json") == read_json(tmp_path / "straight" / "plan.json")
