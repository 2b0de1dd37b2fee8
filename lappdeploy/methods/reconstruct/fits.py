"""How each `--reconstruct` mode refits one layer that lost input channels (docs/ldrf.md#reconstruction).

- `ls`: the layer's output before its BatchNorm, bias included, from k x k patches of its kept inputs.
- `ldrf` (the projection): the consumer's 1x1 projection Q of its input channels onto its leading directions
  (input-side SVD) refitted pixel by pixel so the kept channels reproduce the original embedding Q^T x; the
  change is recomposed into the one layer.
- `ldrf-patch`: the output-side split k x k -> d -> 1x1 (Zhang et al.): the k x k part A refitted from patches
  of the kept inputs to reproduce the d-dimensional embedding A x; W' = P A'.
- `ldrf-joint`: the projection refitted jointly with the kept filters of the layer that produces the pruned
  channels (alternating least squares through its BatchNorm and ReLU); see `joint.py`.
- `ls-joint`: `ls` refitted jointly with those producer filters in the same way (a control for ldrf-joint).
With `relu` (where a ReLU follows the layer's BatchNorm), `ls` and `ldrf-patch` fit the output after that
ReLU instead of before it.

Output offsets are fitted where the patches have their true support: with `ls` and `ldrf-patch` the intercept
is part of the patch fit (a padded border's zeros are in the patch); with the projection fits, the offset is
fitted afterwards on output patches with the refitted weights fixed (an offset of the embedding cannot be
mapped through the k x k kernel exactly at zero-padded borders).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.methods.reconstruct.calibration import Statistics, Target, student_statistics
from lappdeploy.methods.reconstruct.layers import Consumer, offset_home
from lappdeploy.methods.reconstruct.linalg import (
    embed,
    embed_outputs,
    recompose,
    relative_residual,
    relu_fit,
    ridge_solve,
)
from lappdeploy.methods.reconstruct.passes import StudentPasses
from lappdeploy.surgery.graph import resolve_module

__all__ = ["LEAST_SQUARES", "OUTPUT", "LayerFit", "bn_affine", "layer_fit"]

log = logging.getLogger(__name__)

OUTPUT = "#output"  # suffix of the teacher target that holds a layer's output rows (offset and ReLU fits)
LEAST_SQUARES = ("ls", "ls-joint")  # the modes fitting the layer's own k x k weights to its output
_FIT_UNITS = {"ls": "output", "ls-joint": "output", "ldrf-patch": "output embedding"}  # else "input embedding"


def bn_affine(bn: nn.Module | None, outputs: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of the eval-mode BatchNorm `bn` as a per-output affine map (1 and 0 without one)."""
    if bn is None:
        return like.new_ones(outputs), like.new_zeros(outputs)
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    shift = bn.bias.detach().double() - scale * bn.running_mean.detach().double()
    return scale.to(like), shift.to(like)


@dataclass
class LayerFit:
    """One layer's refit: its targets in the original network, the prior (what plain removal left, in the fit's
    layout) and how a solution is written back."""

    consumer: Consumer
    index: int
    original: nn.Module  # the layer in the teacher
    student: nn.Module  # the layer in the pruned network
    mode: str
    offset_in: str | None  # "bias", a BatchNorm's name, or None (no offset fitted)
    relu_after: bool = False  # fit after the BatchNorm and ReLU that follow the layer
    targets: list[Target] = field(default_factory=list)
    prior: torch.Tensor | None = None
    basis: torch.Tensor | None = None  # ldrf: R (rank, c_out, K); ldrf-patch: P (c_out, rank)
    rank: int | None = None

    @property
    def name(self) -> str:
        return self.consumer.name

    def output_target(self, suffix: str = "") -> Target:
        """The layer's output rows before its BatchNorm, bias included, at sampled output positions (k x k patches
        of its input); named after the layer, + `suffix` where it is a second target of the layer."""
        weight = self.original.weight.detach().double()[self.consumer.out_keep]
        bias = self.original.bias.detach().double()[self.consumer.out_keep] if self.original.bias is not None else None
        return Target(self.name + suffix, self.index, self.original, True, weight.flatten(1).T, bias)


def layer_fit(consumer: Consumer, index: int, teacher: nn.Module, model: nn.Module, settings, relu_after: bool):
    """The LayerFit of `consumer` under `settings.mode` (`relu_after`: a ReLU follows its BatchNorm)."""
    original, student = resolve_module(teacher, consumer.name), resolve_module(model, consumer.name)
    weight = original.weight.detach().double()[consumer.out_keep]
    expected = (len(consumer.out_keep), len(consumer.in_keep), *weight.shape[2:])
    if tuple(student.weight.shape) != expected:
        raise SurgeryError(
            f"layer {consumer.name} has shape {tuple(student.weight.shape)} after removal, expected {expected}"
        )
    fit = LayerFit(consumer, index, original, student, settings.mode, offset_home(student, consumer.bn, model))
    fit.relu_after = relu_after and settings.relu and settings.mode in ("ls", "ldrf-patch")
    if settings.mode in LEAST_SQUARES:
        _least_squares(fit)
    elif settings.mode == "ldrf-patch":
        _patch(fit, weight, settings.energy)
    else:  # ldrf and ldrf-joint: the consumer's projection (ldrf-joint adds the producer in joint.py)
        _projection(fit, weight, settings.energy)
    return fit


