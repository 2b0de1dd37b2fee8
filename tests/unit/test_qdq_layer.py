"""INT8 latency tables time each layer alone with the Q/DQ pairs the INT8 graph of the whole model gives it: the
pairs sit where ModelOpt's PTQ puts them (quantized or kept fp32 by ModelOpt's own rules), and OpenVINO runs the
layer with its int8 kernels from an int8 input, as the layer reads its producer's output inside the model."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt (the INT8 export) is not installed")

from lappdeploy.export.qdq import to_int8_qdq_onnx  # noqa: E402
from lappdeploy.export.qdq_layer import quantize_layer_graph_  # noqa: E402
from lappdeploy.latency.profile import LayerSpec, layer_onnx  # noqa: E402

CONV = LayerSpec("conv", "conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8))
DEPTHWISE = LayerSpec("dw", "depthwise", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 64, (8, 8))
LINEAR = LayerSpec("fc", "linear", 64, 64)


def _quantized_inputs(model) -> tuple[bool, bool]:
    """(input, weights) of the model's Conv or Gemm: whether each comes out of a DequantizeLinear."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    layer = next(node for node in model.graph.node if node.op_type in ("Conv", "Gemm"))
    return tuple(producers.get(name) == "DequantizeLinear" for name in layer.input[:2])


def _modelopt_decision(spec: LayerSpec, c_in: int, c_out: int, fed_by_input: bool, tmp_path) -> tuple[bool, bool]:
    """What `to_int8_qdq_onnx` (ModelOpt's PTQ) does with the layer in a graph like the export's (dynamic batch):
    reading the graph's input, or behind a Relu."""
    layer_onnx(spec, c_in, c_out, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    if not fed_by_input:
        first = model.graph.node[0]
        model.graph.node.insert(0, onnx.helper.make_node("Relu", ["x"], ["x_in"], name="before"))
        first.input[0] = "x_in"
    onnx.save(model, tmp_path / "fp32.onnx")
    shape = (c_in,) if spec.kind == "linear" else (c_in, *spec.input_hw)
    images = np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32)
    to_int8_qdq_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [images], input_name="x")
    return _quantized_inputs(onnx.load(tmp_path / "int8.onnx"))


@pytest.mark.parametrize(
    ("spec", "c_in", "c_out", "fed_by_input"),
    [(CONV, 64, 64, False), (CONV, 3, 8, True), (CONV, 3, 8, False), (CONV, 12, 12, False),
     (DEPTHWISE, 16, 16, False), (DEPTHWISE, 12, 12, False), (LINEAR, 64, 32, False)],
)  # fmt: skip
def test_one_layer_pairs_sit_where_modelopt_puts_them(tmp_path, spec, c_in, c_out, fed_by_input):
    """Small and odd channel counts stay fp32 by ModelOpt's rules (a first conv of 3 -> 8 is quantized, the same
    conv elsewhere is not; a depthwise conv of 16 channels is, one of 12 is not; a Gemm at the export's dynamic
    batch is a GEMV to ModelOpt, kept fp32): the one-layer graph agrees with ModelOpt's PTQ of the same layer."""
    expected = _modelopt_decision(spec, c_in, c_out, fed_by_input, tmp_path)
    layer_onnx(spec, c_in, c_out, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    quantized = quantize_layer_graph_(model, fed_by_input=fed_by_input)
    assert _quantized_inputs(model) == expected == (quantized, quantized)


def test_a_quantized_conv_reads_int8_writes_a_pair_and_keeps_its_names(tmp_path):
    layer_onnx(CONV, 64, 64, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    assert quantize_layer_graph_(model, fed_by_input=False)
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["DequantizeLinear", "QuantizeLinear", "DequantizeLinear", "Conv", "Relu", "QuantizeLinear",
                   "DequantizeLinear"]  # fmt: skip
    assert model.graph.input[0].name == "x" and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT8
    assert model.graph.node[-1].output[0] == model.graph.output[0].name == "y"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_q = model.graph.node[1]
    assert inits[weight_q.input[1]].shape == (64,), "weights quantized per output channel"
    assert all(inits[q.input[2]].dtype == np.int8 for q in model.graph.node if q.op_type == "QuantizeLinear")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(-127, 128, size=(8, 64, 8, 8), dtype=np.int8)
    got = session.run(None, {"x": x})[0]
    assert got.shape == (8, 64, 8, 8) and got.dtype == np.float32  # values: scales are not calibrated (timing)


def test_openvino_runs_the_layer_in_int8_from_an_int8_input_with_no_quantization_of_its_own(tmp_path):
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
    from lappdeploy.bench.openvino_session import LAYOUT_NODES, OpenVinoSession

    layer_onnx(CONV, 64, 64, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    assert quantize_layer_graph_(model, fed_by_input=False)
    onnx.save(model, tmp_path / "int8.onnx")
    session = OpenVinoSession(tmp_path / "int8.onnx", precision="int8", threads=1, kernel_profile=True)
    session.set_batch(8)
    assert session.x.dtype == np.int8
    for _ in range(3):
        session.infer()
    executed = [c for c in session.request.get_profiling_info() if c.status == ov.ProfilingInfo.Status.EXECUTED]
    counted = [c for c in executed if c.node_type not in LAYOUT_NODES]
    # only the conv is counted (requantization of its output fused in): no quantize node of the layer's input
    assert [c.node_type for c in counted] == ["Convolution"], [(c.node_type, c.node_name) for c in executed]
    assert "i8" in counted[0].exec_type.lower(), counted[0].exec_type
    assert session.typical_kernel_ms(1) > 0


def test_only_the_layer_that_reads_the_models_input_is_marked_and_timed_apart():
    """A first conv may be quantized where a later conv of the same widths is not: the layer reading the model's
    input is marked and gets its own timings (and an int8 table's cache key knows it), even where it shares its
    shape with a later layer; a layer behind any other op is not marked."""
    from torch import nn

    from lappdeploy.latency.profile import layer_specs, profile_key

    same = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    first, second = layer_specs(same, (16, 8, 8))
    assert first.reads_input and not second.reads_input
    assert first.shape_key == second.shape_key and first.timing_key("int8") != second.timing_key("int8")
    assert first.timing_key("fp32") == second.timing_key("fp32"), "in fp32 they share their timings"
    assert "reads_input" not in first.geometry()
    behind = nn.Sequential(nn.BatchNorm2d(16), nn.Conv2d(16, 16, 3, padding=1)).eval()
    assert not any(spec.reads_input for spec in layer_specs(behind, (16, 8, 8)))
    settings = {"runtime": "openvino", "device": "cpu", "batch": 8}
    assert profile_key(same, (16, 8, 8), **settings) != profile_key(same, (16, 8, 8), precision="int8", **settings)
