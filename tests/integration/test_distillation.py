"""Knowledge distillation (`--distill`): what it must do and what it must never do, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lappdeploy import load_model
from lappdeploy.config import TrainConfig
from lappdeploy.errors import ConfigError
from lappdeploy.hooks import Hook
from lappdeploy.methods import UniformConfig
from lappdeploy.methods.compress import run_compress
from lappdeploy.train import run_training

TINY = {
    "model": "tiny_resnet",
    "dataset": "synthetic",
    "synthetic_shape": (3, 16, 16),
    "synthetic_samples": 256,
    "synthetic_classes": 4,
    "batch_size": 32,
    "seed": 1,
}


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A dense tiny_resnet trained 3 epochs: the teacher (and the starting point of post-training runs)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    run_training(tiny(epochs=3, lr=0.05), out)
    return out


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def _post_training(teacher_run, **changes) -> TrainConfig:
    return tiny(**{"init_from": str(teacher_run), "epochs": 2, **changes})


def test_alpha_zero_reproduces_the_run_without_distillation_bit_for_bit(teacher_run, tmp_path):
    method = UniformConfig(target_macs=0.5, prune_epochs=0, round_to=1)
    run_compress(_post_training(teacher_run), method, tmp_path / "plain")
    report = run_compress(_post_training(teacher_run, distill="init", distill_alpha=0.0), method, tmp_path / "kd0")
    plain, distilled = _weights(tmp_path / "plain"), _weights(tmp_path / "kd0")
    assert plain.keys() == distilled.keys()
    assert all(torch.equal(plain[k], distilled[k]) for k in plain)
    assert report["distill"]["alpha"] == 0.0 and report["distill"]["teacher_share"] > 0  # the teacher did run
    metrics = [json.loads(line) for line in (tmp_path / "kd0" / "metrics.jsonl").read_text().splitlines()]
    assert all({"train_ce", "train_kd", "teacher_share"} <= set(m) for m in metrics if "train_loss" in m)


def _kl_to_teacher(student, teacher, images: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(images), 1), F.log_softmax(teacher(images), 1),
                              reduction="batchmean", log_target=True))  # fmt: skip


def test_a_student_moves_its_logits_toward_the_teacher(teacher_run, tmp_path):
    """From random weights, alpha 1 (no labels at all): the student's KL to the teacher falls."""
    from lappdeploy.data import create_dataset

    teacher = load_model(teacher_run).model
    bundle = create_dataset("synthetic", synthetic_shape=(3, 16, 16), synthetic_classes=4, synthetic_samples=256)
    images = bundle.val_batch_transform(torch.stack([bundle.val[i][0] for i in range(64)]))
    torch.manual_seed(TINY["seed"])
    from lappdeploy.models import create_model

    untrained = create_model("tiny_resnet", num_classes=4, in_channels=3).eval()
    config = tiny(epochs=3, lr=0.05, distill=str(teacher_run), distill_alpha=1.0, distill_temperature=1.0)
    run_training(config, tmp_path / "student")
    student = load_model(tmp_path / "student").model
    before, after = _kl_to_teacher(untrained, teacher, images), _kl_to_teacher(student, teacher, images)
    assert after < 0.5 * before, (before, after)


class _TeacherWatch(Hook):
    """Checks after every step that the teacher has no gradient and its weights are the original ones."""

    def __init__(self) -> None:
        self.original: dict[str, torch.Tensor] | None = None
        self.steps = 0

    def on_step_end(self, loop, loss) -> None:
        teacher = loop.distillation.teacher
        if self.original is None:
            self.original = {k: v.clone() for k, v in teacher.state_dict().items()}
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert all(torch.equal(v, self.original[k]) for k, v in teacher.state_dict().items())  # BN buffers too
        assert not teacher.training
        self.steps += 1


