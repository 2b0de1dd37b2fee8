from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from lappdeploy import load_model
from lappdeploy.config import TrainConfig

TINY_FLAGS = [
    "--model",
    "tiny_resnet",
    "--dataset",
    "synthetic",
    "--synthetic-shape",
    "3x16x16",
    "--synthetic-samples",
    "128",
    "--synthetic-classes",
    "4",
    "--batch-size",
    "32",
]


def test_train_writes_the_run_directory_contract(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *TINY_FLAGS, "--epochs", "2", "--out", out)
    assert result.code == 0, result.err
    assert {p.name for p in out.iterdir()} == {
        "config.yaml",
        "metrics.jsonl",
        "checkpoint.pt",
        "model.pt",
        "report.json",
    }
    report = json.loads((out / "report.json").read_text())
    for key in ("model", "dataset", "top1", "top5", "macs", "params", "epochs", "wall_s"):
        assert key in report, key
    assert report["model"] == "tiny_resnet" and report["epochs"] == 2 and report["macs"] > 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    saved = TrainConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text())["train"])
    assert saved.model == "tiny_resnet" and saved.synthetic_shape == (3, 16, 16) and saved.epochs == 2
    loaded = load_model(out)  # the run directory's model.pt, read with weights_only=True
    assert loaded.card.input_shape == (3, 16, 16)
    assert loaded.model(torch.zeros(1, 3, 16, 16)).shape == (1, 4)
    assert "epoch 2/2" in result.out and "top-1" in result.out and str(out) in result.out


