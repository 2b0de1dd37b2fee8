"""The closed-form pieces, in float64: ridge least squares pulled toward a prior, the cross-channel SVD of a
layer's weight (its embedding) and the recomposition of a projection into one weight tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Embedding",
    "OutputEmbedding",
    "Solution",
    "embed",
    "embed_outputs",
    "energy_rank",
    "recompose",
    "relative_residual",
    "relu_fit",
    "ridge_solve",
]

_ESCALATION = 100.0  # ridge growth per retry of a singular system
# Tries of a system, each with a ridge 100x the last (relative to the mean diagonal): the default ridge 1e-4
# goes up to 1e10, far past any usable system; ridge 0 tries 0, then 1e-10 (the floor below) up to 1e2.
_RETRIES = 8
_FLOOR = 1e-10  # the smallest relative ridge a singular system is retried with
# A system counts as singular when the squared ratio of its Cholesky factor's largest to smallest diagonal
# entry (a cheap lower bound of the condition number) exceeds this: float64 keeps ~16 digits.
_CONDITION_LIMIT = 1e12


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The fewest leading singular directions whose squared singular values hold `energy` of their sum (at
    least 1); `energy` 1 counts every direction of non-negligible power."""
    power = singular_values.detach().double() ** 2
    total = float(power.sum())
    if not total > 0:
        return 1
    share = min(energy, 1.0 - 1e-12)
    return min(len(power), int((power.cumsum(0) / total < share).sum()) + 1)


@dataclass(frozen=True)
class Embedding:
    """A layer's weight as a 1x1 projection of its c_in input channels onto `rank` directions followed by a
    layer from those directions to its outputs: W[o, i, kernel] = sum_j q[i, j] * r[j, o, kernel]. Exact when
    every direction is kept."""

    q: torch.Tensor  # (c_in, rank), orthonormal columns
    r: torch.Tensor  # (rank, c_out, K), singular values folded in; K = kernel area (1 for Linear)
    rank: int


def embed(weight: torch.Tensor, energy: float) -> Embedding:
    """The embedding of `weight` (c_out x c_in x k x k, or c_out x c_in) from the SVD of the weight arranged as
    c_in x (c_out k k), keeping the leading directions that hold `energy` of the spectrum's energy."""
    c_out, c_in = weight.shape[:2]
    rows = weight.detach().double().reshape(c_out, c_in, -1).transpose(0, 1).reshape(c_in, -1)
    u, s, vh = torch.linalg.svd(rows, full_matrices=False)
    rank = energy_rank(s, energy)
    return Embedding(u[:, :rank], (s[:rank, None] * vh[:rank]).reshape(rank, c_out, -1), rank)


