"""`lappdeploy compress` end to end on synthetic data: budget, layer-adaptive widths, portable deploy
model, kill-and-resume, DDP, inspect's chart, and one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lappdeploy.config import TrainConfig
from lappdeploy.io import read_json
from lappdeploy.methods import LappConfig
from lappdeploy.methods.compress import run_compress
from lappdeploy.testing import same_threads_env
from lappdeploy.train import Hook

ENV = {**same_threads_env(1), "PYTHONUNBUFFERED": "1"}
SYNTHETIC = {
    "dataset": "synthetic",
    "synthetic_shape": (3, 32, 32),
    "synthetic_samples": 256,
    "synthetic_classes": 4,
    "batch_size": 32,
    "lr": 0.05,
    "device": "cpu",
    "seed": 3,
}


class KeepFinalModel(Hook):
    def on_train_end(self, trainer, history) -> None:
        self.module = trainer.module  # compress folds this very module, then saves it


@pytest.fixture(scope="module")
def resnet20_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "r20"
    keep = KeepFinalModel()
    report = run_compress(
        TrainConfig(model="resnet20", epochs=2, **SYNTHETIC),
        LappConfig(target_macs=0.5, prune_epochs=1, bypass="rep", log_every=2),
        out,
        hooks=[keep],
    )
    return out, report, keep.module


def test_resnet20_two_epochs_meets_the_budget_with_adaptive_widths(resnet20_run):
    out, report, _ = resnet20_run
    assert report["macs_ratio"] <= 0.5, "--target-macs is a ceiling"
    assert report["macs_ratio"] == report["deploy_macs"] / report["dense_deploy_macs"]
    assert report["macs"] < report["dense_macs"] and report["params"] < report["dense_params"]
    ratios = [layer["kept"] / layer["total"] for layer in report["layers"]]
    assert len(set(ratios)) > 1, "keep ratios are not all equal"
    assert all(layer["kept"] % 8 == 0 for layer in report["layers"]), "--round-to 8 by default"
    assert all(layer["threshold"] is not None for layer in report["layers"])
    plan = read_json(out / "plan.json")
    assert plan["info"]["method"] == "lapp" and plan["info"]["macs"] == report["deploy_macs"]
    saved = read_json(out / "report.json")
    assert saved["method"] == "lapp" and saved["target_macs"] == 0.5 and saved["layers"] == report["layers"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lapp_steps = [s for s in steps if s.get("type") == "lapp"]
    assert lapp_steps and all({"budget", "macs", "penalty", "thresholds"} <= s.keys() for s in lapp_steps)
    assert [s["epoch"] for s in steps if "type" not in s] == [1, 2]
    config = (out / "config.yaml").read_text()
    assert "target_macs: 0.5" in config and "model: resnet20" in config


def test_saved_deploy_model_loads_in_a_fresh_process_with_the_same_logits(resnet20_run, tmp_path):
    out, _, final = resnet20_run
    from lappdeploy.surgery import has_bypass

    assert not has_bypass(final), "model.pt is the deploy model: bypass folded"
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    final.eval()
    with torch.no_grad():
        expected = final(x)
    torch.save({"x": x, "logits": expected}, tmp_path / "expected.pt")
    code = (
        "import sys, torch; from lappdeploy import load_model;"
        "e = torch.load(sys.argv[2], weights_only=True); m = load_model(sys.argv[1]).model;"
        "sys.exit(0 if torch.equal(m(e['x']), e['logits']) else 1)"
    )
    # the saved model's logits equal the run's final model's, bit for bit, in another process
    result = subprocess.run(
        [sys.executable, "-c", code, str(out / "model.pt"), str(tmp_path / "expected.pt")],
        env={**same_threads_env(), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_inspect_shows_keep_ratios_and_writes_the_chart(resnet20_run, cli, tmp_path):
    out, report, _ = resnet20_run
    chart = tmp_path / "chart.png"
    result = cli("inspect", out, "--plot", chart)
    assert result.code == 0, result.err
    assert "kept channels per group" in result.out
    assert report["layers"][0]["name"] in result.out
    assert chart.stat().st_size > 5000 and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


COMPRESS_FLAGS = [
    "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples",
    "1024", "--synthetic-classes", "4", "--batch-size", "16", "--lr", "0.05", "--seed", "5", "--device", "cpu",
    "--epochs", "3", "--prune-epochs", "2", "--target-macs", "0.5", "--round-to", "4", "--bypass", "rep",
]  # fmt: skip


def test_killed_mid_pruning_phase_then_resumed_reaches_the_same_plan(tmp_path, cli_process):
    killed = tmp_path / "killed"
    process = cli_process("compress", *COMPRESS_FLAGS, "--out", str(killed))
    straight = cli_process("compress", *COMPRESS_FLAGS, "--out", str(tmp_path / "straight"))
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1, "killed inside the two-epoch pruning phase"
    assert state["hooks"]["LappController"]["plan"] is None

    resumed = cli_process("compress", *COMPRESS_FLAGS, "--out", str(killed), "--resume")  # the same command
    for p in (resumed, straight):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert read_json(killed / "plan.json") == read_json(tmp_path / "straight" / "plan.json")
    a = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_json(killed / "report.json")["resumed_from_epoch"] == 1


def test_bad_input_gives_one_line_errors(cli, tmp_path):
    base = ["compress", "--model", "tiny_convnet", "--dataset", "synthetic", "--device", "cpu"]
    cases = [
        (["--target-macs", "0", "--out", tmp_path / "a"], "target_macs must be in (0.0, 1.0]"),
        (["--epochs", "2", "--prune-epochs", "3", "--out", tmp_path / "b"], "prune_epochs (3) must be <= epochs"),
        (["--method", "lap", "--out", tmp_path / "c"], "unknown method 'lap'"),
        (["--target-macs", "0.01", "--round-to", "8", "--out", tmp_path / "d"], "is unreachable"),
    ]
    for args, message in cases:
        result = cli(*base, *args)
        assert result.code == 2, result.err
        assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert "Traceback" not in result.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    # the unreachable target is found after the data is located: the run directory holds no model
    assert not (tmp_path / "d" / "model.pt").exists()


def test_resume_with_the_wrong_command_is_refused(resnet20_run, cli, tmp_path):
    out, _, _ = resnet20_run
    run = tmp_path / "partial"
    run.mkdir()
    (run / "config.yaml").write_text((out / "config.yaml").read_text())
    result = cli("train", "--out", run, "--resume")
    assert result.code == 2 and "is a compress run" in result.err


DDP_WORKER = Path(__file__).with_name("ddp_worker.py")


def test_lapp_under_ddp_keeps_ranks_identical(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*cmd, str(DDP_WORKER), str(out), "lapp"], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(f"{out}-rank0.pt", weights_only=True)
    rank1 = torch.load(f"{out}-rank1.pt", weights_only=True)
    assert rank0["plan"] == rank1["plan"] and rank0["plan"] is not None
    assert torch.equal(rank0["thresholds"], rank1["thresholds"])
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key
    report = read_json(out / "report.json")
    assert report["world_size"] == 2 and report["macs_ratio"] <= 0.5


def test_compress_with_the_width_bypass_then_export(cli, tmp_path):
    """`--bypass width` end to end: the report's deploy MACs are within the budget and are what the exported
    ONNX graph counts; the 1x1 bypass is in the deployed graph (every output channel computed)."""
    out = tmp_path / "run"
    args = [
        "compress", "--model", "resnet20", "--dataset", "synthetic", "--synthetic-shape", "3x32x32",
        "--synthetic-samples", "64", "--synthetic-classes", "4", "--batch-size", "32", "--epochs", "2",
        "--prune-epochs", "1", "--target-macs", "0.5", "--bypass", "width", "--device", "cpu", "--out", out,
    ]  # fmt: skip
    result = cli(*args)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["bypass"] == "width" and 0.4975 <= report["macs_ratio"] <= 0.5, report["macs_ratio"]
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["groups"]) == 19 and all(gid.endswith(".conv") for gid in plan["groups"])
    result = cli("export", out)
    assert result.code == 0, result.err
    onnx = json.loads((out / "export" / "export.json").read_text())["onnx"]
    assert max(row["relative_error"] for row in onnx["parity"]) <= 1e-4
    assert onnx["torch_macs"] == report["deploy_macs"]
