"""Profiling a model's layers into a latency table (docs/latency.md#profiling).

Every conv and linear layer of the dense model is timed alone, as the deploy model runs it (BN folded into
the conv's bias, followed by its ReLU, which ONNX Runtime fuses), over a grid of (input width, output
width); layers of the same shape share their measurements (at int8, but for the layer reading the model's
input, which ModelOpt may quantize where it does not quantize a later one). The whole dense model is timed with
the bench protocol, and the difference to the sum of its layers at full width is the table's remainder (element-wise
ops, pooling, per-call overhead). Isolated layers also carry work a whole model shares (layout reorders at
graph boundaries, one runtime call each), so the table's scales and `remainder_ms` are fitted on the dense
model and a few pruned ones, all timed whole (`_calibrate`, `latency.calibration`).

Per grid point the timing is short (a warm-up by calls and time, then the median of timed calls, or the mean
of their kernels on OpenVINO, whose counters keep only means): a table
has hundreds to thousands of points; whole models are timed with `lappdeploy bench`'s full protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lappdeploy.bench.openvino_session import OpenVinoSession
from lappdeploy.bench.protocol import LatencyStats, TimingPolicy, measure_batch
from lappdeploy.bench.sessions import OrtSession, TorchSession
from lappdeploy.environment import package_version, versions
from lappdeploy.errors import ConfigError, ExportError
from lappdeploy.export.onnx_export import deploy_copy, to_onnx
from lappdeploy.export.qdq import to_int8_qdq_onnx
from lappdeploy.export.qdq_layer import quantize_layer_graph_
from lappdeploy.io import cache_root
from lappdeploy.latency.calibration import calibration_models, fit_calibration
from lappdeploy.latency.table import LatencyTable, LatencyTableError, LayerTable, device_fingerprint
from lappdeploy.surgery import analyze

__all__ = [
    "LAYER_TIMINGS",
    "LayerSpec",
    "PointTiming",
    "cached_profile",
    "check_precision",
    "default_cache_dir",
    "layer_grids",
    "layer_onnx",
    "layer_specs",
    "layer_timing",
    "measure_model_ms",
    "measure_models_ms",
    "probed_specs",
    "profile_key",
    "profile_model",
    "speed_drift",
    "width_grid",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]  # (what, fraction done)


@dataclass(frozen=True)
class PointTiming:
    """How long one grid point is timed: warm-up calls and seconds (both), then timed calls until both
    `calls` and `seconds` are reached or `max_seconds` have passed (at least `min_calls` calls)."""

    warmup_calls: int = 10
    warmup_seconds: float = 0.02
    calls: int = 25
    seconds: float = 0.05
    max_seconds: float = 0.5
    min_calls: int = 5


@dataclass(frozen=True)
class LayerSpec:
    """One conv or linear layer of the deploy model, as it is called (input shape per sample)."""

    name: str
    kind: str  # conv, depthwise or linear
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    input_hw: tuple[int, ...] = ()
    reads_input: bool = False  # it reads the model's input tensor itself (int8: may be quantized where others are not)

    @property
    def shape_key(self) -> tuple:
        """Layers with the same key cost the same at the same widths (in fp32; int8 also asks `reads_input`)."""
        return (self.kind, self.in_channels, self.out_channels, self.kernel, self.stride, self.padding,
                self.dilation, self.groups, self.input_hw)  # fmt: skip

    def timing_key(self, precision: str) -> tuple:
        """Layers with the same key share their timings at `precision`."""
        return (*self.shape_key, self.reads_input) if precision == "int8" else self.shape_key

    def geometry(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in ("name", "kind", "reads_input")}


def layer_specs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """The conv / linear layers of `model` (eval, one sample of `input_shape`), in execution order."""
    specs: dict[str, LayerSpec] = {}
    handles = []
    x = torch.zeros((1, *input_shape))

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple, _output) -> None:
            if name in specs:
                return
            if isinstance(module, nn.Linear):
                specs[name] = LayerSpec(name, "linear", module.in_features, module.out_features,
                                        reads_input=inputs[0] is x)  # fmt: skip
                return
            if isinstance(module.padding, str):
                raise ConfigError(f"layer {name}: padding={module.padding!r} is not profiled; use explicit padding")
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            specs[name] = LayerSpec(
                name, "depthwise" if depthwise else "conv", module.in_channels, module.out_channels,
                tuple(module.kernel_size), tuple(module.stride), tuple(module.padding), tuple(module.dilation),
                module.groups, tuple(inputs[0].shape[2:]), inputs[0] is x,
            )  # fmt: skip

        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return list(specs.values())


def width_grid(width: int, step: int, points: int, multiple: int = 1) -> list[int]:
    """Widths a layer dimension of `width` channels is timed at: every multiple of `step` (and 1 and the
    full width) when that is at most `points` widths, else `points` of them spread evenly, ends included.
    Grouped convs need widths that are multiples of their groups (`multiple`)."""
    unit = math.lcm(step, multiple)
    candidates = sorted({multiple, width, *range(unit, width + 1, unit)})
    if len(candidates) <= points:
        return candidates
    picks = np.linspace(0, len(candidates) - 1, points).round().astype(int)
    return sorted({candidates[i] for i in picks})


def _graph_module(spec: LayerSpec, c_in: int, c_out: int) -> nn.Module:
    if spec.kind == "linear":
        return nn.Sequential(nn.Linear(c_in, c_out))
    groups = c_out if spec.kind == "depthwise" else spec.groups
    conv = nn.Conv2d(c_in, c_out, spec.kernel, spec.stride, spec.padding, spec.dilation, groups, bias=True)
    return nn.Sequential(conv, nn.ReLU())


def _input_shape(spec: LayerSpec, c_in: int) -> tuple[int, ...]:
    return (c_in,) if spec.kind == "linear" else (c_in, *spec.input_hw)


def layer_onnx(spec: LayerSpec, c_in: int, c_out: int, batch: int, path: Path, *, precision: str = "fp32") -> None:
    """The layer alone as an ONNX graph (Conv + bias + Relu, or Gemm), with random weights; at int8 with the Q/DQ
    pairs the INT8 graph gives the layer (`export.qdq_layer`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    module = _graph_module(spec, c_in, c_out)
    layer = module[0]
    weight = numpy_helper.from_array(rng.standard_normal(layer.weight.shape).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(layer.bias.shape).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *_input_shape(spec, c_in)])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if spec.kind == "linear":
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="layer", transB=1)]
    else:
        pads = list(spec.padding) * 2
        conv = helper.make_node(
            "Conv", ["x", "w", "b"], ["z"], name="layer", kernel_shape=list(spec.kernel), strides=list(spec.stride),
            pads=pads, dilations=list(spec.dilation), group=layer.groups,
        )  # fmt: skip
        nodes = [conv, helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "layer", [x], [y], initializer=[weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if precision == "int8":
        quantize_layer_graph_(model, fed_by_input=spec.reads_input)
    onnx.save(model, path)


# runtimes a table can be profiled on here (trtexec tables are timed on the device: latency.trtexec_profile);
# the ONNX ones time each layer as a one-layer ONNX graph (OpenVINO: its CPU plugin, at the table's precision)
PROFILED_RUNTIMES = ("ort", "torch", "openvino")
ONNX_RUNTIMES = ("ort", "openvino")


LAYER_TIMINGS = ("kernels", "calls")


OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")


def check_precision(runtime: str, precision: str) -> None:
    """Tables are fp32 but on OpenVINO, which also profiles bf16 (AMX or AVX-512 BF16 CPUs) and int8 (the Q/DQ
    graph `lappdeploy export` writes: layers alone get the pairs it gives them, `export.qdq_layer`)."""
    allowed = OPENVINO_PRECISIONS if runtime == "openvino" else ("fp32",)
    if precision not in allowed:
        raise ConfigError(
            f"--precision {precision}: --runtime {runtime} profiles {', '.join(allowed)} "
            "(bf16 and int8: --runtime openvino; bf16 on a CPU with AMX or AVX-512 BF16)"
        )


def layer_timing(runtime: str, device: str, asked: str | None = None) -> str:
    """How a layer alone is timed: "kernels" (its nodes' time from the runtime's profiler: ONNX Runtime's or
    OpenVINO's performance counters, on the CPU, layout conversions left out) or "calls" (the wall time of a
    call); `asked` where given. By default kernels wherever there is such a profiler. A layer alone pays what it
    does not pay inside a model: the call's overhead and, on the CPU, the conversion of its input and output
    between NCHW and the blocked layout its kernel runs in, which inside a model happens once at the model's
    edges. At 224 px those conversions cost more than many convs (MobileNetV2 at batch 8: 60 ms measured whole,
    102 ms as the sum of its layers timed alone, 56 ms as the sum of their kernels), and they do not scale with a
    layer's cost, so no fitted scale undoes them. On OpenVINO fp32 the counters predicted 10 random plans within
    10% in 10 of 10 (ResNet-20 at 28 px, MobileNetV2 at 224 px), the calls in 3 and 8 (docs/openvino.md). A GPU
    provider's profile times kernel launches, not kernels: there the wall time is kept."""
    profiled = runtime in ONNX_RUNTIMES and device == "cpu"
    if asked is None:
        return "kernels" if profiled else "calls"
    if asked not in LAYER_TIMINGS:
        raise ConfigError(f"layer timing {asked!r}: choose one of {', '.join(LAYER_TIMINGS)}")
    if asked == "kernels" and not profiled:
        raise ConfigError(f"--runtime {runtime} on {device} has no kernel profiler here: time its layers by calls")
    return asked


def _onnx_session(
    runtime: str, path: Path, *, device: str, threads: int, kernel_profile: bool = False, precision: str = "fp32"
):
    """A timing session of the ONNX graph at `path` on one of ONNX_RUNTIMES (`precision`: OpenVINO's)."""
    if runtime == "openvino":
        return OpenVinoSession(path, threads=threads, kernel_profile=kernel_profile, precision=precision)
    return OrtSession(path, provider=device, threads=threads, kernel_profile=kernel_profile)


def _point_session(spec, c_in, c_out, *, runtime, device, batch, threads, precision, scratch: Path, timed_by: str):
    """A session timing the layer `spec` at (c_in, c_out) on `runtime` at `precision`."""
    if runtime in ONNX_RUNTIMES:
        path = scratch / "layer.onnx"
        layer_onnx(spec, c_in, c_out, batch, path, precision=precision)
        return _onnx_session(runtime, path, device=device, threads=threads, kernel_profile=timed_by == "kernels",
                             precision=precision)  # fmt: skip
    torch.set_num_threads(threads)
    return TorchSession(_graph_module(spec, c_in, c_out), _input_shape(spec, c_in), device=device)


def _time_point(session, batch: int, timing: PointTiming) -> float:
    """Latency (ms) of one isolated layer: of its kernels where the session profiles them (`layer_timing`; ONNX
    Runtime: their median, OpenVINO: their mean over the timed calls), else the median of its calls."""
    session.set_batch(batch)
    start, calls = time.perf_counter(), 0
    while calls < timing.warmup_calls or time.perf_counter() - start < timing.warmup_seconds:
        session.infer()
        calls += 1
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.append(session.infer()[0])
        elapsed = time.perf_counter() - start
        enough = len(samples) >= timing.calls and elapsed >= timing.seconds
        if enough or (elapsed >= timing.max_seconds and len(samples) >= timing.min_calls):
            break
    if getattr(session, "kernel_profiled", False):
        return session.typical_kernel_ms(len(samples))  # over the timed calls, after the warm-up ones
    return LatencyStats.of(samples).median_ms


def layer_grids(spec: LayerSpec, step: int, points: int) -> tuple[list[int], list[int]]:
    """(input widths, output widths) the layer is timed at; a depthwise layer has one width (input grid [0])."""
    multiple = 1 if spec.kind in ("linear", "depthwise") else spec.groups
    out_grid = width_grid(spec.out_channels, step, points, multiple)
    in_grid = [0] if spec.kind == "depthwise" else width_grid(spec.in_channels, step, points, multiple)
    return in_grid, out_grid


def measure_model_ms(model: nn.Module, input_shape: tuple[int, ...], **settings: Any) -> float:
    """Median latency (ms per batch) of a whole model (its deploy form: BN and bypass folded) on a runtime,
    timed by the bench protocol; `settings` are `measure_models_ms`'s (runtime, device, batch, threads, seconds,
    precision)."""
    return measure_models_ms([model], input_shape, **settings)[0]


TIMING_CALIBRATION_IMAGES = 32  # random images: a graph's int8 speed does not depend on its scales' values


def _timing_int8_onnx(path: Path, input_shape: tuple[int, ...]) -> Path:
    """The INT8 Q/DQ graph `lappdeploy export --trt --precision int8` writes, next to the fp32 graph at `path`,
    calibrated on seeded random images: fit for timing only (its accuracy is meaningless)."""
    images = np.random.default_rng(0).standard_normal((TIMING_CALIBRATION_IMAGES, *input_shape)).astype(np.float32)
    int8 = path.with_name(f"{path.stem}_int8.onnx")
    try:
        to_int8_qdq_onnx(path, int8, [images])
    except ExportError as exc:
        raise ConfigError(f"timing a model at int8 needs its INT8 graph, which failed: {exc}") from None
    return int8


def measure_models_ms(
    models: Sequence[nn.Module],
    input_shape: tuple[int, ...],
    *,
    runtime: str = "ort",
    device: str = "cpu",
    batch: int = 8,
    threads: int = 1,
    seconds: float = 2.0,
    precision: str = "fp32",
) -> list[float]:
    """Median latency (ms per batch) of each model's deploy form (BN and bypass folded) on `runtime`, timed by
    the bench protocol for `seconds` of calls each, interleaved in one session (its rounds), so that a drift of
    the machine's speed moves all of them alike: compare them with each other. `precision`: OpenVINO's (fp32,
    bf16, or int8: the graph `export` writes, calibrated on random images)."""
    policy = TimingPolicy(min_seconds=seconds, min_samples=50, warmup_seconds=min(1.0, seconds / 2),
                          throughput_seconds=0.1)  # fmt: skip
    example = torch.zeros((2, *input_shape))
    with tempfile.TemporaryDirectory(prefix="lappdeploy-latency-") as scratch:
        sessions = []
        for index, model in enumerate(models):
            if runtime in ONNX_RUNTIMES:
                path = Path(scratch) / f"model{index}.onnx"
                to_onnx(model, example, path, dynamic_batch=True)
                if precision == "int8":
                    path = _timing_int8_onnx(path, input_shape)
                sessions.append(_onnx_session(runtime, path, device=device, threads=threads, precision=precision))
            else:
                torch.set_num_threads(threads)
                sessions.append(TorchSession(deploy_copy(model, example), input_shape, device=device))
        return [timing.latency.median_ms for timing in measure_batch(sessions, batch, policy)]


def profile_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    model_name: str,
    runtime: str = "ort",
    device: str = "cpu",
    batch: int = 8,
    threads: int = 1,
    points: int = 12,
    step: int = 8,
    timing: PointTiming | None = None,
    dense_seconds: float = 3.0,
    probe_steps: bool = True,
    progress: Progress | None = None,
    timed_by: str | None = None,
    precision: str = "fp32",
) -> LatencyTable:
    """Time every conv / linear layer of `model` over its width grid, then (`probe_steps`) one producer per
    prunable group at every width of a window below its full width (`latency.steps`), then whole models;
    the latency table of this model on this runtime, device, batch and thread count. `timed_by`: "kernels" or
    "calls" for the layers (`layer_timing`; None: the runtime's default); `precision`: fp32, or on OpenVINO bf16
    (refused where the CPU has no native bf16) or int8 (`check_precision`)."""
    if runtime not in PROFILED_RUNTIMES:
        raise ConfigError(
            f"--runtime {runtime}: profiling runs {', '.join(PROFILED_RUNTIMES)} here (trtexec: see --runtime trtexec)"
        )
    if runtime == "openvino" and device != "cpu":
        raise ConfigError("--runtime openvino profiles OpenVINO's CPU plugin: use --device cpu")
    check_precision(runtime, precision)
    start, timing = time.perf_counter(), timing or PointTiming()
    timed_by = layer_timing(runtime, device, timed_by)
    where = {"runtime": runtime, "device": device, "batch": batch, "threads": threads, "precision": precision}
    dense_before = measure_model_ms(model, input_shape, seconds=dense_seconds, **where)  # vs the end: drift
    specs = layer_specs(deploy_copy(model, torch.zeros((2, *input_shape))), input_shape)
    shapes: dict[tuple, tuple[list[int], list[int]]] = {}
    for spec in specs:
        shapes.setdefault(spec.shape_key, layer_grids(spec, step, points))
    timed_grids = {spec.timing_key(precision): shapes[spec.shape_key] for spec in specs}
    total = sum(len(a) * len(b) for a, b in timed_grids.values())
    measured: dict[tuple, list[list[float]]] = {}
    done = 0
    with tempfile.TemporaryDirectory(prefix="lappdeploy-profile-") as scratch:
        for spec in specs:
            if spec.timing_key(precision) in measured:
                continue
            in_grid, out_grid = shapes[spec.shape_key]
            rows = []
            for c_in in in_grid:
                row = []
                for c_out in out_grid:
                    session = _point_session(spec, c_out if spec.kind == "depthwise" else c_in, c_out,
                                             scratch=Path(scratch), timed_by=timed_by, **where)  # fmt: skip
                    row.append(round(_time_point(session, batch, timing), 5))
                    del session
                    done += 1
                    if progress is not None:
                        progress(f"layers {done}/{total}", 0.8 * done / total)
                rows.append(row)
            measured[spec.timing_key(precision)] = rows
        probe_where = {**where, "scratch": Path(scratch), "timed_by": timed_by}
        steps = _probe_steps(model, input_shape, specs, timing, progress, **probe_where) if probe_steps else {}
    layers = {
        spec.name: LayerTable(spec.kind, *shapes[spec.shape_key], measured[spec.timing_key(precision)], spec.geometry())
        for spec in specs
    }
    if progress is not None:
        progress("whole models", 0.9)
    fit = _calibrate(model, input_shape, layers, step=step, seconds=dense_seconds, **where)
    if progress is not None:
        progress("done", 1.0)
    dense_after = fit.records[0]["measured_ms"]
    drift = speed_drift(dense_before, dense_after)
    if drift:
        log.warning("%s", drift)
    return LatencyTable(
        model=model_name, input_shape=list(input_shape), batch=batch, threads=threads, runtime=runtime,
        device=device, fingerprint=device_fingerprint(runtime, device), layers=layers,
        dense_ms=dense_after, **fit.table_fields(), profile_s=round(time.perf_counter() - start, 1), points=points,
        step=step, measurements=total + _distinct_probe_points(steps), steps=steps,
        provenance={"versions": versions(), "point_timing": asdict(timing), "dense_ms_before": round(dense_before, 5),
                    "layer_graph": _layer_graph_name(runtime, precision),
                    "layer_timing": _layer_timing_name(runtime, timed_by),
                    "precision": precision},
    )  # fmt: skip


def _layer_timing_name(runtime: str, timed_by: str) -> str:
    if timed_by == "calls":
        return "calls (wall clock)"
    return "kernels (counters, mean of the timed calls)" if runtime == "openvino" else "kernels (profiler)"


def _layer_graph_name(runtime: str, precision: str) -> str:
    if runtime == "torch":
        return "torch conv + relu"
    graph = "conv + bias + relu (BN folded)"
    return f"{graph}, Q/DQ pairs where the int8 graph has them" if precision == "int8" else graph


SPEED_DRIFT = 0.10  # the dense model timed before and after profiling may differ by this share (10%)


def speed_drift(before_ms: float, after_ms: float) -> str | None:
    """A warning when the dense model, timed before and after the profile, differs by more than SPEED_DRIFT:
    the machine's speed changed while the layers were timed (other load, a memory-bound model on a shared
    host), so the table mixes two speeds; else None."""
    if abs(after_ms / before_ms - 1) <= SPEED_DRIFT:
        return None
    return (
        f"the dense model timed {before_ms:.4g} ms before profiling and {after_ms:.4g} ms after: the machine's "
        "speed changed while profiling; profile again on a quiet machine (--refresh)"
    )


def probed_specs(model: nn.Module, input_shape: tuple[int, ...], specs: list[LayerSpec]) -> list[LayerSpec]:
    """The layers whose output widths are probed for width steps (`steps.probe_layers`: one per prunable
    group), sorted by name; ORT, torch and trtexec profiles probe the same ones."""
    from lappdeploy.latency.steps import probe_layers

    groups = analyze(model, torch.zeros((2, *input_shape)))
    by_name = {spec.name: spec for spec in specs}
    return [by_name[name] for name in sorted(set(probe_layers(groups, specs).values()))]


def _probe_steps(model, input_shape, specs: list[LayerSpec], timing: PointTiming, progress, **where) -> dict:
    """Per probed layer (`probed_specs`), its latency at every output width of `steps.probe_widths` at full
    input width, with the block size its latency steps at; layers of one shape share their probe."""
    from lappdeploy.latency.steps import detect_multiple, probe_widths

    probed = probed_specs(model, input_shape, specs)
    keys = {spec.name: spec.timing_key(where["precision"]) for spec in probed}
    distinct = len(set(keys.values()))
    timed: dict[tuple, dict] = {}
    for spec in probed:
        if keys[spec.name] in timed:
            continue
        widths = probe_widths(spec.out_channels)
        ms = []
        for width in widths:
            session = _point_session(spec, spec.in_channels, width, **where)
            ms.append(round(_time_point(session, where["batch"], timing), 5))
            del session
        timed[keys[spec.name]] = {"widths": widths, "ms": ms, "multiple": detect_multiple(widths, ms)}
        if progress is not None:
            progress(f"width steps {len(timed)}/{distinct}", 0.8 + 0.1 * len(timed) / distinct)
    return {spec.name: dict(timed[keys[spec.name]]) for spec in probed}


def _distinct_probe_points(steps: dict) -> int:
    """Widths timed by the probes: layers of one shape share theirs."""
    distinct = {(tuple(p["widths"]), tuple(p["ms"])) for p in steps.values()}
    return sum(len(widths) for widths, _ in distinct)


def _calibrate(model, input_shape, layers: dict[str, LayerTable], *, step: int, seconds: float, **where):
    """Time the calibration models whole here and fit the table's scales and remainder (`fit_calibration`)."""
    groups, models = calibration_models(model, input_shape, step)
    # interleaved in one session: a drift of the machine's speed while they are timed moves all of them alike
    measured_ms = measure_models_ms([pruned for _, pruned in models], input_shape, seconds=seconds, **where)
    return fit_calibration(groups, layers, [(plan, ms) for (plan, _), ms in zip(models, measured_ms, strict=True)])


def default_cache_dir() -> Path:
    """Where profiled tables are cached: $XDG_CACHE_HOME/lappdeploy/latency (default ~/.cache/...)."""
    return cache_root() / "latency"


def profile_key(model: nn.Module, input_shape: tuple[int, ...], **settings) -> str:
    """A name for the table of this model's layer shapes under these settings on this machine and runtime."""
    specs = layer_specs(deploy_copy(model, torch.zeros((2, *input_shape))), input_shape)
    fingerprint = device_fingerprint(settings["runtime"], settings["device"])
    # how layers are timed is part of the key: a table cached before kernel timing is not reused
    timing = layer_timing(settings["runtime"], settings["device"], settings.get("timed_by"))
    if settings["runtime"] == "openvino" and timing == "kernels":
        # tables cached before OpenVINO's counters were read as the mean of the timed calls are not reused
        timing = "kernels, mean of the timed calls"
    # fp32 keys as before; int8 keys say where the Q/DQ pairs sit: which layer reads the input, ModelOpt's rules
    int8 = settings.get("precision") == "int8"
    layers = [{k: v for k, v in vars(s).items() if int8 or k != "reads_input"} for s in specs]
    if int8:
        fingerprint = {**fingerprint, "modelopt": package_version("nvidia-modelopt")}
    text = json.dumps([layers, list(input_shape), settings, fingerprint, timing], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_profile(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    model_name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
    progress: Progress | None = None,
    **settings,
) -> tuple[LatencyTable, Path, bool]:
    """(table, its path, whether it was reused): the cached table of this model, settings and machine, else
    a fresh profile saved to the cache. `settings` are `profile_model`'s (runtime, device, batch, ...)."""
    defaults = {"runtime": "ort", "device": "cpu", "batch": 8, "threads": 1, "points": 12, "step": 8}
    settings = {**defaults, "probe_steps": True, **settings}
    path = Path(cache_dir or default_cache_dir()) / f"{model_name}-{profile_key(model, input_shape, **settings)}.json"
    if path.is_file() and not refresh:
        try:
            return LatencyTable.load(path), path, True
        except LatencyTableError:
            log.warning("cached latency table %s is unreadable: profiling again", path)
    table = profile_model(model, input_shape, model_name=model_name, progress=progress, **settings)
    return table, table.save(path), False
