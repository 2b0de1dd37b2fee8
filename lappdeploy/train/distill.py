"""Knowledge distillation (`--distill TEACHER`): the student learns the teacher's softened outputs as well as
the labels, in every run (`train`, and every `compress` method through the training loop they share).

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The teacher (the dense model the run starts from, `init`, or any model `--init-from` accepts, of any
architecture with the same classes and input) runs in eval mode under `torch.inference_mode` on the same
augmented batch as the student, under the run's autocast and memory format. Its weights never change. Its
content hash is kept in the training checkpoint, so a resumed run refuses a teacher that changed.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lappdeploy.config import TrainConfig
from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.hooks import Hook
from lappdeploy.models.portable import ModelCard
from lappdeploy.models.weights import read_weights
from lappdeploy.surgery.portable import load_model, model_from_spec

__all__ = ["Distillation", "load_teacher", "weights_digest"]

log = logging.getLogger(__name__)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights and buffers (names, shapes, values): what the teacher *is*, whatever
    file format it came in."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _is_lappdeploy_model(source: str) -> bool:
    path = Path(source).expanduser()
    return path.is_dir() or (path.is_file() and path.suffix != ".safetensors" and _has_card(source))


def _has_card(source: str) -> bool:
    try:
        return read_weights(source, architecture="?", download=False).lappdeploy
    except LappDeployError:
        return False


def _teacher_model(config: TrainConfig, card: ModelCard, initial: nn.Module) -> nn.Module:
    source = config.distill
    if source == "init":
        if config.init_from is None:
            raise ConfigError("--distill init teaches with the model the run starts from: it needs --init-from")
        return copy.deepcopy(initial)
    if _is_lappdeploy_model(source):  # a run directory or model.pt: its own architecture (e.g. ResNet-56)
        try:
            loaded = load_model(source)
        except LappDeployError as exc:
            raise ConfigError(f"--distill {source}: {exc}") from None
        if tuple(loaded.card.input_shape) != tuple(card.input_shape):
            shapes = ["x".join(map(str, s)) for s in (loaded.card.input_shape, card.input_shape)]
            raise ConfigError(f"--distill {source}: the teacher takes {shapes[0]} inputs, this run's are {shapes[1]}")
        return loaded.model
    architecture = config.distill_model or config.model
    kwargs = config.model_kwargs if architecture == config.model else {}
    loaded, _ = model_from_spec(
        architecture, num_classes=card.kwargs["num_classes"], input_shape=tuple(card.input_shape),
        model_kwargs=kwargs, init_from=source, download=config.download,
    )  # fmt: skip
    return loaded.model


def load_teacher(config: TrainConfig, card: ModelCard, initial: nn.Module) -> Distillation:
    """The distillation of `config` (--distill set), with its teacher checked against the run's classes and
    input (a batch of 2 at the card's input shape must give (2, classes) logits)."""
    try:
        teacher = _teacher_model(config, card, initial)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith("--distill") else f"--distill {config.distill}: {text}") from None
    classes, shape = card.kwargs["num_classes"], tuple(card.input_shape)
    try:
        with torch.no_grad():
            output = teacher.eval()(torch.zeros((2, *shape)))
    except Exception as exc:
        raise ConfigError(
            f"--distill {config.distill}: the teacher does not run on the run's {'x'.join(map(str, shape))} inputs "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None
    if tuple(output.shape) != (2, classes):
        raise ConfigError(
            f"--distill {config.distill}: the teacher gives {tuple(output.shape)[1:]} outputs per image, this run "
            f"has {classes} classes; a teacher must be a classifier of the same classes"
        )
    return Distillation(teacher, alpha=config.distill_alpha, temperature=config.distill_temperature,
                        source=config.distill)  # fmt: skip


class _Stopwatch:
    """Wall time of the teacher's forward passes over an epoch (s); CUDA events where the work is
    asynchronous, so timing adds no synchronisation to the step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.events: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started: Any) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((started, end))
        else:
            self.seconds += time.perf_counter() - started

    def total(self) -> float:
        if self.events:
            torch.cuda.synchronize()
            self.seconds += sum(start.elapsed_time(end) for start, end in self.events) / 1e3
            self.events.clear()
        return self.seconds


class Distillation(Hook):
    """The distillation loss and its teacher; a Hook so it logs its parts and keeps its identity for resume."""

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float, source: str) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--distill-alpha must be in [0, 1] (got {alpha})")
        if not temperature > 0:
            raise ConfigError(f"--distill-temperature must be > 0 (got {temperature})")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.source = float(alpha), float(temperature), source
        self.sha256 = weights_digest(self.teacher)
        self._watch: _Stopwatch | None = None

    @property
    def name(self) -> str:
        return "distillation"

    def to_(self, device: torch.device, *, channels_last: bool = False) -> None:
        """Move the teacher where the student trains (in place)."""
        self.teacher.to(device)
        if channels_last:
            self.teacher.to(memory_format=torch.channels_last)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, criterion) -> tuple:
        """(total loss, its cross-entropy part, its distillation part) of one batch; called inside the run's
        autocast, after the student's forward."""
        watch = self._watch or _Stopwatch(images.device)
        self._watch = watch
        started = watch.start()
        with torch.inference_mode():
            teacher_logits = self.teacher(images)
        teacher_logits = teacher_logits.float().clone()  # a normal tensor: autograd may keep it for backward
        watch.stop(started)
        ce = criterion(logits, labels)
        t = self.temperature
        kd = F.kl_div(
            F.log_softmax(logits.float() / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean", log_target=True,
        ) * (t * t)  # fmt: skip
        return (1.0 - self.alpha) * ce + self.alpha * kd, ce.detach(), kd.detach()

    def on_epoch_start(self, loop, epoch: int) -> None:
        self._watch = None

    def on_epoch_end(self, loop, metrics: dict[str, Any]) -> None:
        if self._watch is None or "train_s" not in metrics:
            return
        seconds = self._watch.total()
        metrics["teacher_s"] = round(seconds, 3)
        metrics["teacher_share"] = round(seconds / max(metrics["train_s"], 1e-9), 4)

    def report(self) -> dict[str, Any]:
        return {"teacher": self.source, "sha256": self.sha256, "alpha": self.alpha, "temperature": self.temperature}

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.source, "sha256": self.sha256}

    def load_state_dict(self, state: dict[str, Any], loop) -> None:
        if state.get("sha256") != self.sha256:
            raise ConfigError(
                f"--resume: the teacher {self.source} is not the one this run started with (its weights changed "
                f"since: sha256 {self.sha256[:12]}, recorded {str(state.get('sha256'))[:12]}); restore it or start "
                "a new run"
            )