def _least_squares(fit: LayerFit) -> None:
    fit.targets = [fit.output_target()]
    prior = fit.student.weight.detach().double().flatten(1).T.clone()  # (unknowns, outputs); not a view
    if fit.offset_in:
        own = fit.student.bias.detach().double() if fit.student.bias is not None else prior.new_zeros(prior.shape[1])
        prior = torch.cat([prior, own[None]])
    fit.prior = prior


def _projection(fit: LayerFit, weight: torch.Tensor, energy: float) -> None:
    embedding = embed(weight, energy)
    fit.targets = [Target(fit.name, fit.index, fit.original, False, embedding.q)]
    if fit.offset_in:
        fit.targets.append(fit.output_target(OUTPUT))
    fit.prior = embedding.q[fit.consumer.in_keep].clone()  # the kept channels' projection, as plain removal left it
    fit.basis, fit.rank = embedding.r, embedding.rank


def _patch(fit: LayerFit, weight: torch.Tensor, energy: float) -> None:
    """Targets are output rows (the embedding is P^T (y - b), P orthonormal), so the ReLU fit can use them too."""
    embedding = embed_outputs(weight, energy)
    fit.targets = [fit.output_target()]
    kept = _kept_columns(fit.student, fit.consumer, weight)
    prior = embedding.a[:, kept].T.clone()  # (kept unknowns, rank)
    fit.prior = torch.cat([prior, prior.new_zeros(1, embedding.rank)]) if fit.offset_in else prior
    fit.basis, fit.rank = embedding.p, embedding.rank


def _kept_columns(student: nn.Module, consumer: Consumer, weight: torch.Tensor) -> torch.Tensor:
    """Indices into weight[o].flatten() (c_in x k x k) of the kept input channels' entries."""
    area = weight[0, 0].numel() if weight.dim() > 2 else 1
    return (consumer.in_keep[:, None] * area + torch.arange(area)).flatten()


# --------------------------------------------------------------------------------------------------
# solving and writing


def statistics(fit: LayerFit, target: Target, passes: StudentPasses, rows, settings, *, intercept: bool, keep=False):
    return student_statistics(
        passes, fit.student, target, rows, count=settings.positions, seed=settings.seed, intercept=intercept,
        keep=keep,
    )  # fmt: skip


def solve_(fit: LayerFit, passes: StudentPasses, rows: dict[str, list], settings) -> dict:
    """Fit `fit` on the calibration samples, write the weights (and output offset) into the pruned layer, and
    return the record of it. `rows`: the teacher's target rows per target name."""
    model = passes.model
    main = fit.targets[0]
    if fit.mode == "ldrf-patch":
        stats = _embedding_statistics(fit, passes, rows[main.name], settings)
    else:
        stats = statistics(fit, main, passes, rows[main.name], settings, intercept=_intercept(fit),
                           keep=fit.relu_after)  # fmt: skip
    prior = fit.prior.to(stats.gram.device)
    solution = ridge_solve(stats.gram, stats.cross, prior, settings.ridge)
    _warn_if_regularised(fit, stats, solution)
    weights = solution.weights
    if fit.relu_after:
        weights = _after_relu(fit, model, stats, weights, settings)
    write_(fit, weights, model)
    if fit.mode in ("ldrf", "ldrf-joint") and fit.offset_in:
        fit_offset_(fit, passes, rows[fit.name + OUTPUT], settings)
    return _record(fit, stats, prior, weights, solution)


def _intercept(fit: LayerFit) -> bool:
    return fit.offset_in is not None and fit.mode in (*LEAST_SQUARES, "ldrf-patch")


def _embedding_statistics(fit: LayerFit, passes: StudentPasses, rows, settings) -> Statistics:
    """ldrf-patch: the statistics of the output rows Y turned into those of the embedding targets E = (Y - b) P
    (P orthonormal: the embedding of the output without its bias). A layer with a bias always fits an intercept,
    so the ones column's sums give A^T 1."""
    stats = statistics(fit, fit.targets[0], passes, rows, settings, intercept=_intercept(fit),
                       keep=fit.relu_after)  # fmt: skip
    bias, p = fit.targets[0].bias, fit.basis.to(stats.cross)
    if bias is not None:
        stats.cross = stats.cross - stats.gram[:, -1:] @ bias.to(stats.cross)[None]
    stats.cross = stats.cross @ p
    unbiased = [(r.to(p) - (bias.to(p) if bias is not None else 0.0)) @ p for r in rows]
    stats.energy = float(sum((e**2).sum() for e in unbiased))
    return stats


def _warn_if_regularised(fit: LayerFit, stats: Statistics, solution) -> None:
    if solution.regularised:
        log.warning(
            "%s: the calibration system is singular or nearly so (%d samples, %d unknowns); %s",
            fit.name, stats.samples, len(fit.prior),
            "kept as plain removal" if solution.ridge == float("inf") else f"regularised with ridge {solution.ridge:g}",
        )  # fmt: skip


