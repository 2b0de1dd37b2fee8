"""OpenVINO IR next to the ONNX export (`lappdeploy export --openvino`): the checked ONNX graph converted by
OpenVINO (`ov.convert_model`, weights kept in fp32), saved as model.xml + model.bin, and parity-checked
against PyTorch on OpenVINO's CPU plugin at fp32, with the same inputs, metric and tolerance as the ONNX
Runtime check (an IR that disagrees is an error and nothing is written)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lappdeploy.errors import ExportError
from lappdeploy.export.onnx_export import OUTPUT_NAME, PARITY_TOLERANCE, _parity
from lappdeploy.optional import require

__all__ = ["OPENVINO_IR", "write_openvino_ir"]

OPENVINO_IR = "model.xml"  # and model.bin, its weights


class _CompiledRunner:
    """An OpenVINO compiled model behind the `session.run(outputs, feed)` call the parity check makes."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (x,) = feed.values()
        return [self.compiled({0: x})[0]]


def write_openvino_ir(
    onnx_path: Path, out_dir: Path, reference: nn.Module, input_shape: tuple[int, ...], batches: list[int], seed: int
) -> dict[str, Any]:
    """Convert `onnx_path` into OUT_DIR/model.xml (+ .bin) and check it against `reference` at `batches`;
    returns export.json's openvino section."""
    ov = require("openvino", purpose="export --openvino")
    ov.save_model(ov.convert_model(str(onnx_path)), str(out_dir / OPENVINO_IR), compress_to_fp16=False)
    compiled = ov.Core().compile_model(str(out_dir / OPENVINO_IR), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    if compiled.output(0).get_any_name() != OUTPUT_NAME:
        raise ExportError(f"the OpenVINO IR's output is {compiled.output(0).get_any_name()!r}, not {OUTPUT_NAME!r}")
    parity = _parity(_CompiledRunner(compiled), reference.eval(), input_shape, batches, seed)
    worst = max(row["relative_error"] for row in parity)
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"OpenVINO (CPU, fp32) and PyTorch disagree: max error {worst:.2e} of the logit scale "
            f"(tolerance {PARITY_TOLERANCE:g}); export without --openvino"
        )
    return {
        "path": OPENVINO_IR,
        "weights": OPENVINO_IR.replace(".xml", ".bin"),
        "openvino": ov.__version__.split("-")[0],
        "precision": "fp32",
        "parity": parity,
        "parity_tolerance": PARITY_TOLERANCE,
    }
