"""Run by tests/integration/test_ddp.py under torchrun: trains with the library API and saves each
rank's final weights, so the test can check that every rank ends identical."""

from __future__ import annotations

import sys

import torch

from lappdeploy.config import TrainConfig
from lappdeploy.models.portable import cpu_state_dict
from lappdeploy.train import Hook, init_distributed, run_training


class SaveRankWeights(Hook):
    def __init__(self, path_template: str) -> None:
        self.path_template = path_template

    def on_train_end(self, trainer, history) -> None:
        torch.save(
            {
                "state_dict": cpu_state_dict(trainer.module),
                "steps": trainer.state.step,
                "world": trainer.dist.world_size,
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
    try:
        run_training(config, out, hooks=[SaveRankWeights(out + "-rank{rank}.pt")], dist=dist)
    finally:
        dist.shutdown()


if __name__ == "__main__":
    main()
