"""Reduced-precision ONNX graphs: what strongly typed TensorRT (11.x) builds from, what INT8 means on
every family (explicit quantization, `lappdeploy.export.qdq`), and what ONNX Runtime times at fp16.

FP16 comes from NVIDIA ModelOpt's AutoCast (`convert_to_mixed_precision`, low_precision_type fp16): it
runs the fp32 graph once and keeps in fp32 the nodes whose values or initializers FP16 cannot hold,
with float32 inputs and outputs (Cast nodes at the edges). Every reduced graph is compared with the fp32
graph on ONNX Runtime's CPU provider, and the comparison is returned to be recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lappdeploy.errors import ExportError, first_line
from lappdeploy.export.onnx_export import INPUT_NAME, ort_session, save_checked, sort_topologically_
from lappdeploy.export.qdq import quiet_tool_output, to_int8_qdq_onnx
from lappdeploy.export.trt_recipes import FP16_ONNX, QDQ_ONNX, TOLERANCE
from lappdeploy.optional import require

__all__ = ["graph_parity", "to_fp16_onnx", "to_int8_qdq_onnx", "write_precision_onnx"]

log = logging.getLogger(__name__)

_PARITY_BATCH = 8


def to_fp16_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write an FP16 copy of the ONNX at `src` to `dst` (atomically), keeping float32 inputs/outputs."""
    autocast = require("modelopt.onnx.autocast", purpose="converting ONNX to FP16")
    try:
        with quiet_tool_output():
            converted = autocast.convert_to_mixed_precision(
                os.fspath(src), low_precision_type="fp16", keep_io_types=True, providers=["cpu"]
            )
    except Exception as exc:  # ModelOpt and ONNX Runtime raise their own types
        first = first_line(exc)
        raise ExportError(f"FP16 conversion failed: {type(exc).__name__}: {first}") from None
    sort_topologically_(converted.graph)
    return save_checked(converted, Path(dst))


def graph_parity(reference: str | os.PathLike[str], reduced: str | os.PathLike[str], precision: str, *, seed: int = 0):
    """The reduced graph against the fp32 one on ONNX Runtime (CPU): max error / max |logit| and top-1
    agreement on one random batch; raises ExportError above the precision's tolerance."""
    try:
        session = ort_session(reference)
        shape = [_PARITY_BATCH, *(int(d) for d in session.get_inputs()[0].shape[1:])]
        x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
        expected = session.run(None, {INPUT_NAME: x})[0]
        got = ort_session(reduced).run(None, {INPUT_NAME: x})[0]
    except Exception as exc:  # ONNX Runtime raises its own types (Fail, InvalidGraph, ...)
        raise ExportError(
            f"ONNX Runtime cannot run the {precision} graph {Path(reduced).name}: {first_line(exc)}"
        ) from None
    scale = float(np.abs(expected).max()) or 1.0
    parity: dict[str, Any] = {
        "batch": _PARITY_BATCH,
        "relative_error": float(np.abs(got - expected).max()) / scale,
        "top1_agreement": float((got.argmax(1) == expected.argmax(1)).mean()),
        "tolerance": TOLERANCE[precision],
    }
    if parity["relative_error"] > TOLERANCE[precision]:
        raise ExportError(
            f"the {precision} ONNX graph disagrees with the fp32 one: max error {parity['relative_error']:.2e} of "
            f"the logit scale (tolerance {TOLERANCE[precision]:g})"
        )
    return parity


def write_precision_onnx(
    variant: str, src: str | os.PathLike[str], dst: str | os.PathLike[str], calibration: Iterable[np.ndarray] | None
) -> dict[str, Any]:
    """Write the reduced-precision copy `variant` (FP16_ONNX or QDQ_ONNX of `trt_recipes`) of the fp32 ONNX
    at `src` to `dst`; returns what export.json records of it: the file, its parity against the fp32
    graph, and for Q/DQ the calibration images and the quantizer."""
    if variant == FP16_ONNX:
        to_fp16_onnx(src, dst)
        return {"onnx": variant, "converter": "modelopt.onnx.autocast", "parity": graph_parity(src, dst, "fp16")}
    if variant == QDQ_ONNX:
        images = to_int8_qdq_onnx(src, dst, calibration)
        return {
            "onnx": variant,
            "converter": "modelopt.onnx.quantization (int8, entropy calibration on the CPU provider)",
            "calibration_images": images,
            "parity": graph_parity(src, dst, "int8"),
        }
    raise ExportError(f"no converter writes {variant!r}; expected {FP16_ONNX} or {QDQ_ONNX}")
