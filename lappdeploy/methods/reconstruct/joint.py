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

`--reconstruct ls-joint` is the same alternation with `ls`'s objective, the consumer's output Y before its
BatchNorm, in place of the embedding (a control: the producers refitted as ldrf-joint refits them, the consumer
as `ls` fits it). Its samples are the consumer's k x k input patches P at its sampled output positions; the
T-step asks for whole patches (P* from Y and the consumer's fitted kernel, the same closed form), and the R-step
fits the producer at every pixel a patch reads (k x k rows per sample; a tap in the zero padding is no pixel
and stays 0). Where the pair does not hold, or the consumer is not a convolution, the layer gets the `ls` fit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lappdeploy.data import epoch_seed
from lappdeploy.methods.reconstruct.calibration import (
    _conv_patches,
    _pixels,
    conv_patches_at,
    output_size,
    sampled_outputs,
)
from lappdeploy.methods.reconstruct.fits import OUTPUT, LayerFit, add_offset_, bn_affine, fit_offset_, write_
from lappdeploy.methods.reconstruct.linalg import Solution, _relu_targets, relative_residual, ridge_solve
from lappdeploy.methods.reconstruct.passes import StopForward, StudentPasses

__all__ = ["JOINT_ROUNDS", "solve_joint_", "solve_ls_joint_"]

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


def _wanted_inputs(targets: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The T-step: the non-negative inputs H* that the fitted map q turns into `targets`, pulled toward the current
    inputs h: (targets q^T + mu h) (q q^T + mu I)^-1, clipped at 0."""
    inner = q @ q.T
    mu = _MU * float(inner.diagonal().mean())
    factor = torch.linalg.cholesky(inner + mu * torch.eye(len(inner), dtype=inner.dtype, device=inner.device))
    return torch.clamp(torch.cholesky_solve((targets @ q.T + mu * h).T, factor).T, min=0)


def _producer_factor(x: torch.Tensor, settings) -> tuple[torch.Tensor, float]:
    """The Cholesky factor of the R-step's ridge system on the producer's patches x, and its ridge pull."""
    gram = x.T @ x
    pull = max(settings.ridge, 1e-8) * float(gram.diagonal().mean())
    return torch.linalg.cholesky(gram + pull * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)), pull


def _fit_consumer(samples: torch.Tensor, targets: torch.Tensor, prior: torch.Tensor, settings) -> tuple:
    """A round's consumer step, shared by both joint modes: the ridge least squares of `targets` on `samples`
    (pulled toward `prior`) and its squared error on them."""
    solution = ridge_solve(samples.T @ samples, samples.T @ targets, prior, settings.ridge)
    return solution, float(((targets - samples @ solution.weights) ** 2).sum())


def _alternate(x, h, targets, q_prior, filters, scale, shift, settings) -> tuple[Solution, torch.Tensor, list]:
    """The (Q' solution, producer filters) of lowest J over JOINT_ROUNDS alternations, and J after each round."""
    factor, pull = _producer_factor(x, settings)
    best, history = None, []
    for _ in range(JOINT_ROUNDS):
        solution, error = _fit_consumer(h, targets, q_prior, settings)
        history.append(error)
        if best is None or error < best[0]:
            best = (error, solution, filters)
        filters = _r_step(x, factor, filters, _wanted_inputs(targets, solution.weights, h), scale, shift, pull)
        h = _activations(x, filters, scale, shift)
    return best[1], best[2], history


@torch.no_grad()
def solve_joint_(fit: LayerFit, pair: tuple[str, str], passes: StudentPasses, rows, settings) -> dict | str:
    """Refit the producer's kept filters and the consumer's projection together; where the pair does not have the
    form the joint fit assumes, why (the caller fits the projection alone)."""
    model = passes.model
    producer = model.get_submodule(pair[0])
    samples = _samples(fit, producer, passes, settings)
    if isinstance(samples, str):
        return samples
    x, h = samples
    targets = torch.cat(rows[fit.name]).to(x)
    filters, own, scale, shift = _producer_state(producer, model.get_submodule(pair[1]), x)
    if not _chain_holds(x, h, filters, scale, shift):
        return "the layer's input is not the producer's BatchNorm and ReLU output"
    solution, filters, history = _alternate(x, h, targets, fit.prior.to(x), filters, scale, shift, settings)
    _write_producer_(producer, pair, model, filters, own)
    write_(fit, solution.weights, model)
    if fit.offset_in:
        fit_offset_(fit, passes, rows[fit.name + OUTPUT], settings)
    removed = relative_residual(h.T @ h, h.T @ targets, float((targets**2).sum()), fit.prior.to(x))
    return _joint_record(fit, pair, "input embedding", len(x), (filters, solution), removed, history, targets)


@torch.no_grad()
def solve_ls_joint_(fit: LayerFit, pair: tuple[str, str], passes: StudentPasses, rows, settings) -> dict | str:
    """`ls-joint`: the producer's kept filters and the consumer's k x k kernel (and output offset) refitted together
    to the consumer's output; where the pair does not have the form the joint fit assumes, why (the caller fits the
    consumer by `ls` alone)."""
    if not isinstance(fit.student, nn.Conv2d):
        return "the layer is not a convolution (ls-joint pairs k x k patches with the producer's pixels)"
    model = passes.model
    producer = model.get_submodule(pair[0])
    samples = _tap_samples(fit, producer, passes, settings)
    if isinstance(samples, str):
        return samples
    p, x, inside = samples
    targets = torch.cat(rows[fit.name]).to(x)
    filters, own, scale, shift = _producer_state(producer, model.get_submodule(pair[1]), x)
    channels = len(fit.consumer.in_keep)
    if not _chain_holds(x, _by_tap(p, channels)[inside], filters, scale, shift):
        return "the layer's input is not the producer's BatchNorm and ReLU output"
    solution, filters, history = _alternate_patches(p, x, inside, targets, fit, filters, (scale, shift), settings)
    _write_producer_(producer, pair, model, filters, own)
    write_(fit, solution.weights, model)
    a = _with_ones(p, fit.offset_in is not None)
    removed = relative_residual(a.T @ a, a.T @ targets, float((targets**2).sum()), fit.prior.to(x))
    return _joint_record(fit, pair, "output", len(p), (filters, solution), removed, history, targets)


def _producer_state(producer: nn.Module, bn: nn.Module, like: torch.Tensor) -> tuple:
    """(filters: the producer's kept filters with its offset as the last row, (unknowns + 1, kept); its own offset;
    its BatchNorm's scale and shift)."""
    weight = producer.weight.detach().double()
    own = producer.bias.detach().double() if producer.bias is not None else weight.new_zeros(len(weight))
    filters = torch.cat([weight.flatten(1).T, own[None]]).to(like)
    return filters, own.to(like), *bn_affine(bn, len(weight), like)


def _write_producer_(producer: nn.Module, pair: tuple[str, str], model: nn.Module, filters, own) -> None:
    producer.weight.copy_(filters[:-1].T.reshape(producer.weight.shape).to(producer.weight))
    add_offset_(producer, "bias" if producer.bias is not None else pair[1], model, filters[-1] - own)


def _joint_record(fit, pair, units: str, samples: int, fitted: tuple, removed: float, history, targets) -> dict:
    """`fitted`: the chosen round's (producer filters, the consumer's Solution)."""
    filters, solution = fitted
    energy = float((targets**2).sum())
    return {
        "name": fit.name,
        "mode": fit.mode,
        "producer": pair[0],
        "producer_bn": pair[1],
        "inputs_kept": len(fit.consumer.in_keep),
        "outputs": len(fit.consumer.out_keep),
        "rank": fit.rank,
        "samples": samples,
        "unknowns": len(fit.prior) + filters.numel() // filters.shape[1],
        "fit_units": units,
        "error_removed": round(removed, 6),
        "error_refitted": round(min(history) / energy, 6) if energy > 0 else 0.0,
        "joint_error": [round(e / energy, 6) for e in history] if energy > 0 else history,
        "ridge": solution.ridge if solution.ridge != float("inf") else None,
        "regularised": solution.regularised,
        "offset_in": fit.offset_in if fit.offset_in != "bias" else None,
    }


# --------------------------------------------------------------------------------------------------
# ls-joint: patches


def _tap_samples(fit: LayerFit, producer: nn.Module, passes: StudentPasses, settings) -> tuple | str:
    """(P: the consumer's k x k input patches at its sampled output positions, the `ls` samples; X: the producer's
    input patches, with a column of ones, at each pixel those patches read; inside: which (sample, tap) pairs read
    a pixel rather than the zero padding), from the pruned network; or why the two cannot be paired."""
    rows: dict[str, list[torch.Tensor]] = {"p": [], "x": [], "inside": []}
    state: dict = {"index": 0, "where": None, "problem": None}

    def on_producer(_module, args, output) -> None:
        """The producer's patches at the pixels the consumer's sampled patches will read, if the consumer's input has
        the output's size (checked there): taken here, before anything downstream can write into its input."""
        if state["where"] is not None:
            state["problem"] = state["problem"] or "the producer runs more than once before the layer"
        seed = epoch_seed(settings.seed, state["index"], fit.index)  # the positions `ls` and the teacher sample
        state["where"], state["size"] = sampled_outputs(fit.student, output, settings.positions, seed), output.shape
        pixels, inside = _tap_pixels(fit.student, output, state["where"])
        patches = conv_patches_at(producer, args[0], pixels)[inside.flatten()].double()
        rows["x"].append(torch.cat([patches, patches.new_ones(len(patches), 1)], dim=1))
        rows["inside"].append(inside.flatten())

    def on_consumer(_module, args) -> None:
        h, where, state["where"] = args[0], state["where"], None
        if where is None:
            state["problem"] = state["problem"] or "the producer does not run before the layer"
        elif state["size"][2:] != h.shape[2:]:
            state["problem"] = state["problem"] or "the producer's output and the layer's input differ in size"
        else:
            rows["p"].append(conv_patches_at(fit.student, h, where).double())
        raise StopForward

    handles = [producer.register_forward_hook(on_producer), fit.student.register_forward_pre_hook(on_consumer)]
    try:
        passes.run(lambda index: state.update(index=index, where=None))
    finally:
        for handle in handles:
            handle.remove()
    if state["problem"] or not rows["p"]:
        return state["problem"] or "the producer does not run before the layer"
    return torch.cat(rows["p"]), torch.cat(rows["x"]), torch.cat(rows["inside"])


def _tap_pixels(conv: nn.Conv2d, x: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the output positions `where` (images, P) of `conv` on input `x`: the input pixel each kernel tap reads,
    as a row-major index into x's map (images, P k k; 0 where the tap is in the padding), and whether it is
    inside the map, in the order of the patch columns' taps."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    height, width = x.shape[2:]
    out_w = output_size(conv, x)[1]
    rows = (where // out_w * sh - ph)[..., None, None] + (torch.arange(kh, device=x.device) * dh)[:, None]
    cols = (where % out_w * sw - pw)[..., None, None] + (torch.arange(kw, device=x.device) * dw)[None, :]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)  # (images, P, kh, kw)
    pixels = torch.where(inside, rows * width + cols, torch.zeros_like(rows))
    return pixels.flatten(1), inside.flatten(1)


def _by_tap(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """Patches (n, channels k k) as one row of channels per (sample, tap): (n k k, channels)."""
    n = len(patches)
    return patches.reshape(n, channels, -1).transpose(1, 2).reshape(-1, channels)


def _with_taps(patches: torch.Tensor, values: torch.Tensor, inside: torch.Tensor, channels: int) -> torch.Tensor:
    """`patches` with the taps inside the map replaced by `values` (the padding's zeros kept)."""
    tapped = torch.zeros_like(_by_tap(patches, channels))
    tapped[inside] = values
    return tapped.reshape(len(patches), -1, channels).transpose(1, 2).reshape(patches.shape)


def _wanted_patches(residual, kernel: torch.Tensor, p: torch.Tensor, inside: torch.Tensor, channels: int):
    """The T-step on patches: the taps inside the map that the kernel (channels k k, outputs) turns into `residual`
    (the output less its offset), by _wanted_inputs over those taps alone (a padded tap is fixed at 0, not free),
    per pattern of inside taps (a border position has fewer). One row of channels per inside tap, laid out as
    _by_tap(p)[inside]."""
    n, taps = len(p), kernel.shape[0] // channels
    current = _by_tap(p, channels).reshape(n, taps, channels)
    by_tap = kernel.reshape(channels, taps, -1).transpose(0, 1)  # (taps, channels, outputs)
    wanted = torch.zeros_like(current)
    patterns, which = torch.unique(inside.reshape(n, taps), dim=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        samples, kept = (which == index).nonzero()[:, 0], pattern.nonzero()[:, 0]
        q = by_tap[kept].reshape(-1, by_tap.shape[2])  # (inside taps x channels, outputs)
        fitted = _wanted_inputs(residual[samples], q, current[samples][:, kept].reshape(len(samples), -1))
        wanted[samples[:, None], kept[None, :]] = fitted.reshape(len(samples), len(kept), channels)
    return wanted.reshape(-1, channels)[inside]


def _with_ones(p: torch.Tensor, intercept: bool) -> torch.Tensor:
    return torch.cat([p, p.new_ones(len(p), 1)], dim=1) if intercept else p


def _alternate_patches(p, x, inside, targets, fit: LayerFit, filters, affine, settings) -> tuple:
    """ls-joint's alternation: the (consumer kernel solution, with its intercept row; producer filters) of lowest
    output error over JOINT_ROUNDS rounds, and the error after each round. Round 1's kernel is the `ls` fit."""
    scale, shift = affine
    factor, pull = _producer_factor(x, settings)
    intercept, channels, prior = fit.offset_in is not None, len(fit.consumer.in_keep), fit.prior.to(x)
    best, history = None, []
    for _ in range(JOINT_ROUNDS):
        solution, error = _fit_consumer(_with_ones(p, intercept), targets, prior, settings)
        history.append(error)
        if best is None or error < best[0]:
            best = (error, solution, filters)
        kernel = solution.weights
        weights, offset = (kernel[:-1], kernel[-1]) if intercept else (kernel, 0.0)
        wanted = _wanted_patches(targets - offset, weights, p, inside, channels)
        filters = _r_step(x, factor, filters, wanted, scale, shift, pull)
        p = _with_taps(p, _activations(x, filters, scale, shift), inside, channels)
    return best[1], best[2], history
