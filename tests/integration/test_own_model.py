"""The user's own model end to end: every weight format `--init-from` reads and every kind of `--model` spec,
through the real CLI, with small models each test makes (no downloads: named weights come from caches the
tests fill in the layout torch-hub and Hugging Face use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lappdeploy import load_model
from lappdeploy.models import create_model

DATA = ["--dataset", "synthetic", "--synthetic-shape", "1x16x16", "--synthetic-samples", "128", "--batch-size", "32"]
USER_MODULE = '''
import torch
from torch import nn

def build(width=8):
    """A user's network: 3 input channels and 1000 classes, whatever the dataset."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1000),
    )

def not_a_model():
    return "a string"
'''


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A working directory holding the user's module `mynets` (imported from there, as from a project)."""
    (tmp_path / "mynets.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mynets", None)


def _tiny_resnet_state(in_channels: int = 1, classes: int = 10, seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("tiny_resnet", num_classes=classes, in_channels=in_channels).state_dict()


def _weights_in(run: Path) -> dict[str, torch.Tensor]:
    return load_model(run).model.state_dict()


def _evaluate_from(cli, source, out: Path, *extra) -> object:
    """`train --epochs 0 --init-from SOURCE`: builds tiny_resnet for the dataset and loads SOURCE into it."""
    return cli("train", "--model", "tiny_resnet", *DATA, "--epochs", "0", "--init-from", source, "--out", out, *extra)


def _same_weights(loaded: dict, expected: dict, *, skip=()) -> bool:
    return all(torch.equal(loaded[k], v) for k, v in expected.items() if k not in skip and "num_batches" not in k)


def test_plain_state_dict_loads_exactly(cli, tmp_path):
    state = _tiny_resnet_state()
    torch.save(state, tmp_path / "weights.pth")
    result = _evaluate_from(cli, tmp_path / "weights.pth", tmp_path / "run")
    assert result.code == 0, result.err
    assert _same_weights(_weights_in(tmp_path / "run"), state)
    init = json.loads((tmp_path / "run" / "report.json").read_text())["init_from"]
    assert init["format"] == "state dict" and init["classifier_replaced"] is None


def test_safetensors_loads_exactly(cli, tmp_path):
    from safetensors.torch import save_file

    state = _tiny_resnet_state()
    save_file(state, tmp_path / "weights.safetensors")
    result = _evaluate_from(cli, tmp_path / "weights.safetensors", tmp_path / "run")
    assert result.code == 0, result.err
    assert _same_weights(_weights_in(tmp_path / "run"), state)


@pytest.mark.parametrize(
    ("key", "prefix"), [("state_dict", "module."), ("model", "_orig_mod."), ("model_state_dict", "module._orig_mod.")]
)
def test_checkpoint_dicts_and_wrapper_prefixes(cli, tmp_path, key, prefix):
    state = _tiny_resnet_state()
    torch.save(
        {"epoch": 7, "optimizer": {"lr": 0.1}, key: {prefix + k: v for k, v in state.items()}}, tmp_path / "c.pt"
    )
    result = _evaluate_from(cli, tmp_path / "c.pt", tmp_path / "run")
    assert result.code == 0, result.err
    assert _same_weights(_weights_in(tmp_path / "run"), state)
    init = json.loads((tmp_path / "run" / "report.json").read_text())["init_from"]
    assert init["format"] == f"checkpoint[{key!r}]" and init["prefix_stripped"] == prefix


def test_other_class_count_gets_a_fresh_classifier_and_grey_images_an_adapted_stem(cli, tmp_path):
    state = _tiny_resnet_state(in_channels=3, classes=1000)  # an "ImageNet" checkpoint for a 1-channel, 10-class run
    torch.save(state, tmp_path / "imagenet.pth")
    result = _evaluate_from(cli, tmp_path / "imagenet.pth", tmp_path / "run")
    assert result.code == 0, result.err
    loaded = _weights_in(tmp_path / "run")
    assert loaded["fc.weight"].shape == (10, 32)  # replaced, fresh
    assert not torch.equal(loaded["fc.weight"], state["fc.weight"][:10])
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert _same_weights(loaded, state, skip={"fc.weight", "fc.bias", "conv1.weight"})
    init = json.loads((tmp_path / "run" / "report.json").read_text())["init_from"]
    assert init["classifier_replaced"] == {"module": "fc", "weights_classes": 1000, "classes": 10}
    assert init["stem_adapted"] == {"module": "conv1", "weights_channels": 3, "channels": 1}
    assert "replaced by a fresh one" in result.err


def test_weights_of_another_architecture_are_refused_naming_the_keys(cli, tmp_path):
    torch.manual_seed(0)
    torch.save(create_model("tiny_convnet", num_classes=10, in_channels=1).state_dict(), tmp_path / "other.pth")
    result = _evaluate_from(cli, tmp_path / "other.pth", tmp_path / "run")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("Error: --init-from") and "does not fit --model tiny_resnet" in line
    assert "missing keys (first: conv1.weight)" in line and "unexpected keys (first: features.0.weight)" in line
    assert not (tmp_path / "run").exists()


def test_a_pickled_whole_model_is_refused_with_how_to_resave_it(cli, tmp_path):
    torch.save(create_model("tiny_resnet", num_classes=10, in_channels=1), tmp_path / "whole.pt")
    result = _evaluate_from(cli, tmp_path / "whole.pt", tmp_path / "run")
    assert result.code == 2 and "Traceback" not in result.err
    assert "needs code execution" in result.err and "torch.save(model.state_dict()" in result.err
    assert not (tmp_path / "run").exists()


def test_safetensors_without_the_package_names_the_extra(cli, tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed: importing it raises
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    result = _evaluate_from(cli, tmp_path / "w.safetensors", tmp_path / "run")
    assert result.code == 2 and "lappdeploy[safetensors]" in result.err


# --------------------------------------------------------------------------------------------------
# named pretrained weights from the local caches


def test_torchvision_weights_come_from_the_torch_hub_cache_with_their_preprocessing(cli, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    run_flags = ["--model", "squeezenet1_1", *DATA[:2], "--synthetic-shape", "3x16x16", "--synthetic-samples", "32"]
    flags = [*run_flags, "--epochs", "0", "--init-from", "torchvision:IMAGENET1K_V1", "--image-size", "24"]
    result = cli("train", *flags, "--out", tmp_path / "absent")
    assert result.code == 2 and "not in the local torch-hub cache" in result.err and "--download" in result.err
    # the file torchvision would download, with weights of the right shapes (made here, not downloaded)
    entry = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(entry.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), cached)
    result = cli("train", *flags, "--out", tmp_path / "run")
    assert result.code == 0, result.err
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert config["mean"] == list(entry.transforms().mean) and config["std"] == list(entry.transforms().std)
    loaded = _weights_in(tmp_path / "run")
    assert torch.equal(loaded["features.3.squeeze.weight"], torch.load(cached)["features.3.squeeze.weight"])
    assert loaded["classifier.1.weight"].shape[0] == 10  # 1000 ImageNet classes -> the dataset's 10


def _fill_hf_cache(cache: Path, repo: str, files: dict[str, bytes]) -> None:
    """The Hugging Face hub cache layout: models--ORG--NAME/snapshots/<commit>/FILE and refs/main."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        path = root / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_timm_weights_come_from_the_hugging_face_cache(cli, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(2)
    reference = timm.create_model("test_resnet", pretrained=False)
    _fill_hf_cache(tmp_path / "hf", "timm/test_resnet.r160_in1k", {"model.safetensors": save(reference.state_dict())})
    flags = ["--model", "timm:test_resnet", *DATA[:2], "--synthetic-shape", "3x16x16", "--synthetic-samples", "32"]
    result = cli("train", *flags, "--epochs", "0", "--init-from", "timm:r160_in1k", "--image-size", "32",
                 "--out", tmp_path / "run")  # fmt: skip
    assert result.code == 0, result.err
    loaded = _weights_in(tmp_path / "run")
    assert torch.equal(loaded["conv1.0.weight"], reference.state_dict()["conv1.0.weight"])
    assert loaded["fc.weight"].shape[0] == 10
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert config["mean"] == [0.5, 0.5, 0.5]  # test_resnet.r160_in1k's own normalisation
    result = cli("train", *flags, "--epochs", "0", "--init-from", "timm:a1_in1k", "--out", tmp_path / "bad")
    assert result.code == 2 and "available: r160_in1k" in result.err


# --------------------------------------------------------------------------------------------------
# model specs


def test_user_builder_trains_compresses_and_reloads_in_a_new_process(cli, user_dir):
    spec = ["--model", "mynets:build", "--model-kwargs", '{"width": 16}']
    result = cli("compress", *spec, *DATA, "--method", "uniform", "--epochs", "2", "--prune-epochs", "1",
                 "--round-to", "1", "--out", user_dir / "run")  # fmt: skip
    assert result.code == 0, result.err
    config = yaml.safe_load((user_dir / "run" / "config.yaml").read_text())["train"]
    assert config["model"] == "mynets:build" and config["model_kwargs"] == {"width": 16}
    report = json.loads((user_dir / "run" / "report.json").read_text())
    assert report["macs_ratio"] <= 0.5
    script = "import sys, torch; from lappdeploy import load_model; m = load_model(sys.argv[1]).model; " \
             "print(tuple(m(torch.zeros(1, 1, 16, 16)).shape))"  # fmt: skip
    here = subprocess.run([sys.executable, "-c", script, "run"], cwd=user_dir, capture_output=True, text=True)
    assert here.returncode == 0 and here.stdout.strip() == "(1, 10)", here.stderr
    elsewhere = subprocess.run(
        [sys.executable, "-m", "lappdeploy", "inspect", str(user_dir / "run")],
        cwd=user_dir.parent, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.strip().startswith("Error: model builder mynets:build: module 'mynets' does not import")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nomodule.sub:build", "module 'nomodule.sub' does not import"),
        ("mynets:missing", "has no attribute 'missing'"),
        ("mynets:not_a_model", "returned a str, not a torch.nn.Module"),
        ("timm:resnet18x", "did you mean timm:resnet18"),
    ],
)
def test_bad_model_specs_are_one_line_errors(cli, user_dir, spec, message):
    result = cli("train", "--model", spec, *DATA, "--epochs", "1", "--out", user_dir / "run")
    assert result.code == 2 and message in result.err and "Traceback" not in result.err
    assert not (user_dir / "run").exists()


def test_timm_not_installed_names_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    result = cli("train", "--model", "timm:resnet18", *DATA, "--epochs", "1", "--out", tmp_path / "run")
    assert result.code == 2 and "lappdeploy[timm]" in result.err


def test_timm_model_compresses_exports_and_reloads(cli, tmp_path):
    pytest.importorskip("timm")
    flags = ["--model", "timm:test_resnet", *DATA[:2], "--synthetic-shape", "3x32x32", "--synthetic-samples", "64"]
    result = cli("compress", *flags, "--batch-size", "32", "--method", "uniform", "--epochs", "1",
                 "--prune-epochs", "1", "--out", tmp_path / "run")  # fmt: skip
    assert result.code == 0, result.err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["macs_ratio"] <= 0.5
    assert cli("export", tmp_path / "run").code == 0
    parity = json.loads((tmp_path / "run" / "export" / "export.json").read_text())["onnx"]["parity"]
    assert max(row["relative_error"] for row in parity) < 1e-4
    from lappdeploy.testing import logits_in_fresh_process

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        here = load_model(tmp_path / "run").model(x)
    assert torch.allclose(logits_in_fresh_process(tmp_path / "run" / "model.pt", x, tmp_path), here, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# the dense starting point: export and bench without a run; fine-tuning defaults; TensorBoard


def test_export_and_bench_take_a_dense_user_model(cli, user_dir):
    torch.manual_seed(0)
    from mynets import build

    model = build(16)
    torch.save(model.state_dict(), user_dir / "mine.pth")
    spec = ["--model", "mynets:build", "--model-kwargs", '{"width": 16}', "--init-from", "mine.pth"]
    result = cli("export", *spec, "--input-shape", "3x16x16", "--out", user_dir / "exported")
    assert result.code == 0, result.err
    record = json.loads((user_dir / "exported" / "export.json").read_text())
    assert record["model"] == "mynets:build" and "mine.pth" in record["source"]
    reloaded = load_model(user_dir / "exported" / "model.pt").model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model.eval()(x), atol=1e-6)  # the user's own weights, 1000 classes
    result = cli("bench", *spec, "--input-shape", "3x16x16", "--batch", "2", "--min-seconds", "0.2",
                 "--warmup-seconds", "0", "--out", user_dir / "bench")  # fmt: skip
    assert result.code == 0, result.err
    records = [json.loads(line) for line in (user_dir / "bench" / "bench.jsonl").read_text().splitlines()]
    assert [r["model"] for r in records] == ["mynets:build"] and records[0]["latency_median_ms"] > 0


def test_fine_tuning_lowers_the_default_learning_rate(tiny_run):
    from lappdeploy.config import FINE_TUNE_LR, SCRATCH_LR, TrainConfig

    assert TrainConfig().lr == SCRATCH_LR
    assert TrainConfig(init_from=str(tiny_run)).lr == FINE_TUNE_LR < SCRATCH_LR
    assert TrainConfig(init_from=str(tiny_run), lr=0.05).lr == 0.05


def test_tensorboard_events_hold_epoch_and_pruning_scalars(cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = ["--model", "tiny_resnet", *DATA[:2], "--synthetic-shape", "3x16x16", "--synthetic-samples", "128"]
    result = cli("compress", *flags, "--epochs", "2", "--prune-epochs", "1", "--round-to", "1", "--log-every", "1",
                 "--tensorboard", "--out", tmp_path / "run")  # fmt: skip
    assert result.code == 0, result.err
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"epoch/val_top1", "epoch/train_loss", "prune/macs", "prune/budget"} <= set(scalars)
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [1, 2]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in metrics if m.get("epoch") == 2 and "val_top1" in m][-1]
    assert events.Scalars("epoch/val_top1")[-1].value == pytest.approx(final["val_top1"])
    assert "curves/accuracy_and_loss" in events.Tags()["images"]


def test_list_models_timm_lists_the_compressible_families(cli):
    pytest.importorskip("timm")
    from lappdeploy.models.timm_support import TIMM_COMPRESSIBLE, TIMM_UNSUPPORTED

    result = cli("list", "models", "--timm")
    assert result.code == 0, result.err
    assert "timm:resnet10t" in result.out and "timm:mobilenetv2_035" in result.out
    families = {line.split("│")[2].strip() for line in result.out.splitlines() if line.startswith("│ timm:")}
    assert families == set(TIMM_COMPRESSIBLE), "every compressible family, none of the others"
    assert not families & set(TIMM_UNSUPPORTED)
    assert cli("list", "datasets", "--timm").code == 2
