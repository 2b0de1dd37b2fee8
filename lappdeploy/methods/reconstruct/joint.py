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
a BatchNorm, read by nothing else, at the consumer's resolution; other layers get the `ldrf` projection fit.
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.data import epoch_seed
from lappdeploy.methods.reconstruct.calibration import _conv_patches, _pixels
from lappdeploy.methods.reconstruct.fits import OUTPUT, LayerFit, add_offset_, bn_affine, fit_offset_, write_
from lappdeploy.methods.reconstruct.layers import group_readers, unsupported
from lappdeploy.methods.reconstruct.linalg import _relu_targets, relative_residual, ridge_solve
from lappdeploy.methods.reconstruct.passes import StopForward, StudentPasses
from lappdeploy.surgery import ChannelGroups
from lappdeploy.surgery.graph import resolve_module

__all__ = ["JOINT_ROUNDS", "joint_producer", "solve_joint_"]

JOINT_ROUNDS = 3  # alternations of (Q-step, T-step, R-step): J falls most in the first (measured, docs)
_MU = 1e-2  # T-step pull toward the current activations, relative to the mean diagonal of Q' Q'^T


def joint_producer(groups: ChannelGroups, name: str) -> tuple[str, str] | str:
    """(producer conv, its BatchNorm) of the pruned channels layer `name` reads, or why there is no such pair."""
    layer = groups.layers[name]
    owners = [g.id for g in groups.prunable for _ in range(g.channels)]
    mapped = layer.in_map[layer.in_map >= 0].tolist() if layer.in_map is not None else []
    group_ids = {owners[p] for p in mapped}
    if len(group_ids) != 1 or len(mapped) != len(layer.in_map):
        return "it reads more than one channel group"
    (gid,) = group_ids
    if group_readers(groups)[gid] != [name]:
        return f"group {gid} is read by other layers too"
    group = groups.group(gid)
    producers = [m for m in group.modules if isinstance(resolve_module(groups.model, m), nn.modules.conv._ConvNd)]
    if len(producers) != 1 or unsupported(resolve_module(groups.model, producers[0])) is not None:
        return f"group {gid} is not produced by one plain Conv2d"
    bn = groups.bn_after_conv.get(producers[0])
    if bn is None:
        return f"producer {producers[0]} has no BatchNorm after it"
    return producers[0], bn


def _samples(fit: LayerFit, producer: nn.Module, passes: StudentPasses, settings):
    """(X: the producer's input patches with a column of ones, H: the consumer's input pixels) at the same
    positions, from the pruned network; None where the two do not share a resolution."""
    rows: dict[str, list[torch.Tensor]] = {"x": [], "h": []}
    batch = {"index": 0}

    def seed() -> int:
        return epoch_seed(settings.seed, batch["index"], fit.index)  # the consumer's positions, as the teacher's

    def on_producer(_module, args) -> None:
        patches = _conv_patches(producer, args[0], settings.positions, seed()).double()
        rows["x"].append(torch.cat([patches, patches.new_ones(len(patches), 1)], dim=1))

    def on_consumer(_module, args) -> None:
        rows["h"].append(_pixels(fit.student, args[0], settings.positions, seed()).double())
        raise StopForward

    handles = [producer.register_forward_pre_hook(on_producer), fit.student.register_forward_pre_hook(on_consumer)]
    try:
        passes.run(lambda index: batch.update(index=index))
    finally:
        for handle in handles:
            handle.remove()
    x, h = torch.cat(rows["x"]), torch.cat(rows["h"])
    return (x, h) if len(x) == len(h) else None


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
def solve_joint_(fit: LayerFit, pair: tuple[str, str], passes: StudentPasses, rows, settings) -> dict | None:
    """Refit the producer's kept filters and the consumer's projection together; None where the two layers do not
    share a resolution (the caller fits the projection alone)."""
    model = passes.model
    producer, bn = model.get_submodule(pair[0]), model.get_submodule(pair[1])
    samples = _samples(fit, producer, passes, settings)
    if samples is None:
        return None
    x, h = samples
    targets = torch.cat(rows[fit.name]).to(x)
    weight = producer.weight.detach().double()
    own = producer.bias.detach().double() if producer.bias is not None else weight.new_zeros(len(weight))
    filters = torch.cat([weight.flatten(1).T, own[None]])  # (unknowns + 1, kept)
    scale, shift = bn_affine(bn, len(weight), x)
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
