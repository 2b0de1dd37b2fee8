"""The INT8 form of one layer alone, as `to_int8_qdq_onnx` would quantize it inside a model, without calibration.

A latency table times every layer over a grid of widths (hundreds of one-layer graphs); running ModelOpt's PTQ
on each would cost seconds a point. Timing does not depend on the scales' values, only on where the Q/DQ pairs
sit and on their types, so a one-layer graph (Conv + bias [+ Relu], or Gemm) gets the pairs ModelOpt places:

- whether the layer is quantized at all is ModelOpt's own decision (`find_nodes_from_convs_to_exclude` for a
  conv, `find_nodes_from_matmul_to_exclude` for a Gemm: small or odd channel counts and GEMV stay fp32), asked
  of the layer where it sits (fed by the model's input or by another layer);
- a quantized layer reads an int8 per-tensor Q/DQ input and weights quantized per output channel, symmetric,
  as fp32 initializers behind a Q/DQ pair; its bias stays fp32;
- a conv's Relu output gets the Q/DQ pair its consumer's input has inside the model (the runtime fuses that
  requantization into the conv's kernel); a Gemm's output (the logits) stays fp32.

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

from lappdeploy.export.qdq import quiet_tool_output
from lappdeploy.optional import require

__all__ = ["INPUT_QUANTIZE_NODE", "modelopt_quantizes_layer", "quantize_layer_graph_"]

# the node quantizing the graph's input: inside a model that quantization is fused into the producer's kernel
# (as a requantization), so a layer's timing leaves this node out
INPUT_QUANTIZE_NODE = "input_quantize"
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


def modelopt_quantizes_layer(model, *, fed_by_input: bool) -> bool:
    """Whether ModelOpt's INT8 PTQ would quantize the one Conv or Gemm of the one-layer ONNX `model` (in memory,
    static shapes) where it sits in its model: `fed_by_input` when it reads the model's input (a first conv may
    be quantized with channel counts a later one may not)."""
    graph_utils = require("modelopt.onnx.quantization.graph_utils", purpose="INT8 latency tables")
    node = _layer_node(model)
    if node.op_type == "Gemm":
        with tempfile.TemporaryDirectory(prefix="lappdeploy-qdq-") as scratch, _quiet_modelopt():
            path = Path(scratch) / "layer.onnx"
            require("onnx", purpose="Q/DQ").save(model, path)
            shapes = ",".join(f"{i.name}:{'x'.join(str(d.dim_value) for d in i.type.tensor_type.shape.dim)}"
                              for i in model.graph.input)  # fmt: skip
            excluded = graph_utils.find_nodes_from_matmul_to_exclude(os.fspath(path), calibration_shapes=shapes)
        return node.name not in excluded
    gs = require("onnx_graphsurgeon", purpose="INT8 latency tables")
    graph = gs.import_onnx(model)
    if not fed_by_input:  # the conv reads another node's output, as inside the model
        conv = next(n for n in graph.nodes if n.op == "Conv")
        inner = gs.Variable("inner", dtype=np.float32)
        graph.nodes.append(gs.Node("Identity", inputs=[conv.inputs[0]], outputs=[inner]))
        conv.inputs[0] = inner
    with _quiet_modelopt():
        return node.name not in graph_utils.find_nodes_from_convs_to_exclude(graph, quantize_mode="int8")


def _qdq_pair(tensor: str, scale: np.ndarray, axis: int | None, name: str | None = None):
    """Nodes and initializers quantizing `tensor` to int8 (zero point 0) and back (the QuantizeLinear named
    `name`, default `{tensor}_Q`); returns (nodes, initializers, the dequantized tensor's name)."""
    helper, numpy_helper = require("onnx.helper", purpose="Q/DQ"), require("onnx.numpy_helper", purpose="Q/DQ")
    scale = np.asarray(scale, dtype=np.float32)
    zero = np.zeros(scale.shape, dtype=np.int8)
    inits = [numpy_helper.from_array(scale, f"{tensor}_scale"), numpy_helper.from_array(zero, f"{tensor}_zero")]
    extra = {} if axis is None else {"axis": axis}
    args = [f"{tensor}_scale", f"{tensor}_zero"]
    nodes = [
        helper.make_node("QuantizeLinear", [tensor, *args], [f"{tensor}_q"], name=name or f"{tensor}_Q", **extra),
        helper.make_node("DequantizeLinear", [f"{tensor}_q", *args], [f"{tensor}_dq"], name=f"{tensor}_DQ", **extra),
    ]
    return nodes, inits, f"{tensor}_dq"


def quantize_layer_graph_(model, *, fed_by_input: bool) -> bool:
    """Give the one-layer ONNX `model` (as `latency.profile.layer_onnx` writes it) the Q/DQ pairs ModelOpt's
    INT8 graph gives its layer, in place; False (model unchanged) where ModelOpt keeps the layer fp32."""
    if not modelopt_quantizes_layer(model, fed_by_input=fed_by_input):
        return False
    numpy_helper = require("onnx.numpy_helper", purpose="Q/DQ")
    graph, layer = model.graph, _layer_node(model)
    weights = numpy_helper.to_array(next(i for i in graph.initializer if i.name == layer.input[1]))
    per_channel = np.maximum(np.abs(weights.reshape(len(weights), -1)).max(axis=1), 1e-8) / 127  # Gemm: transB=1
    before, inits_in, layer.input[0] = _qdq_pair(layer.input[0], np.float32(INPUT_SCALE), None, INPUT_QUANTIZE_NODE)
    weight_pair, inits_w, layer.input[1] = _qdq_pair(layer.input[1], per_channel, 0)
    after, inits_out = [], []
    last = graph.node[-1]
    if last.op_type == "Relu":  # the consumer's input pair, fused into the conv by the runtime
        output = last.output[0]
        last.output[0] = f"{output}_relu"
        after, inits_out, _ = _qdq_pair(last.output[0], np.float32(INPUT_SCALE), None)
        after[-1].output[0] = output
    nodes = [*before, *weight_pair, *graph.node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([*inits_in, *inits_w, *inits_out])
    return True
