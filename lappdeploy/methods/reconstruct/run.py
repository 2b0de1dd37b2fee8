"""Refitting the layers that read removed channels, front to back, and what it cost."""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.methods.reconstruct.calibration import Target, student_statistics, teacher_targets
from lappdeploy.methods.reconstruct.layers import Consumer, offset_home, plan_consumers
from lappdeploy.methods.reconstruct.linalg import Embedding, embed, recompose, relative_residual, ridge_solve
from lappdeploy.methods.reconstruct.settings import ReconstructionSettings
from lappdeploy.surgery import ChannelGroups, ChannelPlan
from lappdeploy.surgery.graph import resolve_module

__all__ = ["ReconstructionLog", "ReconstructionRecord", "ResourceMeter", "reconstruct_"]

log = logging.getLogger(__name__)


@dataclass
class ReconstructionRecord:
    """What one reconstruction did (one per channel removal)."""

    fitted: list[dict[str, Any]] = field(default_factory=list)  # per refitted layer, in the order solved
    skipped: list[dict[str, str]] = field(default_factory=list)  # layers reading removed channels, left as removed
    images: int = 0  # calibration images
    seconds: float = 0.0  # wall time (ResourceMeter)
    peak_rss_mb: float | None = None  # peak resident memory (ResourceMeter)
    peak_rss_scope: str | None = None  # "reconstruction" (peak reset at its start) or "process" (since start)

    @property
    def modules(self) -> list[str]:
        """Modules whose tensors the reconstruction wrote (refitted layers and BatchNorms given offsets)."""
        return [name for layer in self.fitted for name in (layer["name"], layer.get("offset_in")) if name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Layer:
    """One refit: the consumer, its modules in both networks and what it is fitted to."""

    consumer: Consumer
    student: nn.Module
    target: Target
    prior: torch.Tensor  # (unknowns, targets): the weights plain removal left, in the fit's layout
    embedding: Embedding | None  # ldrf
    offset_in: str | None  # where a fitted output offset goes: "bias", a BatchNorm's name, or None (not fitted)


def _layer(consumer: Consumer, index: int, teacher: nn.Module, model: nn.Module, settings) -> _Layer:
    original, student = resolve_module(teacher, consumer.name), resolve_module(model, consumer.name)
    weight = original.weight.detach().double()[consumer.out_keep]
    expected = (len(consumer.out_keep), len(consumer.in_keep), *weight.shape[2:])
    if tuple(student.weight.shape) != expected:
        shape = tuple(student.weight.shape)
        raise SurgeryError(f"layer {consumer.name} has shape {shape} after removal, expected {expected}")
    offset_in = offset_home(student, consumer.bn, model)  # the calibration check counts the same offset
    if settings.mode == "ls":
        return _least_squares_layer(consumer, index, original, student, weight, offset_in)
    embedding = embed(weight, settings.energy)
    target = Target(consumer.name, index, original, False, embedding.q)
    prior = embedding.q[consumer.in_keep]  # the kept channels' projection, as plain removal leaves it
    prior = torch.cat([prior, prior.new_zeros(1, embedding.rank)]) if offset_in else prior
    return _Layer(consumer, student, target, prior, embedding, offset_in)


def _least_squares_layer(consumer, index, original, student, weight, offset_in) -> _Layer:
    """ls: the outputs of `original` (rows kept) from k x k patches; the prior is the pruned layer's weight."""
    bias = original.bias.detach().double()[consumer.out_keep] if original.bias is not None else None
    target = Target(consumer.name, index, original, True, weight.flatten(1).T, bias)
    prior = student.weight.detach().double().flatten(1).T.clone()  # (unknowns, outputs); not a view of the weight
    if offset_in:
        own = student.bias.detach().double() if student.bias is not None else prior.new_zeros(prior.shape[1])
        prior = torch.cat([prior, own[None]])
    return _Layer(consumer, student, target, prior, None, offset_in)


@torch.no_grad()
def _write(layer: _Layer, solution: torch.Tensor, model: nn.Module) -> None:
    """Put the fitted weights into the pruned layer (and an output offset into its bias or BatchNorm)."""
    weight = layer.student.weight
    kept = len(layer.consumer.in_keep) if layer.embedding is not None else weight[0].numel()
    if layer.embedding is None:  # ls: the solution is the layer's weight
        weight.copy_(solution[:kept].T.reshape(weight.shape).to(weight))
        offset = solution[kept] - layer.prior[kept] if layer.offset_in else None
    else:  # ldrf: the change of the kept channels' projection, recomposed through the rest of the layer
        change = solution[:kept] - layer.prior[:kept]
        weight.add_(recompose(change, layer.embedding.r, weight.shape).to(weight))
        offset = torch.einsum("j,jok->o", solution[kept], layer.embedding.r) if layer.offset_in else None
    if offset is None:
        return
    if layer.offset_in == "bias":
        layer.student.bias.add_(offset.to(layer.student.bias))
    else:  # BN((W x + b) - mean) = BN(W x - (mean - b)): the offset moves the running mean
        norm = model.get_submodule(layer.offset_in)
        norm.running_mean.sub_(offset.to(norm.running_mean))


def _solve_(layer: _Layer, model: nn.Module, rows: list[torch.Tensor], images: torch.Tensor, settings) -> dict:
    stats = student_statistics(
        model, layer.student, layer.target, rows, images, count=settings.positions, seed=settings.seed,
        batch_size=settings.batch_size, intercept=layer.offset_in is not None,
    )  # fmt: skip
    prior = layer.prior.to(stats.gram.device)
    solution = ridge_solve(stats.gram, stats.cross, prior, settings.ridge)
    if solution.regularised:
        log.warning(
            "%s: the calibration system is singular or nearly so (%d samples, %d unknowns); %s",
            layer.consumer.name, stats.samples, len(prior),
            "kept as plain removal" if solution.ridge == float("inf") else f"regularised with ridge {solution.ridge:g}",
        )  # fmt: skip
    _write(layer, solution.weights, model)
    consumer = layer.consumer
    return {
        "name": consumer.name,
        "mode": settings.mode,
        "inputs_kept": len(consumer.in_keep),
        "outputs": len(consumer.out_keep),
        "rank": layer.embedding.rank if layer.embedding is not None else None,
        "samples": stats.samples,
        "unknowns": len(prior),
        # relative squared error of what is fitted (ls: the output before BN; ldrf: the embedding) on the
        # calibration samples, as plain removal left the layer and after the refit
        "error_removed": round(relative_residual(stats.gram, stats.cross, stats.energy, prior), 6),
        "error_refitted": round(relative_residual(stats.gram, stats.cross, stats.energy, solution.weights), 6),
        "ridge": solution.ridge if solution.ridge != float("inf") else None,
        "regularised": solution.regularised,
        "offset_in": layer.offset_in if layer.offset_in != "bias" else None,
    }


def reconstruct_(
    teacher: nn.Module,
    model: nn.Module,
    groups: ChannelGroups,
    plan: ChannelPlan,
    images: torch.Tensor,
    settings: ReconstructionSettings,
) -> ReconstructionRecord:
    """Refit, in place, the layers of `model` (the network after removing `plan`'s channels) that read removed
    channels, so that on `images` they reproduce what they computed in `teacher` (a frozen copy of the network
    before removal; `groups` is its analysis, in whose numbering `plan` is). Layers are solved in the order the
    forward pass reaches them, each through the already refitted upstream network."""
    consumers, skipped = plan_consumers(groups, plan)
    record = ReconstructionRecord(skipped=skipped, images=len(images))
    if settings.mode == "none" or not consumers:
        return record
    layers = {c.name: _layer(c, index, teacher, model, settings) for index, c in enumerate(consumers)}
    order, rows = teacher_targets(
        teacher, [layer.target for layer in layers.values()], images,
        count=settings.positions, seed=settings.seed, batch_size=settings.batch_size,
    )  # fmt: skip
    for name in [n for n in layers if n not in rows]:
        record.skipped.append({"name": name, "reason": "not run exactly once per forward pass (shared or unused)"})
    for name in order:
        record.fitted.append(_solve_(layers[name], model, rows.pop(name), images, settings))
    return record


class ResourceMeter:
    """Wall time and peak resident memory of a stretch of work. On Linux the peak is reset at the start
    (/proc/self/clear_refs), so it is the stretch's own; elsewhere it is the process's peak so far."""

    def __init__(self) -> None:
        self.scope = "reconstruction" if _reset_peak_rss() else "process"
        self.started = time.perf_counter()

    def stop(self, record: ReconstructionRecord) -> ReconstructionRecord:
        record.seconds = round(time.perf_counter() - self.started, 3)
        record.peak_rss_mb = _peak_rss_mb()
        record.peak_rss_scope = self.scope
        return record


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class ReconstructionLog:
    """Every reconstruction of a run (one per channel removal), for report.json and checkpoints."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.records: list[ReconstructionRecord] = []

    def add(self, record: ReconstructionRecord) -> None:
        self.records.append(record)
        log.info(
            "reconstruct %s: %d layers refitted, %d left as plain removal, %.1f s, peak RSS %s MB (%s)",
            self.mode, len(record.fitted), len(record.skipped), record.seconds, record.peak_rss_mb,
            record.peak_rss_scope,
        )  # fmt: skip

    def report(self) -> dict[str, Any]:
        """report.json's reconstruction fields; every layer record names its removal step."""
        if self.mode == "none":
            return {"reconstruct": "none"}
        peaks = [r.peak_rss_mb for r in self.records if r.peak_rss_mb is not None]
        return {
            "reconstruct": self.mode,
            "reconstruct_s": round(sum(r.seconds for r in self.records), 2),
            "reconstruct_peak_rss_mb": max(peaks) if peaks else None,
            "reconstruct_peak_rss_scope": self.records[-1].peak_rss_scope if self.records else None,
            "calib_images": max((r.images for r in self.records), default=0),
            "reconstructed": [{**layer, "step": i} for i, r in enumerate(self.records) for layer in r.fitted],
            "reconstruct_skipped": [{**layer, "step": i} for i, r in enumerate(self.records) for layer in r.skipped],
        }

    def state_dict(self) -> list[dict[str, Any]]:
        return [record.to_dict() for record in self.records]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.records = [ReconstructionRecord(**record) for record in state]
