"""A training process killed (SIGKILL) after its first epoch checkpoint, then resumed with --resume,
ends with exactly the weights of an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import json
import signal
import time

import torch

FLAGS = [
    "--model",
    "tiny_resnet",
    "--dataset",
    "synthetic",
    "--synthetic-shape",
    "3x16x16",
    "--synthetic-samples",
    "2048",
    "--synthetic-classes",
    "4",
    "--batch-size",
    "16",
    "--epochs",
    "4",
    "--lr",
    "0.05",
    "--seed",
    "7",
]


def test_sigkill_after_first_checkpoint_then_resume(tmp_path, cli_process):
    killed = tmp_path / "killed"
    process = cli_process("train", *FLAGS, "--out", str(killed))
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "report.json").exists(), "the run must have been killed before finishing"
    completed_before_kill = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= completed_before_kill < 4

    resumed = cli_process("train", "--out", str(killed), "--resume")
    straight = cli_process("train", *FLAGS, "--out", str(tmp_path / "straight"))
    for p in (resumed, straight):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err

    a = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    report = json.loads((killed / "report.json").read_text())
    assert report["resumed_from_epoch"] == completed_before_kill
    epochs = [json.loads(line)["epoch"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
