"""LDRF and --reconstruct end to end on tiny models: a trained model pruned with no training step (--epochs 0)
or fine-tuned after, report.json's reconstruction fields, ONNX export with ORT parity and the plan's MACs, the
portable checkpoint rebuilt in a new process with ordinary layers, reconstruction inside an iterative method
(and its resume), and bad input refused in one line before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from lappdeploy.config import TrainConfig
from lappdeploy.io import read_json
from lappdeploy.methods import LdrfConfig, PcpConfig, UniformConfig, spec_for
from lappdeploy.models import create_model
from lappdeploy.surgery import ChannelPlan, analyze, remove_channels_
from lappdeploy.testing import bare_loop, drive_to_target, logits_in_fresh_process, randomize_norms_

SIZE = 16  # px
TRAIN = {
    "model": "tiny_resnet",
    "dataset": "synthetic",
    "synthetic_shape": (3, SIZE, SIZE),
    "synthetic_samples": 160,
    "batch_size": 16,
    "lr": 0.01,
    "device": "cpu",
    "holdout": 48,
    "seed": 0,
}
RUNS = {
    # name: (fine-tuning epochs, the method's config)
    "ldrf": (0, LdrfConfig(target_macs=0.5, round_to=1, calib_images=40)),
    "uniform-ls": (1, UniformConfig(target_macs=0.5, prune_epochs=0, round_to=1, reconstruct="ls", calib_images=40)),
}


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    """Both configurations of RUNS, compressed from the untrained tiny_resnet run `tiny_run`."""
    from lappdeploy.methods.compress import run_compress

    root = tmp_path_factory.mktemp("ldrf")
    reports = {}
    for name, (epochs, config) in RUNS.items():
        train = TrainConfig(**TRAIN, epochs=epochs, init_from=str(tiny_run))
        reports[name] = run_compress(train, config, root / name)
    return root, reports


def test_ldrf_prunes_a_trained_model_without_training_and_writes_a_complete_run(runs):
    root, reports = runs
    report = reports["ldrf"]
    assert sorted(p.name for p in (root / "ldrf").iterdir()) == [
        "config.yaml", "metrics.jsonl", "model.pt", "plan.json", "report.json",
    ]  # fmt: skip
    assert report["epochs"] == 0 and report["steps"] == 0 and report["top1"] is not None
    assert report["method"] == "ldrf" and report["reconstruct"] == "ldrf-joint" and report["calib_images"] == 40
    assert report["macs_ratio"] <= 0.5
    assert report["reconstruct_s"] > 0 and report["reconstruct_peak_rss_mb"] > 0
    assert set(report["valid_capacity"]) == {layer["name"] for layer in report["layers"]}
    fitted = {layer["name"] for layer in report["reconstructed"]}
    assert {"layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2"} <= fitted
    # that a refit beats plain removal on images it never saw is tests/unit/test_reconstruct.py's to show
    # ldrf-joint where the producer of the removed channels is a conv + BatchNorm read by this layer alone (a
    # block's first conv), the projection alone (ldrf) elsewhere
    modes = {layer["name"]: layer["mode"] for layer in report["reconstructed"]}
    assert set(modes.values()) <= {"ldrf-joint", "ldrf"} and modes["layer1.0.conv2"] == "ldrf-joint", modes
    assert all(layer["rank"] for layer in report["reconstructed"])
    assert all("residual stream" in layer["reason"] for layer in report["reconstruct_skipped"])
    lines = [json.loads(line) for line in (root / "ldrf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines if "type" in r] == ["prune"] and lines[-1]["epoch"] == 0
    assert lines[-1]["pruned"] and "val_top1" in lines[-1] and "train_loss" not in lines[-1]


def test_the_refits_are_in_the_saved_weights_and_the_rest_is_plain_removal(runs, tiny_run):
    from lappdeploy import load_model

    root, _ = runs
    pruned = load_model(root / "ldrf" / "model.pt").model
    plain = load_model(tiny_run / "model.pt").model
    x = torch.zeros(2, 3, SIZE, SIZE)
    remove_channels_(plain, ChannelPlan.from_dict(read_json(root / "ldrf" / "plan.json")), x, groups=analyze(plain, x))
    assert not torch.equal(pruned.layer2[0].conv2.weight, plain.layer2[0].conv2.weight), "refitted"
    # ldrf-joint (the default) also refits the kept filters of conv1, which produces conv2's pruned input
    assert not torch.equal(pruned.layer2[0].conv1.weight, plain.layer2[0].conv1.weight), "producer refitted"
    shortcut = pruned.layer2[0].shortcut[0].weight
    assert torch.equal(shortcut, plain.layer2[0].shortcut[0].weight), "a stream reader, left alone"


def test_reconstruction_after_a_baseline_plan_then_fine_tuning(runs):
    _, reports = runs
    report = reports["uniform-ls"]
    assert report["epochs"] == 1 and report["steps"] > 0 and report["reconstruct"] == "ls"
    assert report["reconstructed"] and all(layer["rank"] is None for layer in report["reconstructed"])
    assert report["macs_ratio"] <= 0.5


@pytest.mark.parametrize("name", sorted(RUNS))
def test_reconstructed_models_export_with_parity_and_the_plans_macs(runs, name, tmp_path):
    from lappdeploy import load_model
    from lappdeploy.export import to_onnx

    root, reports = runs
    model = load_model(root / name / "model.pt").model
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    record = to_onnx(model, x, tmp_path / "model.onnx")
    assert record.parity and max(r["relative_error"] for r in record.parity) < 1e-3
    assert record.torch_macs == reports[name]["deploy_macs"]
    assert record.macs == record.torch_macs - record.zero_bias_adds_dropped


def test_a_reconstructed_model_is_rebuilt_in_a_new_process_from_ordinary_layers(runs, tmp_path):
    from lappdeploy import load_model

    root, _ = runs
    model = load_model(root / "ldrf" / "model.pt").model
    ordinary = {type(m) for m in create_model("tiny_resnet").modules()}
    assert {type(m) for m in model.modules()} <= ordinary, "no new module types"
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(logits_in_fresh_process(root / "ldrf" / "model.pt", x, tmp_path), model(x), atol=1e-6)


def test_an_iterative_method_reconstructs_after_every_removal_step_and_resumes_the_record():
    def model():
        torch.manual_seed(0)
        return randomize_norms_(create_model("tiny_resnet", num_classes=4))

    images = torch.randn(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    config = PcpConfig(
        target_macs=0.4, prune_epochs=0, round_to=1, groups_per_step=2, attempt_fraction=0.3, decision_images=32,
        reconstruct="ls", calib_images=40, recalibrate_bn=0,  # fc: 32 features + its bias need 33
    )  # fmt: skip
    hook = spec_for(config).prepare(model(), images[:2], config)
    drive_to_target(hook, bare_loop(hook.model, images))
    extra = hook.result().extra
    assert len(hook.steps) >= 2 and extra["reconstruct"] == "ls"
    steps = {layer["step"] for layer in extra["reconstructed"] + extra["reconstruct_skipped"]}
    assert steps == set(range(len(hook.steps))), "one reconstruction per removal step"
    again = spec_for(config).prepare(model(), images[:2], config)
    again.load_state_dict(hook.state_dict(), bare_loop(again.model, images))
    assert again.result().extra == extra


COMPRESS = [
    "compress", "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16",
    "--synthetic-samples", "160", "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--round-to", "1",
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ldrf"], "--method ldrf prunes a trained model: give one with --init-from"),
        (["--method", "ldrf", "INIT", "--ldrf-energy", "0"], "ldrf_energy must be in (0.0, 1.0]"),
        (["--method", "ldrf", "INIT", "--ldrf-energy", "1.5"], "ldrf_energy must be in (0.0, 1.0]"),
        (["--method", "ldrf", "INIT", "--calib-positions", "0"], "calib_positions must be >= 1"),
        (["--method", "ldrf", "INIT", "--calib-images", "64", "--holdout", "32"], "is more than the 32 held-out"),
        (
            ["--method", "ldrf", "INIT", "--calib-images", "4", "--holdout", "32"],
            "under-determined; use --calib-images 33",  # fc: 32 input features + its bias, 1 row per image
        ),
        (
            ["--method", "uniform", "INIT", "--prune-epochs", "0", "--reconstruct", "ls", "--calib-images", "8"],
            "the least-squares system would be under-determined",
        ),
        (
            ["--method", "lapp", "--reconstruct", "ls"],
            "--reconstruct is an option of method global, laasp, ldrf, pcp, uniform, not of lapp",
        ),
        (["--method", "uniform", "--reconstruct", "ldrf", "--bypass", "rep"], "use --bypass none"),
    ],
)
def test_bad_input_is_one_line_before_anything_is_written(cli, tiny_run, tmp_path, args, message):
    args = [a for arg in args for a in (["--init-from", tiny_run] if arg == "INIT" else [arg])]
    result = cli(*COMPRESS, *args, "--out", tmp_path / "run")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.err
    assert not (tmp_path / "run").exists()


def test_train_with_zero_epochs_evaluates_the_given_model(cli, tiny_run, tmp_path):
    out = tmp_path / "eval"
    result = cli(
        "train", "--model", "tiny_resnet", "--dataset", "synthetic", "--synthetic-shape", "3x16x16",
        "--synthetic-samples", "64", "--batch-size", "16", "--epochs", "0", "--init-from", tiny_run,
        "--device", "cpu", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = read_json(out / "report.json")
    assert report["epochs"] == 0 and report["steps"] == 0 and report["top1"] is not None
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0]