def _after_relu(fit: LayerFit, model: nn.Module, stats: Statistics, start: torch.Tensor, settings) -> torch.Tensor:
    """The linear fit, refined to fit the output after the layer's BatchNorm and ReLU (relu_fit). The BatchNorm
    of the pruned network still holds the original statistics here (its offset is written after the fit)."""
    bn = model.get_submodule(fit.consumer.bn) if fit.consumer.bn else None
    scale, shift = bn_affine(bn, len(fit.consumer.out_keep), stats.rows)
    basis = None
    if fit.mode == "ldrf-patch":  # output = X V P^T + b: the layer's own bias stays, so it joins the shift
        basis = fit.basis.to(stats.rows)
        bias = fit.targets[0].bias
        shift = shift + scale * bias.to(shift) if bias is not None else shift
    return relu_fit(stats.rows, stats.targets, scale, shift, start, basis=basis, ridge=max(settings.ridge, 1e-8))


@torch.no_grad()
def write_(fit: LayerFit, solution: torch.Tensor, model: nn.Module) -> None:
    """Put the fitted weights into the pruned layer (and an intercept into its bias or BatchNorm)."""
    weight = fit.student.weight
    unknowns = len(fit.prior) - (1 if _intercept(fit) else 0)
    if fit.mode in LEAST_SQUARES:
        weight.copy_(solution[:unknowns].T.reshape(weight.shape).to(weight))
    elif fit.mode == "ldrf-patch":  # the change of the k x k part, mapped through P (what plain removal left stays)
        change = solution[:unknowns] - fit.prior[:unknowns].to(solution)
        weight.add_((fit.basis.to(solution) @ change.T).reshape(weight.shape).to(weight))
    else:  # the change of the kept channels' projection, recomposed through the rest of the layer
        change = solution[:unknowns] - fit.prior[:unknowns].to(solution)
        weight.add_(recompose(change, fit.basis.to(solution), weight.shape).to(weight))
    if _intercept(fit):
        intercept = solution[unknowns]
        offset = fit.basis.to(solution) @ intercept if fit.mode == "ldrf-patch" else intercept
        own = fit.prior[unknowns].to(solution)
        own = fit.basis.to(solution) @ own if fit.mode == "ldrf-patch" else own
        add_offset_(fit.student, fit.offset_in, model, offset - own)


@torch.no_grad()
def add_offset_(module: nn.Module, offset_in: str | None, model: nn.Module, offset: torch.Tensor) -> None:
    """Add a constant to `module`'s output: into its bias (`offset_in` "bias"), or (BN((W x + b) - mean) =
    BN(W x - (mean - b))) subtracted from the running mean of the BatchNorm `offset_in` names."""
    if offset_in == "bias":
        module.bias.add_(offset.to(module.bias))
    elif offset_in is not None:
        norm = model.get_submodule(offset_in)
        norm.running_mean.sub_(offset.to(norm.running_mean))


def fit_offset_(fit: LayerFit, passes: StudentPasses, rows: list, settings) -> None:
    """The output offset of the refitted weights, fitted on output patches (their true support at borders): the
    mean over the samples of the teacher's output minus the pruned layer's, per output."""
    stats = statistics(fit, fit.output_target(OUTPUT), passes, rows, settings, intercept=True)
    weight = fit.student.weight.detach().double().flatten(1).T.to(stats.gram)  # (unknowns, outputs)
    count = float(stats.gram[-1, -1])
    residual = (stats.cross[-1] - stats.gram[-1, :-1] @ weight) / max(count, 1.0)
    own = fit.student.bias.detach().double().to(residual) if fit.offset_in == "bias" else 0.0
    add_offset_(fit.student, fit.offset_in, passes.model, residual - own)


def _record(fit: LayerFit, stats: Statistics, prior: torch.Tensor, weights: torch.Tensor, solution) -> dict:
    consumer = fit.consumer
    return {
        "name": consumer.name,
        "mode": fit.mode + ("+relu" if fit.relu_after else ""),
        "inputs_kept": len(consumer.in_keep),
        "outputs": len(consumer.out_keep),
        "rank": fit.rank,
        "samples": stats.samples,
        "unknowns": len(prior),
        # relative squared error of what is fitted on the calibration samples (ls: the output before BN;
        # ldrf: the input's embedding; ldrf-patch: the output's embedding), as plain removal left the layer and
        # after the linear refit; output_error (run.py) compares every mode in one unit
        "fit_units": _FIT_UNITS.get(fit.mode, "input embedding"),
        "error_removed": round(relative_residual(stats.gram, stats.cross, stats.energy, prior), 6),
        "error_refitted": round(relative_residual(stats.gram, stats.cross, stats.energy, solution.weights), 6),
        "ridge": solution.ridge if solution.ridge != float("inf") else None,
        "regularised": solution.regularised,
        "offset_in": fit.offset_in if fit.offset_in != "bias" else None,
    }
