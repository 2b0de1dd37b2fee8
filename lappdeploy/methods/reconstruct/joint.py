"""`--reconstruct ldrf-joint`: the consumer's projection refitted jointly with the kept filters of the layer that
produces the pruned channels (docs/ldrf.md#reconstruction).

With E = Q^T y the teacher's embedding of the consumer's input y, X the producer's k x k input patches at the
same pixels (pruned network), R' the producer's kept filters and a, c its BatchNorm's affine map, the pruned
network's consumer input is H = relu(a * (X R'^T) + c) and J = |E - H Q'|^2. Alternating least squares, from
plain removal (R' as the producer has it, Q' = Q[kept]):

- Q-step: Q' = the ridge least squares of E on H (the `ldrf` projection fit);
- T-step: the kept activations the embedding wants, H* = (E Q'^T + mu H) (Q' Q'^T + mu I)^-1, clipped at 0;
- R-step: R' = the producer's filters (and output offset) producing H* through its BatchNorm and ReLU, by the
  elementwise best pre-activation between the current one and H*'s, then least squares on X;

keeping the (Q', R') of lowest J. Only where the consumer reads one group, produced by one plain conv followed by
a BatchNorm, read by nothing else, and whose input is H at the same pixels (checked on the samples, to
_CHAIN_TOLERANCE: a pooling between the two fails it); other layers get the `ldrf` projection fit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lappdeploy.data import epoch_seed
from lappdeploy.methods.reconstruct.calibration import _conv_patches, _pixels
from lappdeploy.methods.reconstruct.fits import OUTPUT, LayerFit, add_offset_, bn_affine, fit_offset_, write_
from lappdeploy.methods.reconstruct.linalg import _relu_targets, relative_residual, ridge_solve
from lappdeploy.methods.reconstruct.passes import StopForward, StudentPasses

__all__ = ["JOINT_ROUNDS", "solve_joint_"]

JOINT_ROUNDS = 3  # alternations of (Q-step, T-step, R-step): J falls most in the first (measured, docs)
_MU = 1e-2  # T-step pull toward the current activations, relative to the mean diagonal of Q' Q'^T
# relative error allowed between the consumer's input and relu(BatchNorm(producer)) on the samples: float32 passes
# are near 1e-6 from the float64 model, TF32 convolutions on CUDA near 1e-3; a pooling between the two is O(0.1-1).
# An op this close to the identity (a ReLU6 that rarely clips) passes: the joint model is that nearly right there.
_CHAIN_TOLERANCE = 5e-2


def _samples(fit: LayerFit, producer: nn.Module, passes: StudentPasses, settings) -> tuple | str:
    """(X: the producer's input patches with a column of ones, H: the consumer's input pixels) at the same
    positions, from the pruned network; or why the two cannot be paired: the producer must run once per pass
    before the consumer, and its output must have as many pixels per image as the consumer's input (a pooling or
    a stride between them would make one position index name different pixels)."""
    rows: dict[str, list[torch.Tensor]] = {"x": [], "h": []}
    pixels: dict[str, set[int]] = {"x": set(), "h": set()}
    batch = {"index": 0}

    def seed() -> int:
        return epoch_seed(settings.seed, batch["index"], fit.index)  # the consumer's positions, as the teacher's

    def on_producer(_module, args, output) -> None:
        pixels["x"].add(math.prod(output.shape[2:]))
        patches = _conv_patches(producer, args[0], settings.positions, seed()).double()
        rows["x"].append(torch.cat([patches, patches.new_ones(len(patches), 1)], dim=1))

    def on_consumer(_module, args) -> None:
        pixels["h"].add(math.prod(args[0].shape[2:]))  # a Linear's input after a flatten: 1
        rows["h"].append(_pixels(fit.student, args[0], settings.positions, seed()).double())
        raise StopForward

    handles = [producer.register_forward_hook(on_producer), fit.student.register_forward_pre_hook(on_consumer)]
    try:
        passes.run(lambda index: batch.update(index=index))
    finally:
        for handle in handles:
            handle.remove()
    if len(rows["x"]) != len(rows["h"]):
        return "the producer does not run once per pass before the layer"
    if len(pixels["x"] | pixels["h"]) != 1:
        return "the producer's output and the layer's input differ in size"
    return torch.cat(rows["x"]), torch.cat(rows["h"])  # equal pixels per image: equal samples per image


def _chain_holds(x, h, filters, scale, shift) -> bool:
    """Whether the consumer's input is the producer's BatchNorm + ReLU output at the sampled pixels (what J
    assumes), within _CHAIN_TOLERANCE."""
    if h.shape[1] != filters.shape[1]:
        return False  # the layer reads the producer's channels rearranged (a flatten of a larger map)
    modelled = _activations(x, filters, scale, shift)
    return float(((modelled - h) ** 2).sum()) <= _CHAIN_TOLERANCE**2 * max(float((h**2).sum()), 1e-30)


def _activations(x: torch.Tensor, filters: torch.Tensor, scale, shift) -> torch.Tensor:
    return torch.relu(scale * (x @ filters) + shift)


def _r_step(x, gram_factor, filters, wanted, scale, shift, ridge_pull) -> torch.Tensor:
    """The producer's filters ((unknowns, kept) incl. the offset row) whose activations approach `wanted`."""
    z = _relu_targets(scale * (x @ filters) + shift, wanted, 1.0)
    cross = x.T @ ((z - shift) / scale) + ridge_pull * filters
    return torch.cholesky_solve(cross, gram_factor)