def test_the_teacher_never_changes_and_gets_no_gradient(teacher_run, tmp_path):
    watch = _TeacherWatch()
    config = _post_training(teacher_run, distill=str(teacher_run / "model.pt"))
    run_compress(config, UniformConfig(target_macs=0.5, prune_epochs=0, round_to=1), tmp_path / "run", hooks=[watch])
    assert watch.steps == 2 * (256 // 32)
    assert all(torch.equal(v, _weights(teacher_run)[k]) for k, v in watch.original.items())


class _StopAfterFirstCheckpoint(Hook):
    def on_checkpoint(self, loop, path):
        raise KeyboardInterrupt


def test_resume_with_distillation_is_bit_identical_and_refuses_a_changed_teacher(teacher_run, tmp_path):
    method = UniformConfig(target_macs=0.5, prune_epochs=0, round_to=1)
    config = _post_training(teacher_run, epochs=3, distill="init")
    run_compress(config, method, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_compress(config, method, tmp_path / "resumed", hooks=[_StopAfterFirstCheckpoint()])
    run_compress(config, method, tmp_path / "resumed", resume=True)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    # a teacher file whose weights changed since the run started is refused on resume
    teacher = load_model(teacher_run)
    from lappdeploy.surgery import save_model

    save_model(teacher.model, tmp_path / "teacher.pt", teacher.card)
    config = _post_training(teacher_run, epochs=3, distill=str(tmp_path / "teacher.pt"))
    with pytest.raises(KeyboardInterrupt):
        run_compress(config, method, tmp_path / "changed", hooks=[_StopAfterFirstCheckpoint()])
    with torch.no_grad():
        next(teacher.model.parameters()).add_(1.0)
    save_model(teacher.model, tmp_path / "teacher.pt", teacher.card)
    with pytest.raises(ConfigError, match="is not the one this run started with"):
        run_compress(config, method, tmp_path / "changed", resume=True)


def test_a_teacher_of_another_architecture_teaches(tmp_path):
    run_training(tiny(model="tiny_convnet", epochs=1, lr=0.05), tmp_path / "convnet")
    report = run_training(tiny(epochs=1, lr=0.05, distill=str(tmp_path / "convnet")), tmp_path / "student")
    assert report["distill"]["teacher"] == str(tmp_path / "convnet") and report["model"] == "tiny_resnet"


DATA = ["--dataset", "synthetic", "--synthetic-shape", "3x16x16", "--synthetic-samples", "128",
        "--synthetic-classes", "4", "--batch-size", "32"]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--distill", "init"], "--distill init teaches with the model the run starts from: it needs --init-from"),
        (["--distill", "nothere.pt"], "--distill nothere.pt: --init-from nothere.pt does not exist"),
        (["--distill", "{teacher}", "--distill-alpha", "1.5"], "distill_alpha must be in [0.0, 1.0]"),
        (["--distill", "{teacher}", "--distill-temperature", "0"], "distill_temperature must be > 0"),
        (["--distill", "{other_classes}"], "the teacher gives (10,) outputs per image, this run has 4 classes"),
        (["--distill", "{other_input}"], "the teacher takes 1x16x16 inputs, this run's are 3x16x16"),
    ],
)
def test_bad_distillation_input_is_one_line_and_writes_nothing(cli, teacher_run, tmp_path, flags, message):
    other_classes = tmp_path / "ten"
    other_input = tmp_path / "grey"
    if "{other_classes}" in flags:
        run_training(tiny(epochs=1, synthetic_classes=10), other_classes)
    if "{other_input}" in flags:  # a teacher of grey 16x16 images for a run on colour ones
        run_training(tiny(epochs=1, synthetic_shape=(1, 16, 16)), other_input)
    names = {"{teacher}": str(teacher_run), "{other_classes}": str(other_classes), "{other_input}": str(other_input)}
    flags = [names.get(f, f) for f in flags]
    result = cli("train", "--model", "tiny_resnet", *DATA, "--epochs", "1", *flags, "--out", tmp_path / "run")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and lines[-1].startswith("Error: ") and message in lines[-1], result.err
    assert not (tmp_path / "run").exists()
