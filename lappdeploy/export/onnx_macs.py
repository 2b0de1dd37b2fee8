"""MACs and parameters of an exported ONNX graph, counted from the graph itself.

The count follows `lappdeploy.models.count_macs` (torch-pruning's convention) so the two can be
compared exactly: a Conv costs H_out * W_out * k_h * k_w * (C_in / group) * C_out multiply-accumulates
per sample, plus one add per output element when it has a bias; Gemm and MatMul cost K per output
element, plus one add per output element for a bias (Gemm's C input, or an Add of a constant vector
right after a MatMul, which is how a Linear on a 3-D/4-D tensor is exported). Exporters and
simplifiers drop biases that are exactly zero (freshly initialised layers) as no-ops, so the bias adds
are reported per layer: compare them separately (see `onnx_export._check_macs`). Shapes come from ONNX
shape inference on a copy whose batch dimension is fixed to 1, so every number is per sample.

Parameters are the elements of every floating-point initializer (and Constant node tensor) of rank
>= 1: weights, biases, layer scales, norm affines. Scalars (ReLU6's clip bounds, GELU's constants)
are graph constants, not parameters, and integer tensors are shapes and axes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from lappdeploy.errors import LappDeployError
from lappdeploy.optional import require

__all__ = ["OnnxCost", "OnnxLayerCost", "count_onnx_macs"]

_FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass
class OnnxLayerCost:
    name: str  # ONNX node name
    op_type: str  # Conv, Gemm or MatMul
    output_shape: tuple[int, ...]  # per sample
    macs: int  # per sample, including bias adds
    bias_adds: int  # per sample, the part of `macs` that adds a bias


@dataclass
class OnnxCost:
    macs: int  # per sample, conv + gemm/matmul
    params: int
    layers: list[OnnxLayerCost] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"macs": self.macs, "params": self.params}


def _dims(value_info) -> tuple[int, ...] | None:
    shape = value_info.type.tensor_type.shape
    dims = []
    for d in shape.dim:
        if not d.HasField("dim_value"):
            return None
        dims.append(d.dim_value)
    return tuple(dims)


def _fixed_batch_copy(model):
    """A copy with batch 1 on every graph input and no stale intermediate shapes (the exporters write
    symbolic ones), ready for shape inference."""
    onnx = require("onnx", purpose="counting ONNX MACs")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for graph_value in (*copy.graph.input, *copy.graph.output):
        dims = graph_value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    for graph_output in copy.graph.output:  # let inference derive the outputs too
        for d in graph_output.type.tensor_type.shape.dim:
            d.Clear()
    return copy


class _InferredGraph:
    """The static shapes (per sample: batch 1), constant tensors and consumers of a shape-inferred graph."""

    def __init__(self, graph) -> None:
        self.nodes = list(graph.node)
        self.shapes: dict[str, tuple[int, ...] | None] = {
            value.name: _dims(value) for value in (*graph.input, *graph.value_info, *graph.output)
        }
        self.constants: dict[str, Any] = {init.name: init for init in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constants[node.output[0]] = attribute.t
        for name, tensor in self.constants.items():
            self.shapes.setdefault(name, tuple(tensor.dims))
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def shape_of(self, name: str, node) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None:
            raise LappDeployError(
                f"ONNX shape inference left tensor {name!r} of {node.op_type} node {node.name!r} without a static "
                "shape, so its MACs cannot be counted"
            )
        return shape

    def has_bias_add(self, output: str) -> bool:
        """A MatMul followed by an Add of a constant vector: a Linear's bias."""
        users = self.consumers.get(output, [])
        if len(users) != 1 or users[0].op_type != "Add":
            return False
        other = [n for n in users[0].input if n != output]
        return len(other) == 1 and other[0] in self.constants and len(self.constants[other[0]].dims) == 1


def _conv_k(graph: _InferredGraph, node) -> tuple[int, bool]:
    weight = graph.shape_of(node.input[1], node)  # (C_out, C_in / group, k_h, k_w)
    return math.prod(weight[1:]), len(node.input) > 2 and node.input[2] != ""


def _gemm_k(graph: _InferredGraph, node) -> tuple[int, bool]:
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    a_shape = graph.shape_of(node.input[0], node)
    return (a_shape[0] if trans_a else a_shape[1]), len(node.input) > 2 and node.input[2] != ""


def _matmul_k(graph: _InferredGraph, node) -> tuple[int, bool]:
    return graph.shape_of(node.input[0], node)[-1], graph.has_bias_add(node.output[0])


# op type -> (multiply-accumulates per output element, whether a bias is added) of a node
_COSTED_OPS = {"Conv": _conv_k, "Gemm": _gemm_k, "MatMul": _matmul_k}


def _layer_cost(graph: _InferredGraph, node) -> OnnxLayerCost:
    per_sample = graph.shape_of(node.output[0], node)[1:]
    outputs = math.prod(per_sample)
    k, bias = _COSTED_OPS[node.op_type](graph, node)
    bias_adds = outputs if bias else 0
    return OnnxLayerCost(node.name, node.op_type, per_sample, outputs * k + bias_adds, bias_adds)


def count_onnx_macs(model_or_path: Any) -> OnnxCost:
    """Per-sample MACs of the Conv, Gemm and MatMul nodes of an ONNX model (a ModelProto or a path), and
    its parameter count."""
    onnx = require("onnx", purpose="counting ONNX MACs")

    model = onnx.load(os.fspath(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    try:
        inferred = onnx.shape_inference.infer_shapes(_fixed_batch_copy(model), strict_mode=True, data_prop=True)
    except Exception as exc:
        raise LappDeployError(f"ONNX shape inference failed, so MACs cannot be counted: {exc}") from None
    graph = _InferredGraph(inferred.graph)
    layers = [_layer_cost(graph, node) for node in graph.nodes if node.op_type in _COSTED_OPS]
    params = sum(
        math.prod(tensor.dims)
        for tensor in graph.constants.values()
        if tensor.data_type in _FLOAT_TYPES and len(tensor.dims) >= 1
    )
    return OnnxCost(macs=sum(layer.macs for layer in layers), params=params, layers=layers)