def test_yaml_config_supplies_defaults_and_flags_win(cli, tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 1\nlr: 0.05\nbatch-size: 16\nlabel_smoothing: 0.1\n")
    out = tmp_path / "run"
    result = cli("train", "--config", config, *TINY_FLAGS, "--lr", "0.02", "--out", out)
    assert result.code == 0, result.err
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["epochs"] == 1 and saved["label_smoothing"] == 0.1
    assert saved["lr"] == 0.02, "a command-line flag overrides the YAML file"
    assert saved["batch_size"] == 32, "TINY_FLAGS passes --batch-size 32 on the command line"


def _bad_inputs(tmp_path):
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "config.yaml").write_text("train:\n  model: resnet20\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "malformed.yaml").write_text("lr: [0.1\n")
    (tmp_path / "unknown_key.yaml").write_text("learning_rate: 0.1\n")
    (tmp_path / "negative.yaml").write_text("epochs: -1\n")
    return {
        "unknown model": (["--model", "resnet21"], "unknown model 'resnet21'; did you mean"),
        "unknown dataset": (["--dataset", "mnist"], "unknown dataset 'mnist'; did you mean fashion-mnist"),
        "missing data dir": (["--data-dir", tmp_path / "nowhere"], "does not exist"),
        "zero epochs": (["--epochs", "0"], "epochs must be >= 1 (got 0)"),
        "negative epochs in YAML": (["--config", tmp_path / "negative.yaml"], "epochs must be >= 1 (got -1)"),
        "malformed YAML": (["--config", tmp_path / "malformed.yaml"], "not valid YAML at line 2"),
        "unknown YAML key": (["--config", tmp_path / "unknown_key.yaml"], "unknown option 'learning_rate'"),
        "missing YAML": (["--config", tmp_path / "nope.yaml"], "cannot read config"),
        "existing out": (["--out", tmp_path / "existing"], "already exists; pass --force"),
        "unwritable out": (["--out", tmp_path / "a_file" / "run"], "is not a writable directory"),
        "not an integer": (["--epochs", "two"], "'two' is not a valid integer"),
        "unknown flag": (["--epoch", "2"], "No such option '--epoch'"),
        "fp16 on cpu": (["--amp", "--amp-dtype", "fp16", "--device", "cpu"], "fp16 needs CUDA"),
        "resume missing": (["--resume", "--out", tmp_path / "nowhere"], "does not exist"),
        "resume with flags": (["--resume", "--lr", "0.5", "--out", tmp_path / "existing"], "drop --lr"),
    }


BAD_CASES = [
    "unknown model",
    "unknown dataset",
    "missing data dir",
    "zero epochs",
    "negative epochs in YAML",
    "malformed YAML",
    "unknown YAML key",
    "missing YAML",
    "existing out",
    "unwritable out",
    "not an integer",
    "unknown flag",
    "fp16 on cpu",
    "resume missing",
    "resume with flags",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    if "--resume" not in args:
        args = ["--model", "tiny_resnet", "--dataset", "synthetic", *args]  # later flags win
    if "--out" not in args:
        args = [*args, "--out", tmp_path / "new-run"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = cli("train", *args)
    assert result.code == 2, (case, result)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.err
    assert message in lines[0]
    assert "Traceback" not in result.err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "nothing may be written"


def test_missing_fashion_mnist_names_places_and_fix(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("lappdeploy.data.fashion_mnist.SYSTEM_DIR", str(tmp_path / "not-installed"))
    empty = tmp_path / "data"
    empty.mkdir()
    result = cli("train", "--dataset", "fashion-mnist", "--data-dir", empty, "--out", tmp_path / "run")
    assert result.code == 2
    assert "Fashion-MNIST not found; searched" in result.err and "apt-get install dataset-fashion-mnist" in result.err
    assert not (tmp_path / "run").exists()


def test_force_overwrites_a_run_but_never_a_foreign_directory(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", *TINY_FLAGS, "--epochs", "1", "--out", out).code == 0
    (out / "stale.txt").write_text("old")
    assert cli("train", *TINY_FLAGS, "--epochs", "1", "--out", out, "--force").code == 0
    assert not (out / "stale.txt").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    result = cli("train", *TINY_FLAGS, "--epochs", "1", "--out", foreign, "--force")
    assert result.code == 2 and "refusing to delete it" in result.err
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_resume_of_a_complete_run_is_refused(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", *TINY_FLAGS, "--epochs", "1", "--out", out).code == 0
    result = cli("train", "--resume", "--out", out)
    assert result.code == 2 and "already complete" in result.err


def test_debug_shows_the_traceback(tmp_path):
    cmd = [sys.executable, "-m", "lappdeploy", "--debug", "train", "--model", "resnet21", "--out", str(tmp_path / "r")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr and "UnknownNameError" in result.stderr


def test_inspect_run_directory_and_training_checkpoint(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", *TINY_FLAGS, "--epochs", "1", "--out", out).code == 0
    result = cli("inspect", out)
    assert result.code == 0, result.err
    assert "tiny_resnet" in result.out and "MACs / image" in result.out and "top-1 / top-5" in result.out
    as_json = json.loads(cli("inspect", out / "checkpoint.pt", "--json").out)
    assert as_json["architecture"] == "tiny_resnet" and as_json["input_shape"] == [3, 16, 16]
    report = json.loads((out / "report.json").read_text())
    assert as_json["macs"] == report["macs"]


def test_inspect_bad_targets(cli, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not torch")
    for target, message in (
        (garbage, "not a lappdeploy checkpoint"),
        (tmp_path, "neither model.pt nor checkpoint.pt"),
        ("resnet2", "did you mean"),
        ("runs/missing", "does not exist"),
    ):
        result = cli("inspect", target)
        assert result.code == 2 and message in result.err, (target, result.err)
    result = cli("inspect", "vgg16", "--input-shape", "3x16x16")
    assert result.code == 2 and "at least 32x32" in result.err


def test_list_and_version(cli):
    models = cli("list", "models", "--family", "cifar")
    assert (
        models.code == 0
        and "resnet56" in models.out
        and "vgg16_bn_cifar" in models.out
        and "resnet18 " not in models.out
    )
    datasets = cli("list", "datasets")
    assert "fashion-mnist" in datasets.out and "imagefolder" in datasets.out
    import lappdeploy

    assert lappdeploy.__version__ in cli("--version").out
