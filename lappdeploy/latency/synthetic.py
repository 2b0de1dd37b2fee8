"""Modelled latency tables (no timing): every layer costs `overhead_ms` plus `ms_per_gmac` per 10^9 MACs of the
batch, on the same grids `lappdeploy profile` would time, with output widths padded to a multiple of `pad_to`
(a runtime's vector width) and the width-step probes `--round-to auto` reads. For tests and dry runs of a
latency budget; a real budget needs a measured table (`profile_model`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lappdeploy.export.onnx_export import deploy_copy
from lappdeploy.latency.profile import LayerSpec, layer_grids, layer_specs, probed_specs
from lappdeploy.latency.steps import detect_multiple, probe_widths
from lappdeploy.latency.table import LatencyTable, LayerTable, device_fingerprint

__all__ = ["synthetic_table"]


def _macs(spec: LayerSpec, c_in: int, c_out: int) -> float:
    """MACs per sample of the layer at these widths (depthwise: c_in is unused)."""
    if spec.kind == "linear":
        return c_in * c_out
    out_hw = [
        (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        for size, pad, dil, k, stride in zip(spec.input_hw, spec.padding, spec.dilation, spec.kernel, spec.stride,
                                             strict=True)
    ]  # fmt: skip
    per_position = math.prod(spec.kernel) * (c_out if spec.kind == "depthwise" else c_in // spec.groups * c_out)
    return math.prod(out_hw) * per_position


def synthetic_table(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    model_name: str = "model",
    batch: int = 8,
    ms_per_gmac: float = 20.0,
    overhead_ms: float = 0.01,
    remainder_ms: float = 0.05,
    step: int = 8,
    points: int = 12,
    runtime: str = "ort",
    device: str = "cpu",
    pad_to: int = 1,
) -> LatencyTable:
    """A table of `model` whose every value grows with both widths (monotone), fingerprinted for this machine."""
    specs = layer_specs(deploy_copy(model, torch.zeros((2, *input_shape))), input_shape)

    def ms_at(spec: LayerSpec, c_in: int, c_out: int) -> float:
        padded = math.ceil(c_out / pad_to) * pad_to
        macs = _macs(spec, padded if spec.kind == "depthwise" else c_in, padded)
        return overhead_ms + ms_per_gmac * batch * macs / 1e9

    layers, full = {}, 0.0
    for spec in specs:
        in_grid, out_grid = layer_grids(spec, step, points)
        ms = [[ms_at(spec, c_in, c_out) for c_out in out_grid] for c_in in in_grid]
        layers[spec.name] = LayerTable(spec.kind, in_grid, out_grid, ms, spec.geometry())
        full += ms[-1][-1]
    steps = {}
    for spec in probed_specs(model, input_shape, specs):
        widths = probe_widths(spec.out_channels)
        ms = [ms_at(spec, spec.in_channels, w) for w in widths]
        steps[spec.name] = {"widths": widths, "ms": ms, "multiple": detect_multiple(widths, ms)}
    return LatencyTable(
        model=model_name, input_shape=list(input_shape), batch=batch, threads=1, runtime=runtime, device=device,
        fingerprint=device_fingerprint(runtime, device), layers=layers, remainder_ms=remainder_ms,
        dense_ms=full + remainder_ms, points=points, step=step, provenance={"synthetic": True}, steps=steps,
    )  # fmt: skip