def recompose(q: torch.Tensor, r: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The weight of `shape` (c_out, c_in, *kernel) computing projection `q` (c_in x rank), then `r`."""
    return torch.einsum("ij,jok->oik", q, r).reshape(shape)


@dataclass(frozen=True)
class Solution:
    weights: torch.Tensor  # (unknowns, targets)
    ridge: float  # the ridge used, relative to the mean diagonal of the Gram matrix (inf: fell back to the prior)
    regularised: bool  # the ridge had to be raised: the system was singular or nearly so


def ridge_solve(gram: torch.Tensor, cross: torch.Tensor, prior: torch.Tensor, ridge: float) -> Solution:
    """argmin_B |Y - A B|^2 + lam |B - prior|^2, i.e. (G + lam I)^-1 (C + lam prior), from G = A^T A and
    C = A^T Y. The ridge pulls toward `prior` (the layer as plain removal left it), so a direction the samples
    do not determine keeps its plain-removal value instead of going to zero. lam = ridge x the mean diagonal
    of G; a singular or badly conditioned system is retried with a ridge 100x larger, and if none works the
    prior is returned: never NaN weights."""
    scale = float(gram.diagonal().mean())
    if not scale > 0:  # every sampled input is zero: there is nothing to fit
        return Solution(prior, float("inf"), True)
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    relative, regularised = ridge, False
    for _ in range(_RETRIES):
        factor, info = torch.linalg.cholesky_ex(gram + relative * scale * eye)
        if int(info) == 0:
            diagonal = factor.diagonal()
            if float(diagonal.min()) > 0 and float((diagonal.max() / diagonal.min()) ** 2) < _CONDITION_LIMIT:
                weights = torch.cholesky_solve(cross + relative * scale * prior, factor)
                if bool(torch.isfinite(weights).all()):
                    return Solution(weights, relative, regularised)
        relative, regularised = max(relative * _ESCALATION, _FLOOR), True
    return Solution(prior, float("inf"), True)


def relative_residual(gram: torch.Tensor, cross: torch.Tensor, energy: float, weights: torch.Tensor) -> float:
    """|Y - A B|^2 / |Y|^2 from G = A^T A, C = A^T Y and |Y|^2 = `energy`: no sample needs to be kept."""
    error = energy - 2 * float((weights * cross).sum()) + float((weights * (gram @ weights)).sum())
    return max(error, 0.0) / energy if energy > 0 else 0.0


@dataclass(frozen=True)
class OutputEmbedding:
    """A layer's weight as a layer onto `rank` directions followed by a 1x1 mixing into its outputs (the low-rank
    split k x k -> d -> 1x1 of Zhang et al.): W[o] = sum_j p[o, j] * a[j], exact when every direction is kept."""

    p: torch.Tensor  # (c_out, rank), orthonormal columns
    a: torch.Tensor  # (rank, c_in k k), singular values folded in
    rank: int


def embed_outputs(weight: torch.Tensor, energy: float) -> OutputEmbedding:
    """The output-side embedding of `weight` (c_out x c_in x k x k, or c_out x c_in) from the SVD of the weight
    as c_out x (c_in k k), keeping the leading directions that hold `energy` of the spectrum's energy."""
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(rows, full_matrices=False)
    rank = energy_rank(s, energy)
    return OutputEmbedding(u[:, :rank], s[:rank, None] * vh[:rank], rank)


def _relu_targets(u: torch.Tensor, t: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_z (relu(z) - t)^2 + lam (z - u)^2, elementwise: the better of the best z <= 0 and the best z >= 0."""
    below = torch.clamp(u, max=0.0)
    above = torch.clamp((t + lam * u) / (1 + lam), min=0.0)
    cost_below = t**2 + lam * (below - u) ** 2
    cost_above = (above - t) ** 2 + lam * (above - u) ** 2
    return torch.where(cost_below < cost_above, below, above)


def relu_fit(
    rows: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    start: torch.Tensor,
    *,
    basis: torch.Tensor | None = None,
    ridge: float = 1e-4,
    schedule: tuple[tuple[float, int], ...] = ((0.1, 4), (1.0, 4)),
) -> torch.Tensor:
    """Fit after the nonlinearity: V minimising |relu(scale * (X V B^T) + shift) - relu(scale * Y + shift)|^2,
    with X = `rows` (N x unknowns), Y = `targets` (N x outputs, the original layer's output before its BatchNorm),
    `scale`, `shift` the BatchNorm's per-output affine map (1 and 0 without one) and B = `basis` (outputs x d;
    the identity when None). Zhang et al.'s alternation from `start`: for each penalty lam of `schedule`, its
    number of rounds of (z = the elementwise best pre-activation between the current one and the target's,
    then V = the weighted least squares of z on X), the ridge pulling V toward `start`."""
    gram = rows.T @ rows
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    factor = torch.linalg.cholesky(gram + ridge * float(gram.diagonal().mean()) * eye)
    weights = scale**2
    basis_gram = None if basis is None else basis.T @ (weights[:, None] * basis)
    wanted = torch.relu(scale * targets + shift)
    solution = start
    for lam, rounds in schedule:
        for _ in range(rounds):
            current = rows @ solution if basis is None else (rows @ solution) @ basis.T
            z = _relu_targets(scale * current + shift, wanted, lam)
            pre = (z - shift) / scale  # the pre-activation the layer should produce
            cross = rows.T @ pre if basis is None else rows.T @ (pre * weights) @ basis
            regularised = cross + ridge * float(gram.diagonal().mean()) * (
                start if basis is None else start @ basis_gram
            )
            solution = torch.cholesky_solve(regularised, factor)
            if basis_gram is not None:
                solution = solution @ torch.linalg.inv(basis_gram)
    return solution
