"""The closed-form pieces, in float64: ridge least squares pulled toward a prior, the cross-channel SVD of a
layer's weight (its embedding) and the recomposition of a projection into one weight tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Embedding", "Solution", "embed", "energy_rank", "recompose", "relative_residual", "ridge_solve"]

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
