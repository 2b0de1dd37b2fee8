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

from lappdeploy.methods.reconstruct.calibration import teacher_targets
from lappdeploy.methods.reconstruct.diagnostics import output_errors
from lappdeploy.methods.reconstruct.fits import layer_fit, solve_
from lappdeploy.methods.reconstruct.joint import solve_joint_, solve_ls_joint_
from lappdeploy.methods.reconstruct.layers import Consumer, joint_producer, plan_consumers
from lappdeploy.methods.reconstruct.passes import StudentPasses
from lappdeploy.methods.reconstruct.settings import JOINT_MODES, ReconstructionSettings
from lappdeploy.surgery import ChannelGroups, ChannelPlan
from lappdeploy.surgery.graph import is_norm_act, resolve_module

__all__ = ["ReconstructionLog", "ReconstructionRecord", "ResourceMeter", "reconstruct_", "relu_follows"]

log = logging.getLogger(__name__)

# per joint mode: its solver, and the mode (with what it fits) of a layer that has no producer to pair
JOINT_SOLVERS = {"ldrf-joint": (solve_joint_, "ldrf", "projection"), "ls-joint": (solve_ls_joint_, "ls", "ls")}


@dataclass
class ReconstructionRecord:
    """What one reconstruction did (one per channel removal)."""

    fitted: list[dict[str, Any]] = field(default_factory=list)  # per refitted layer, in the order solved
    skipped: list[dict[str, str]] = field(default_factory=list)  # layers reading removed channels, left as removed
    images: int = 0  # calibration images
    # per layer reading removed channels: relative squared error of its output (after its BatchNorm) against the
    # teacher's on held-out images the fits never saw, whatever the mode (plain removal's too)
    output_errors: dict[str, float] = field(default_factory=dict)
    evaluation_images: int = 0
    # whether the pruned network's passes resumed from cached activations (it traces with torch.fx), or each ran
    # from the input
    resumed_passes: bool = False
    seconds: float = 0.0  # wall time (ResourceMeter)
    peak_rss_mb: float | None = None  # peak resident memory (ResourceMeter)
    peak_rss_scope: str | None = None  # "reconstruction" (peak reset at its start) or "process" (since start)

    @property
    def modules(self) -> list[str]:
        """Modules whose tensors the reconstruction wrote (refitted layers, BatchNorms given offsets, and the
        producers the joint modes refitted with their BatchNorms): what other DDP ranks load from rank 0."""
        fields = ("name", "offset_in", "producer", "producer_bn")
        return [layer[key] for layer in self.fitted for key in fields if layer.get(key)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relu_follows(groups: ChannelGroups, consumer: Consumer) -> bool:
    """Whether a ReLU follows the layer's BatchNorm (or the layer, without one) directly in the original network:
    a ReLU module, a functional ReLU, or the activation of a norm-act module."""
    module = resolve_module(groups.model, consumer.bn or consumer.name)
    if is_norm_act(module):
        return isinstance(module.act, nn.ReLU)
    node = groups.graph.module2node.get(module)
    following = {n for n in node.outputs} if node is not None else set()
    if len(following) != 1:
        return False
    (after,) = following
    return isinstance(after.module, nn.ReLU) or "Relu" in getattr(after, "name", "")


def reconstruct_(
    teacher: nn.Module,
    model: nn.Module,
    groups: ChannelGroups,
    plan: ChannelPlan,
    images: torch.Tensor,
    settings: ReconstructionSettings,
    evaluation: torch.Tensor | None = None,
) -> ReconstructionRecord:
    """Refit, in place, the layers of `model` (the network after removing `plan`'s channels) that read removed
    channels, so that on `images` they reproduce what they computed in `teacher` (a frozen copy of the network
    before removal; `groups` is its analysis, in whose numbering `plan` is). Layers are solved in the order the
    forward pass reaches them, each through the already refitted upstream network. With `evaluation` images
    (held-out images the fits never saw), every layer reading removed channels gets its output error against the
    teacher on them, in the same units for every mode, `none` included."""
    consumers, skipped = plan_consumers(groups, plan)
    record = ReconstructionRecord(skipped=skipped, images=len(images))
    if settings.mode != "none" and consumers:
        _refit_all_(record, teacher, model, groups, consumers, images, settings)
    if evaluation is not None and len(evaluation) and consumers:
        record.output_errors = output_errors(teacher, model, consumers, evaluation)
        for layer in record.fitted:
            layer["output_error"] = record.output_errors.get(layer["name"])
        record.evaluation_images = len(evaluation)
    return record


def _refit_all_(record, teacher, model, groups, consumers: list[Consumer], images, settings) -> None:
    fits = {
        c.name: layer_fit(c, index, teacher, model, settings, relu_follows(groups, c))
        for index, c in enumerate(consumers)
    }
    targets = [target for fit in fits.values() for target in fit.targets]
    order, rows = teacher_targets(
        teacher, targets, images, count=settings.positions, seed=settings.seed, batch_size=settings.batch_size
    )
    order = [name for name in order if name in fits]
    for name in [n for n in fits if n not in rows]:
        record.skipped.append({"name": name, "reason": "not run exactly once per forward pass (shared or unused)"})
    passes = StudentPasses(model, images, settings.batch_size, settings.cache_bytes)
    # the joint modes: each layer's (producer, BatchNorm), or why it has none; found once, for the cut and the solve
    pairs = {name: joint_producer(groups, name) for name in order} if settings.mode in JOINT_MODES else {}
    written = {name: _written(fits[name], pairs.get(name)) for name in order}
    for position, name in enumerate(order):
        passes.advance([module for later in order[position:] for module in written[later]])
        record.fitted.append(_solve_one_(fits[name], pairs.get(name), passes, rows, settings))
        for target in fits[name].targets:
            rows.pop(target.name, None)
    record.resumed_passes = passes.cut > 0
    _mark_refitted_producers(record)


def _mark_refitted_producers(record: ReconstructionRecord) -> None:
    """The joint modes refit the kept filters of the producer of the channels a layer reads: a layer refitted before
    (a VGG chain: its record's weights and errors are overwritten by that later fit) or one whose removed inputs
    cannot be refitted (a residual stream's reader). Their records say so."""
    producers = {layer["producer"]: layer["name"] for layer in record.fitted if layer.get("producer")}
    for entry in record.fitted + record.skipped:
        if entry["name"] in producers:
            entry["filters_refitted_for"] = producers[entry["name"]]


def _written(fit, pair: tuple[str, str] | str | None) -> list[str]:
    """The modules solving `fit` may write: the layer, the BatchNorm taking its offset, and with a joint mode
    (`pair`) the producer and its BatchNorm."""
    names = [fit.name] + ([fit.offset_in] if fit.offset_in not in (None, "bias") else [])
    return names + (list(pair) if isinstance(pair, tuple) else [])


def _solve_one_(fit, pair: tuple[str, str] | str | None, passes: StudentPasses, rows, settings) -> dict:
    if settings.mode in JOINT_MODES:
        solver, alone, what = JOINT_SOLVERS[settings.mode]
        outcome = solver(fit, pair, passes, rows, settings) if isinstance(pair, tuple) else pair
        if isinstance(outcome, dict):
            return outcome
        return {**solve_(fit, passes, rows, settings), "mode": alone, "joint": f"{what} alone: {outcome}"}
    return solve_(fit, passes, rows, settings)


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
        if record.output_errors:
            shown = ", ".join(f"{name} {error:.4f}" for name, error in record.output_errors.items())
            log.info("output error vs the original on %d held-out images (%s): %s", record.evaluation_images,
                     self.mode, shown)  # fmt: skip
        if self.mode == "none":
            return
        refitted_producers = sum(1 for layer in record.skipped if layer.get("filters_refitted_for"))
        log.info(
            "reconstruct %s: %d layers refitted, %d with their inputs left as plain removal (%d of them with their "
            "kept filters refitted as producers), %.1f s, peak RSS %s MB (%s), passes %s",
            self.mode, len(record.fitted), len(record.skipped), refitted_producers, record.seconds, record.peak_rss_mb,
            record.peak_rss_scope, "resumed from cached activations" if record.resumed_passes else "from the input",
        )  # fmt: skip

    def report(self) -> dict[str, Any]:
        """report.json's reconstruction fields; every layer record names its removal step."""
        if self.mode == "none":
            errors = [{"name": n, "output_error": e, "step": i} for i, r in enumerate(self.records)
                      for n, e in r.output_errors.items()]  # fmt: skip
            return {"reconstruct": "none", **({"output_errors": errors} if errors else {})}
        peaks = [r.peak_rss_mb for r in self.records if r.peak_rss_mb is not None]
        return {
            "reconstruct": self.mode,
            "reconstruct_s": round(sum(r.seconds for r in self.records), 2),
            "reconstruct_peak_rss_mb": max(peaks) if peaks else None,
            "reconstruct_peak_rss_scope": self.records[-1].peak_rss_scope if self.records else None,
            "reconstruct_resumed_passes": bool(self.records) and all(r.resumed_passes for r in self.records),
            "calib_images": max((r.images for r in self.records), default=0),
            "reconstructed": [{**layer, "step": i} for i, r in enumerate(self.records) for layer in r.fitted],
            "reconstruct_skipped": [{**layer, "step": i} for i, r in enumerate(self.records) for layer in r.skipped],
            "output_errors": [
                {"name": n, "output_error": e, "step": i}
                for i, r in enumerate(self.records)
                for n, e in r.output_errors.items()
            ],
        }

    def state_dict(self) -> list[dict[str, Any]]:
        return [record.to_dict() for record in self.records]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.records = [ReconstructionRecord(**record) for record in state]
