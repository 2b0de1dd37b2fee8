"""Width steps: the channel multiples at which a layer's latency jumps
(docs/latency.md#width-steps-and---round-to-auto).

Runtimes pad channels to their vector or tile width (ONNX Runtime's AVX-512 convolutions work in blocks of
16 floats, FP16 Tensor Cores in multiples of 8): inside a block the latency barely moves, at the next block
it jumps. `lappdeploy profile` times one conv per prunable group at every output width of a window just
below its full width (a probe); `detect_multiple` reads the block size off the probe, and `--round-to auto`
rounds each group to its own block size (`group_multiples`) instead of one global multiple.
"""

from __future__ import annotations

import math

import numpy as np

from lappdeploy.latency.table import LatencyTable, LatencyTableError
from lappdeploy.surgery import ChannelGroups

__all__ = ["PROBE_SPAN", "STEP_CANDIDATES", "detect_multiple", "group_multiples", "probe_layers", "probe_widths"]

STEP_CANDIDATES = (2, 4, 8, 16, 32)  # block sizes (channels) looked for; 1 means no steps
PROBE_SPAN = 32  # output widths probed below the full width: two blocks of 16, the AVX-512 float vector


def probe_widths(channels: int, span: int = PROBE_SPAN) -> list[int]:
    """Every output width from `channels - span` (at least 1) to `channels`."""
    return list(range(max(1, channels - span), channels + 1))


def _l1_fit(design: np.ndarray, values: np.ndarray, iterations: int = 50) -> float:
    """Sum of absolute residuals of the least-absolute-deviations fit (iteratively reweighted least
    squares): one slow grid point (a scheduler hiccup) must not decide the block size."""
    weights = np.ones_like(values)
    scale = max(float(np.median(np.abs(values))), 1e-12) * 1e-6
    for _ in range(iterations):
        root = np.sqrt(weights)[:, None]
        coef, *_ = np.linalg.lstsq(design * root, values * root[:, 0], rcond=None)
        residual = np.abs(values - design @ coef)
        weights = 1.0 / np.maximum(residual, scale)
    return float(residual.sum())


def _score(sad: float, floor: float, n: int, parameters: int) -> float:
    """BIC under Laplace errors: lower is better; each parameter must pay for itself. Residuals below `floor`
    (ms, far under any timing noise) count as exact, so of two exact fits the one with fewer levels wins."""
    return n * math.log(max(sad, floor) / n) + parameters * math.log(n)


def detect_multiple(widths: list[int], ms: list[float], candidates: tuple[int, ...] = STEP_CANDIDATES) -> int:
    """The block size m (channels) of the latency steps in a probe (latency `ms` at consecutive `widths`),
    or 1 where the latency grows smoothly. Each candidate m models the latency as a common slope plus one
    level per block of m widths ending at a multiple of m (padding to the next multiple); m = 1 is a straight
    line. The model with the lowest BIC wins, so a coarser m wins only where the jumps between blocks stand
    out of the noise, and m and 2m are told apart by the jumps in the middle of the 2m blocks. A layer whose
    every width fits one block of m and whose latency is flat gets m: narrowing it saves nothing."""
    w = np.asarray(widths, dtype=np.float64)
    t = np.asarray(ms, dtype=np.float64)
    n = len(w)
    floor = 1e-6 * float(np.abs(t).sum())
    line = np.stack([np.ones(n), w - w.mean()], axis=1)
    best, best_score = 1, _score(_l1_fit(line, t), floor, n, 2)
    for m in candidates:
        blocks = np.ceil(w / m).astype(int)
        levels = np.unique(blocks)
        if len(levels) == 1:  # the whole layer fits one block: one level, flat (width costs nothing here)
            design = np.ones((n, 1))
        else:
            design = np.concatenate([(blocks[:, None] == levels[None, :]).astype(float), line[:, 1:]], axis=1)
        score = _score(_l1_fit(design, t), floor, n, design.shape[1])
        if score < best_score:
            best, best_score = m, score
    return best


def _producers(groups: ChannelGroups, group) -> list[str]:
    """Names of the layers writing `group`'s channels."""
    names = []
    for name, layer in groups.layers.items():
        out_map = getattr(layer, "out_map", None)
        if out_map is not None and bool(((out_map >= group.offset) & (out_map < group.offset + group.channels)).any()):
            names.append(name)
    return names


def probe_layers(groups: ChannelGroups, specs: list) -> dict[str, str]:
    """Per prunable group, the layer whose output widths are probed: its widest-reaching producer conv
    (most input channels x kernel area), a plain conv or linear (depthwise layers follow their producer's
    width, grouped convs step in whole blocks already)."""
    by_name = {spec.name: spec for spec in specs}
    chosen = {}
    for group in groups.prunable:
        candidates = [
            by_name[name] for name in _producers(groups, group)
            if name in by_name and by_name[name].kind in ("conv", "linear") and by_name[name].groups == 1
        ]  # fmt: skip
        if candidates:
            best = max(candidates, key=lambda s: s.in_channels * math.prod(s.kernel or (1,)))
            chosen[group.id] = best.name
    return chosen


def group_multiples(groups: ChannelGroups, table: LatencyTable, *, source: str = "the latency table") -> dict[str, int]:
    """`--round-to auto`: per prunable group, the block size its probed producer's latency steps at (the
    coarsest of its probed producers); groups with no probe (depthwise-only or grouped producers) get 1."""
    if not table.steps:
        raise LatencyTableError(
            f"--round-to auto reads the width steps of {source}, which has none: profile again with "
            "`lappdeploy profile` (it probes them unless --no-probe-steps) or give --round-to K"
        )
    multiples = {}
    for group in groups.prunable:
        found = [table.steps[name]["multiple"] for name in _producers(groups, group) if name in table.steps]
        multiples[group.id] = max(found, default=1)
    return multiples
