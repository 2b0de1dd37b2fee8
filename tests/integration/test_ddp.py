"""Two-process DistributedDataParallel on CPU (gloo) through torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from lappdeploy.testing import same_threads_env

WORKER = Path(__file__).with_name("ddp_worker.py")
ENV = same_threads_env(1)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_two_ranks_end_with_identical_weights(tmp_path):
    out = tmp_path / "run"
    result = _torchrun(str(WORKER), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(f"{out}-rank0.pt", weights_only=True)
    rank1 = torch.load(f"{out}-rank1.pt", weights_only=True)
    assert rank0["world"] == rank1["world"] == 2
    # 512 images split over 2 ranks: 256 each, batch 32 -> 8 steps per epoch, 2 epochs
    assert rank0["steps"] == rank1["steps"] == 16
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key  # parameters and BN statistics
    saved = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in rank0["state_dict"].items()), "rank 0 wrote the final model"
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 16
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2, "only rank 0 logs"


def test_the_cli_runs_under_torchrun(tmp_path):
    out = tmp_path / "cli-run"
    result = _torchrun(
        "-m",
        "lappdeploy",
        "train",
        "--model",
        "tiny_convnet",
        "--dataset",
        "synthetic",
        "--synthetic-shape",
        "3x8x8",
        "--synthetic-samples",
        "128",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 4  # 64 images per rank / 16
    assert result.stdout.count("epoch 1/1") == 1, "progress is printed by rank 0 only"
