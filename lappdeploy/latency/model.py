"""A differentiable latency model (docs/latency.md#the-latency-model): the predicted latency (ms per batch)
of a masked model is the sum over its conv and linear layers of each layer's table, interpolated
bilinearly at the layer's soft kept input and output widths, times the table's fitted scale of its kind,
plus its remainder (all fitted on whole models when it was profiled, `latency.calibration`).

It reads the same kept counts as the analytic MACs model (`surgery.CostModel.kept_counts`), so it is a
drop-in replacement for it wherever a method budgets a cost: LAPP's penalty, the budget guarantee at the
freeze and the landing of rounded widths (`measure`). Exact at the grid points; between them the
gradient is the slope of the enclosing grid cell, so where a table grows with width, removing channels
never raises the prediction.
"""

from __future__ import annotations

import torch

from lappdeploy.latency.table import LatencyTable, LatencyTableError
from lappdeploy.surgery import ChannelGroups, ChannelPlan, cost_model

__all__ = ["LatencyModel", "interpolate"]


def _axis(grid: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower index, upper index, weight of the upper one) of `x` on an increasing `grid`; outside the
    grid the value is held at its end (no extrapolation)."""
    if grid.numel() == 1:
        zero = torch.zeros((), dtype=torch.long, device=grid.device)
        return zero, zero, torch.zeros_like(x)
    clamped = torch.minimum(torch.maximum(x, grid[0]), grid[-1])
    upper = torch.searchsorted(grid, clamped.detach().reshape(1)).reshape(()).clamp(1, grid.numel() - 1)
    lower = upper - 1
    weight = (clamped - grid[lower]) / (grid[upper] - grid[lower])
    return lower, upper, weight


def interpolate(in_grid: torch.Tensor, out_grid: torch.Tensor, ms: torch.Tensor, c_in, c_out) -> torch.Tensor:
    """Bilinear interpolation of the table `ms` (len(in_grid) x len(out_grid)) at widths (c_in, c_out)."""
    i0, i1, wi = _axis(in_grid, c_in)
    j0, j1, wj = _axis(out_grid, c_out)
    low = ms[i0, j0] * (1 - wj) + ms[i0, j1] * wj
    high = ms[i1, j0] * (1 - wj) + ms[i1, j1] * wj
    return low * (1 - wi) + high * wi


class LatencyModel:
    """Predicted latency (ms per batch at the table's batch size) of `groups.model` under a kept mask."""

    def __init__(self, groups: ChannelGroups, table: LatencyTable, *, source: str = "the latency table") -> None:
        self.groups, self.table = groups, table
        self.cost = cost_model(groups)
        self.entries: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, bool]] = []
        self.kinds: list[str] = []  # per entry: the layer's kind (conv, depthwise, linear)
        missing = []
        for index, (name, kind) in enumerate(zip(self.cost.names, self.cost.kinds, strict=True)):
            if kind == "bn":  # an unfolded BN is element-wise: the remainder covers it
                continue
            layer = table.layers.get(name)
            if layer is None:
                missing.append(name)
                continue
            grids = (
                torch.tensor(layer.in_grid, dtype=torch.float64),
                torch.tensor(layer.out_grid, dtype=torch.float64),
            )
            self.entries.append((index, *grids, torch.tensor(layer.ms, dtype=torch.float64), layer.tied))
            self.kinds.append(layer.kind)
        if missing:
            shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise LatencyTableError(
                f"{source} has no entry for layer(s) {shown} of this model (it was profiled on {table.model}); "
                "profile this model with `lappdeploy profile`"
            )
        self.scales = torch.tensor([table.layer_scale(kind) for kind in self.kinds], dtype=torch.float64)
        self._on: dict[torch.device, list] = {}

    def _entries(self, device: torch.device) -> list:
        if device not in self._on:
            self._on[device] = [
                (i, a.to(device), b.to(device), ms.to(device), tied) for i, a, b, ms, tied in self.entries
            ]
        return self._on[device]

    def layer_ms(self, keep_mask: torch.Tensor) -> torch.Tensor:
        """Interpolated latency of every profiled layer (ms, float64), differentiable in `keep_mask`."""
        c_in, c_out = self.cost.kept_counts(keep_mask)
        values = [
            interpolate(in_grid, out_grid, ms, c_in.new_zeros(()) if tied else c_in[index], c_out[index])
            for index, in_grid, out_grid, ms, tied in self._entries(c_in.device)
        ]
        return torch.stack(values) if values else c_in.new_zeros(0)

    def __call__(self, keep_mask: torch.Tensor) -> torch.Tensor:
        """Predicted latency in ms (float64 scalar), differentiable in `keep_mask`."""
        layer_ms = self.layer_ms(keep_mask)
        return (self.scales.to(layer_ms.device) * layer_ms).sum() + self.table.remainder_ms

    def kind_ms(self, plan: ChannelPlan) -> dict[str, float]:
        """The table's values at the plan's widths, unscaled, summed per layer kind (ms): what the table's
        scales are fitted on."""
        with torch.no_grad():
            layer_ms = self.layer_ms(plan.keep_mask(self.groups)).tolist()
        out: dict[str, float] = {}
        for kind, ms in zip(self.kinds, layer_ms, strict=True):
            out[kind] = out.get(kind, 0.0) + ms
        return out

    def plan_ms(self, plan: ChannelPlan) -> float:
        """Predicted latency (ms) of the model pruned by `plan`: a `measure` for the landing helpers."""
        with torch.no_grad():
            return float(self(plan.keep_mask(self.groups)))

    @property
    def dense_ms(self) -> float:
        """Predicted latency of the dense model (ms; the measured one is the table's `dense_ms`)."""
        return self.plan_ms(ChannelPlan())
