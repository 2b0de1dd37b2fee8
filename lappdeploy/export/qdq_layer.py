"""The INT8 form of one layer alone, as `to_int8_qdq_onnx` would quantize it inside a model, without calibration.

A latency table times every layer over a grid of widths (hundreds of one-layer graphs); running ModelOpt's PTQ
on each would cost seconds a point. Timing does not depend on the scales' values, only on where the Q/DQ pairs
sit and on their types, so a one-layer graph (Conv + bias [+ Relu], or Gemm) gets the pairs ModelOpt places:

- whether the layer is quantized at all is ModelOpt's own decision (`find_nodes_from_convs_to_exclude` for a
  conv, `find_nodes_from_matmul_to_exclude` for a Gemm: small or odd channel counts and GEMV stay fp32), asked
  of the layer as it sits in the exported model: fed by the model's input or by another layer, and with the
  export's dynamic batch, which ModelOpt reads as 1 (so a Gemm is a GEMV and stays fp32);
- a quantized layer reads what its producer writes inside the model: an int8 tensor (the graph's input is int8,
  dequantized per tensor), so the layer alone runs no quantization of its input (inside the model that is fused
  into the producer's kernel; the first layer's, of the model's input, is left to the whole-model fit); its
  weights are quantized per output channel, symmetric, as fp32 initializers behind a Q/DQ pair; its bias stays
  fp32;
- a quantized conv's Relu output gets a Q/DQ pair, its consumer's input pair inside the model, which the runtime
  fuses into the conv's kernel as a requantization. An approximation: inside the model the pair is there when the
  consumer is quantized, and a grid point does not know its consumer's widths; the table's fit on whole models
  (the real INT8 graphs) absorbs the difference. A Gemm's output (the logits) stays fp32.

The activation scales are fixed, not calibrated: the graph's values are meaningless, its speed is the layer's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lappdeploy.errors import ExportError, first_line
from lappdeploy.export.qdq import qdq_nodes, quiet_tool_output
from lappdeploy.optional import require

__all__ = ["modelopt_quantizes_layer", "quantize_layer_graph_"]

INPUT_SCALE = 4.0 / 127  # a standard-normal input's range (|x| <= 4) over int8's; any scale times the same


@contextlib.contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """ModelOpt's ONNX logger reports every scan at INFO on its own handler: keep it at WARNING meanwhile."""
    logger = logging.getLogger("modelopt.onnx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with quiet_tool_output():
            yield
    finally:
        logger.setLevel(level)


def _layer_node(model):
    return next(node for node in model.graph.node if node.op_type in ("Conv", "Gemm"))


def _gemm_excluded(model, graph_utils) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="lappdeploy-qdq-") as scratch:
        path = Path(scratch) / "layer.onnx"
        require("onnx", purpose="Q/DQ").save(model, path)
        dims = lambda value: [str(d.dim_value) for d in value.type.tensor_type.shape.dim][1:]  # noqa: E731
        # the export's batch is dynamic, which ModelOpt reads as 1
        shapes = ",".join(f"{i.name}:{'x'.join(['1', *dims(i)])}" for i in model.graph.input)
        return graph_utils.find_nodes_from_matmul_to_exclude(os.fspath(path), calibration_shapes=shapes)


def _conv_excluded(model, fed_by_input: bool, graph_utils, gs) -> list[str]:
    graph = gs.import_onnx(model)
    if not fed_by_input:  # the conv reads another node's output, as inside the model
        conv = next(n for n in graph.nodes if n.op == "Conv")
        inner = gs.Variable("inner", dtype=np.float32)
        graph.nodes.append(gs.Node("Identity", inputs=[conv.inputs[0]], outputs=[inner]))
        conv.inputs[0] = inner
    return graph_utils.find_nodes_from_convs_to_exclude(graph, quantize_mode="int8")


def modelopt_quantizes_layer(model, *, fed_by_input: bool) -> bool:
    """Whether ModelOpt's INT8 PTQ would quantize the one Conv or Gemm of the one-layer ONNX `model` (in memory)
    where it sits in its exported model: `fed_by_input` when it reads the model's input (a first conv may be
    quantized with channel counts a later one may not)."""
    graph_utils = require("modelopt.onnx.quantization.graph_utils", purpose="INT8 latency tables")
    gs = require("onnx_graphsurgeon", purpose="INT8 latency tables")
    node = _layer_node(model)
    try:
        with _quiet_modelopt():
            if node.op_type == "Gemm":
                excluded = _gemm_excluded(model, graph_utils)
            else:
                excluded = _conv_excluded(model, fed_by_input, graph_utils, gs)
    except Exception as exc:  # ModelOpt and ONNX's shape inference raise their own types
        failure = f"{type(exc).__name__}: {first_line(exc)}"
        raise ExportError(f"INT8 placement of one layer: ModelOpt failed: {failure}") from None
    return node.name not in excluded


def _pair(tensor: str, scale: np.ndarray, stem: str, **attributes) -> tuple[list, list, str]:
    """(nodes, initializers, dequantized tensor) quantizing `tensor` to int8 at `scale`, zero point 0."""
    numpy_helper = require("onnx.numpy_helper", purpose="Q/DQ")
    scale = np.asarray(scale, dtype=np.float32)
    inits = [numpy_helper.from_array(scale, f"{stem}_scale"),
             numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int8), f"{stem}_zero")]  # fmt: skip
    return qdq_nodes(tensor, f"{stem}_scale", f"{stem}_zero", stem, **attributes), inits, f"{stem}_dq"


def quantize_layer_graph_(model, *, fed_by_input: bool) -> bool:
    """Give the one-layer ONNX `model` (as `latency.profile.layer_onnx` writes it) the Q/DQ pairs ModelOpt's
    INT8 graph gives its layer, in place; False (model unchanged) where ModelOpt keeps the layer fp32."""
    if not modelopt_quantizes_layer(model, fed_by_input=fed_by_input):
        return False
    numpy_helper = require("onnx.numpy_helper", purpose="Q/DQ")
    graph, layer = model.graph, _layer_node(model)
    weights = numpy_helper.to_array(next(i for i in graph.initializer if i.name == layer.input[1]))
    per_channel = np.maximum(np.abs(weights.reshape(len(weights), -1)).max(axis=1), 1e-8) / 127  # Gemm: transB=1
    (_, dequantize), inits_in, dequantized = _pair(layer.input[0], np.float32(INPUT_SCALE), "input_quantize")
    dequantize.input[0] = layer.input[0]  # the graph's input, now int8, as the producer writes it
    int8 = require("onnx", purpose="Q/DQ").TensorProto.INT8
    next(i for i in graph.input if i.name == layer.input[0]).type.tensor_type.elem_type = int8
    layer.input[0] = dequantized
    weight_pair, inits_w, layer.input[1] = _pair(layer.input[1], per_channel, "weight_quantize", axis=0)
    after, inits_out = [], []
    last = graph.node[-1]
    if last.op_type == "Relu":  # the consumer's input pair, fused into the conv by the runtime
        output = last.output[0]
        last.output[0] = f"{output}_relu"
        after, inits_out, _ = _pair(last.output[0], np.float32(INPUT_SCALE), "output_quantize")
        after[-1].output[0] = output
    nodes = [dequantize, *weight_pair, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([*inits_in, *inits_w, *inits_out])
    return True