def _alternate(x, h, targets, q_prior, filters, scale, shift, settings) -> tuple[torch.Tensor, torch.Tensor, list]:
    """The (Q', producer filters) of lowest J over JOINT_ROUNDS alternations, and J after each round."""
    gram = x.T @ x
    pull = max(settings.ridge, 1e-8) * float(gram.diagonal().mean())
    factor = torch.linalg.cholesky(gram + pull * torch.eye(len(gram), dtype=gram.dtype))
    best, history = None, []
    for _ in range(JOINT_ROUNDS):
        q = ridge_solve(h.T @ h, h.T @ targets, q_prior, settings.ridge).weights
        error = float(((targets - h @ q) ** 2).sum())
        history.append(error)
        if best is None or error < best[0]:
            best = (error, q, filters)
        inner = q @ q.T
        mu = _MU * float(inner.diagonal().mean())
        eye = torch.eye(len(inner), dtype=inner.dtype)
        wanted = torch.clamp((targets @ q.T + mu * h) @ torch.linalg.inv(inner + mu * eye), min=0)
        filters = _r_step(x, factor, filters, wanted, scale, shift, pull)
        h = _activations(x, filters, scale, shift)
    return best[1], best[2], history


@torch.no_grad()
def solve_joint_(fit: LayerFit, pair: tuple[str, str], passes: StudentPasses, rows, settings) -> dict | str:
    """Refit the producer's kept filters and the consumer's projection together; where the pair does not have the
    form the joint fit assumes, why (the caller fits the projection alone)."""
    model = passes.model
    producer, bn = model.get_submodule(pair[0]), model.get_submodule(pair[1])
    samples = _samples(fit, producer, passes, settings)
    if isinstance(samples, str):
        return samples
    x, h = samples
    targets = torch.cat(rows[fit.name]).to(x)
    weight = producer.weight.detach().double()
    own = producer.bias.detach().double() if producer.bias is not None else weight.new_zeros(len(weight))
    filters = torch.cat([weight.flatten(1).T, own[None]])  # (unknowns + 1, kept)
    scale, shift = bn_affine(bn, len(weight), x)
    if not _chain_holds(x, h, filters, scale, shift):
        return "the layer's input is not the producer's BatchNorm and ReLU output"
    q, filters, history = _alternate(x, h, targets, fit.prior.to(x), filters, scale, shift, settings)
    producer.weight.copy_(filters[:-1].T.reshape(producer.weight.shape).to(producer.weight))
    add_offset_(producer, "bias" if producer.bias is not None else pair[1], model, filters[-1] - own)
    write_(fit, q, model)
    if fit.offset_in:
        fit_offset_(fit, passes, rows[fit.name + OUTPUT], settings)
    gram, cross, energy = h.T @ h, h.T @ targets, float((targets**2).sum())
    return {
        "name": fit.name,
        "mode": "ldrf-joint",
        "producer": pair[0],
        "producer_bn": pair[1],
        "inputs_kept": len(fit.consumer.in_keep),
        "outputs": len(fit.consumer.out_keep),
        "rank": fit.rank,
        "samples": len(x),
        "unknowns": len(fit.prior) + filters.numel() // filters.shape[1],
        "fit_units": "input embedding",
        "error_removed": round(relative_residual(gram, cross, energy, fit.prior.to(x)), 6),
        "error_refitted": round(min(history) / energy, 6) if energy > 0 else 0.0,
        "joint_error": [round(e / energy, 6) for e in history] if energy > 0 else history,
        "ridge": settings.ridge,
        "regularised": False,
        "offset_in": fit.offset_in if fit.offset_in != "bias" else None,
    }
