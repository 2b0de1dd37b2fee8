"""Reduced-precision ONNX graphs for strongly typed TensorRT (11.x, and trtexec.sh for any family).

TensorRT 11 removed the FP16/INT8 builder flags and calibrators: the network's types come from the
ONNX itself. So FP16 means an FP16 graph (here with float32 inputs and outputs kept, Cast nodes at
the edges) and INT8 means QuantizeLinear/DequantizeLinear pairs in the graph. Both are made with
ONNX Runtime's own converters and checked against the fp32 graph with ONNX Runtime on the CPU.

INT8 follows TensorRT's explicit-quantization rules: symmetric scales (zero point 0), per-channel
weights (axis 0), per-tensor activations at the inputs of Conv, Gemm and MatMul, scales from the
same entropy calibration on the same images as the implicit (8.6/10) path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lappdeploy.errors import ExportError
from lappdeploy.export.onnx_export import check_onnx
from lappdeploy.export.trt_recipes import FP16_ONNX, QDQ_ONNX
from lappdeploy.io import give_default_permissions
from lappdeploy.optional import require

__all__ = ["QUANTIZED_OPS", "to_fp16_onnx", "to_int8_qdq_onnx", "write_precision_onnx"]

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


def to_fp16_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an FP16 copy of the ONNX at `src` to `dst` (atomically), keeping float32 inputs/outputs."""
    onnx = require("onnx", purpose="converting ONNX to FP16")
    require("onnxruntime", purpose="converting ONNX to FP16")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(os.fspath(src))
    with contextlib.redirect_stdout(io.StringIO()):
        converted = convert_float_to_float16(model, keep_io_types=True)
    _sort_topologically_(converted.graph)  # the converter appends its input Casts at the end
    return _save_checked(converted, Path(dst), check_onnx)


def _sort_topologically_(graph) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ExportError("the ONNX graph has a cycle or an input no node produces")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = [type(node)() for node in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _save_checked(model, dst: Path, check) -> Path:
    onnx = require("onnx", purpose="saving ONNX models")
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        check(tmp)
        give_default_permissions(tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dst


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over float32 (N, C, H, W) arrays."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._batches = iter(batches)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += int(batch.shape[0])
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice():
    """quantize_static logs (on the root logger) advice to run its pre-processing, which rewrites the
    graph; we quantize the checked, simplified graph as is."""
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def to_int8_qdq_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: Iterable[np.ndarray],
    *,
    input_name: str = "input",
    method: str = "entropy",
) -> int:
    """Write a Q/DQ INT8 copy of the ONNX at `src` to `dst` (atomically), with activation scales
    calibrated on `calibration` (float32 batches, already normalised as the model expects).
    Returns the number of calibration images used."""
    require("onnxruntime", purpose="INT8 quantization of ONNX models")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax}
    if method not in methods:
        raise ExportError(f"calibration method must be one of {', '.join(methods)} (got {method!r})")
    dst = Path(dst)
    reader = _Batches(input_name, calibration)
    with tempfile.TemporaryDirectory(prefix=".qdq-", dir=dst.parent) as scratch:
        out = Path(scratch) / "model_int8.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()), _without_preprocessing_advice():
                quantize_static(
                    os.fspath(src),
                    out,
                    reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(QUANTIZED_OPS),
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    extra_options={
                        "ActivationSymmetric": True,  # TensorRT supports zero point 0 only
                        "WeightSymmetric": True,
                        "CalibTensorRangeSymmetric": True,
                    },
                )
        except Exception as exc:
            raise ExportError(f"INT8 Q/DQ quantization failed: {type(exc).__name__}: {exc}") from None
        if reader.count == 0:
            raise ExportError("INT8 calibration needs at least one image (got none)")
        onnx = require("onnx", purpose="saving ONNX models")
        _save_checked(onnx.load(out), dst, check_onnx)
    log.debug("INT8 Q/DQ model %s calibrated on %d images (%s)", dst, reader.count, method)
    return reader.count


def write_precision_onnx(
    variant: str, src: str | os.PathLike[str], dst: str | os.PathLike[str], calibration: Iterable[np.ndarray] | None
) -> int | None:
    """Write the reduced-precision copy `variant` (FP16_ONNX or QDQ_ONNX of `trt_recipes`) of the fp32 ONNX
    at `src` to `dst`; returns the number of calibration images a Q/DQ graph was calibrated on, else None."""
    if variant == FP16_ONNX:
        to_fp16_onnx(src, dst)
        return None
    if variant == QDQ_ONNX:
        return to_int8_qdq_onnx(src, dst, calibration)
    raise ExportError(f"no converter writes {variant!r}; expected {FP16_ONNX} or {QDQ_ONNX}")
