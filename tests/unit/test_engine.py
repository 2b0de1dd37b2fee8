from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lappdeploy.config import TrainConfig
from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.train import Hook, Trainer, TrainingDivergedError, evaluate, run_training

TINY = {
    "model": "tiny_resnet",
    "dataset": "synthetic",
    "synthetic_shape": (3, 16, 16),
    "synthetic_samples": 256,
    "synthetic_classes": 4,
    "batch_size": 32,
    "lr": 0.05,
    "seed": 1,
}


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.grads_seen = 0
        self.count = 0

    def on_train_start(self, trainer):
        self.events.append("train_start")

    def on_epoch_start(self, trainer, epoch):
        self.events.append(f"epoch_start:{epoch}")

    def after_backward(self, trainer):
        self.events.append("after_backward")
        self.grads_seen += all(p.grad is not None for p in trainer.module.parameters())

    def on_step_end(self, trainer, loss):
        self.events.append("step_end")
        self.count += 1

    def on_epoch_end(self, trainer, metrics):
        metrics["recorder_steps"] = self.count
        self.events.append("epoch_end")

    def on_checkpoint(self, trainer, path):
        self.events.append("checkpoint")

    def on_train_end(self, trainer, history):
        self.events.append("train_end")

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state, trainer):
        self.count = state["count"]


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_training_learns_the_synthetic_task(tmp_path):
    report = run_training(tiny(epochs=4, synthetic_samples=1024), tmp_path / "run")
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert report["top1"] > 0.5, "4 classes: chance is 0.25"
    assert report["steps"] == 4 * (1024 // 32)


def test_hooks_are_called_in_order_and_can_extend_metrics(tmp_path):
    recorder = Recorder()
    run_training(tiny(epochs=2), tmp_path / "run", hooks=[recorder])
    steps = 256 // 32
    epoch = ["after_backward", "step_end"] * steps
    expected = ["train_start"]
    for e in range(2):
        expected += [f"epoch_start:{e}", *epoch, "epoch_end", "checkpoint"]
    assert recorder.events == [*expected, "train_end"]
    assert recorder.grads_seen == 2 * steps
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["recorder_steps"] for line in lines] == [steps, 2 * steps]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["hooks"]["Recorder"] == {"count": 2 * steps}


class _StopAfterFirstCheckpoint(Hook):
    def on_checkpoint(self, trainer, path):
        raise KeyboardInterrupt  # what a Ctrl-C (or a kill) after epoch 1 leaves behind


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    config = tiny(epochs=3)
    run_training(config, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tmp_path / "resumed", hooks=[Recorder(), _StopAfterFirstCheckpoint()])
    assert not (tmp_path / "resumed" / "report.json").exists()
    recorder = Recorder()
    report = run_training(config, tmp_path / "resumed", resume=True, hooks=[recorder])
    assert report["resumed_from_epoch"] == 1
    assert recorder.count == 3 * (256 // 32), "hook state restored from the checkpoint"
    straight, resumed = _weights(tmp_path / "straight" / "model.pt"), _weights(tmp_path / "resumed" / "model.pt")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_resume_refuses_a_changed_configuration(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny(epochs=2), tmp_path / "run", hooks=[_StopAfterFirstCheckpoint()])
    with pytest.raises(LappDeployError, match=r"--lr 0.01 \(saved: 0.05\) differ from it; drop --lr"):
        run_training(tiny(epochs=2, lr=0.01), tmp_path / "run", resume=True)


class _Poison(Hook):
    def after_backward(self, trainer):
        if trainer.state.step == 2:
            with torch.no_grad():
                next(trainer.module.parameters()).fill_(float("nan"))


def test_divergence_is_reported(tmp_path):
    with pytest.raises(TrainingDivergedError, match="lower --lr"):
        run_training(tiny(epochs=1), tmp_path / "run", hooks=[_Poison()])


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path):
    report = run_training(tiny(epochs=1, amp=True, channels_last=True), tmp_path / "run")
    assert report["amp"] == "bf16" and report["channels_last"] is True
    assert report["val_loss"] == pytest.approx(report["val_loss"])  # finite
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        run_training(tiny(epochs=1, amp=True, amp_dtype="fp16", device="cpu"), tmp_path / "run16")
    assert not (tmp_path / "run16").exists()


def test_trainer_accepts_a_plain_dataloader():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    trainer = Trainer(model, loader, loader, config=TrainConfig(epochs=2, lr=0.01))
    history = trainer.fit()
    assert len(history) == 2 and history[-1]["step"] == 8
    assert history[0]["train_samples"] == 64


class _FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x.view(-1).long()]


def test_evaluate_top1_top5_and_loss():
    logits = torch.tensor(
        [
            [9.0, 8, 7, 6, 5, 4],  # label 0: top1 hit
            [9.0, 8, 7, 6, 5, 4],  # label 4: top5 hit only
            [9.0, 8, 7, 6, 5, 4],  # label 5: miss
            [0.0, 0, 0, 0, 0, 9],  # label 5: top1 hit
        ]
    )
    labels = torch.tensor([0, 4, 5, 5])
    batches = [(torch.tensor([0.0, 1]), labels[:2]), (torch.tensor([2.0, 3]), labels[2:])]
    metrics = evaluate(_FixedLogits(logits), batches, device=torch.device("cpu"))
    assert metrics["top1"] == 0.5 and metrics["top5"] == 0.75 and metrics["samples"] == 4
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
