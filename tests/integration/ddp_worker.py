"""Run by tests/integration/test_ddp.py (and test_compress.py, with the argument `lapp`) under torchrun:
trains (or compresses) with the library API and saves each rank's final weights (and LAPP thresholds and
plan), so the test can check that every rank ends identical."""

from __future__ import annotations

import sys

import torch

from lappdeploy.config import TrainConfig
from lappdeploy.methods import LappConfig
from lappdeploy.methods.compress import run_compress
from lappdeploy.models.portable import cpu_state_dict
from lappdeploy.train import Hook, init_distributed, run_training


class SaveRankWeights(Hook):
    def __init__(self, path_template: str) -> None:
        self.path_template = path_template

    def on_train_end(self, trainer, history) -> None:
        lapp = next((h for h in trainer.hooks if h.name == "LappController"), None)
        torch.save(
            {
                "state_dict": cpu_state_dict(trainer.module),
                "steps": trainer.state.step,
                "world": trainer.dist.world_size,
                "thresholds": lapp.thresholds.detach().cpu() if lapp is not None else None,
                "plan": lapp.plan.to_dict() if lapp is not None else None,
            },
            self.path_template.format(rank=trainer.dist.rank),
        )


def main() -> None:
    out = sys.argv[1]
    config = TrainConfig(
        model="tiny_resnet",
        dataset="synthetic",
        synthetic_shape=(3, 16, 16),
        synthetic_samples=512,
        synthetic_classes=4,
        batch_size=32,
        epochs=2,
        lr=0.05,
        device="cpu",
    )
    dist = init_distributed("cpu")
    hooks = [SaveRankWeights(out + "-rank{rank}.pt")]
    try:
        if sys.argv[2:] == ["lapp"]:
            compress = LappConfig(target_macs=0.5, prune_epochs=1, round_to=1, threshold_lr=0.05, log_every=1)
            run_compress(config, compress, out, hooks=hooks, dist=dist)
        else:
            run_training(config, out, hooks=hooks, dist=dist)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
