"""INT8 latency tables time each layer alone with the Q/DQ pairs the INT8 graph of the whole model gives it: the
pairs sit where ModelOpt's PTQ puts them (quantized or kept fp32 by ModelOpt's own rules), OpenVINO runs them with
its int8 kernels, and the layer's timing leaves out the input quantization a model fuses into the producer."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt (the INT8 export) is not installed")

from lappdeploy.export.qdq import to_int8_qdq_onnx  # noqa: E402
from lappdeploy.export.qdq_layer import INPUT_QUANTIZE_NODE, quantize_layer_graph_  # noqa: E402
from lappdeploy.latency.profile import LayerSpec, layer_onnx  # noqa: E402

CONV = LayerSpec("conv", "conv", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8))
LINEAR = LayerSpec("fc", "linear", 64, 64)


def _quantized_inputs(model) -> tuple[bool, bool]:
    """(input, weights) of the model's Conv or Gemm: whether each comes out of a DequantizeLinear."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    layer = next(node for node in model.graph.node if node.op_type in ("Conv", "Gemm"))
    return tuple(producers.get(name) == "DequantizeLinear" for name in layer.input[:2])


def _modelopt_decision(spec: LayerSpec, c_in: int, c_out: int, fed_by_input: bool, tmp_path) -> tuple[bool, bool]:
    """What `to_int8_qdq_onnx` (ModelOpt's PTQ) does with the layer: alone, or behind a Relu (not the input's)."""
    layer_onnx(spec, c_in, c_out, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
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
     (LINEAR, 64, 32, False), (LINEAR, 64, 10, False)],
)  # fmt: skip
def test_one_layer_pairs_sit_where_modelopt_puts_them(tmp_path, spec, c_in, c_out, fed_by_input):
    """Small and odd channel counts stay fp32 by ModelOpt's rules (a first conv of 3 -> 8 is quantized, the same
    conv elsewhere is not; a Gemm with 10 outputs is not): the one-layer graph agrees with ModelOpt's PTQ of the
    same layer, both in what is quantized and in that the two cases differ."""
    expected = _modelopt_decision(spec, c_in, c_out, fed_by_input, tmp_path)
    layer_onnx(spec, c_in, c_out, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    quantized = quantize_layer_graph_(model, fed_by_input=fed_by_input)
    assert _quantized_inputs(model) == expected == (quantized, quantized)


def test_a_quantized_conv_reads_and_writes_int8_pairs_and_keeps_its_output_name(tmp_path):
    layer_onnx(CONV, 64, 64, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    assert quantize_layer_graph_(model, fed_by_input=False)
    ops = [node.op_type for node in model.graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear"] * 2 + ["Conv", "Relu", "QuantizeLinear", "DequantizeLinear"]
    assert model.graph.node[-1].output[0] == model.graph.output[0].name == "y"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_q = model.graph.node[2]
    assert inits[weight_q.input[1]].shape == (64,), "weights quantized per output channel"
    assert all(inits[q.input[2]].dtype == np.int8 for q in model.graph.node if q.op_type == "QuantizeLinear")
    x = np.random.default_rng(0).standard_normal((8, 64, 8, 8)).astype(np.float32)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    got, expected = session.run(None, {"x": x})[0], fp32.run(None, {"x": x})[0]
    assert got.shape == expected.shape and got.dtype == np.float32  # values: scales are not calibrated (timing)


def test_openvino_runs_the_layer_in_int8_and_its_timing_leaves_out_the_input_quantization(tmp_path):
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
    from lappdeploy.bench.openvino_session import LAYOUT_NODES, OpenVinoSession

    layer_onnx(CONV, 64, 64, 8, tmp_path / "layer.onnx")
    model = onnx.load(tmp_path / "layer.onnx")
    assert quantize_layer_graph_(model, fed_by_input=False)
    onnx.save(model, tmp_path / "int8.onnx")
    session = OpenVinoSession(tmp_path / "int8.onnx", precision="int8", threads=1, kernel_profile=True,
                              uncounted_nodes=frozenset({INPUT_QUANTIZE_NODE}))  # fmt: skip
    session.set_batch(8)
    for _ in range(3):
        session.infer()
    executed = [c for c in session.request.get_profiling_info() if c.status == ov.ProfilingInfo.Status.EXECUTED]
    convs = [c for c in executed if c.node_type == "Convolution"]
    assert len(convs) == 1 and "i8" in convs[0].exec_type.lower(), [(c.node_type, c.exec_type) for c in executed]
    assert INPUT_QUANTIZE_NODE in {c.node_name for c in executed}, "the input quantization runs as its own node"
    kept = sum(c.real_time.total_seconds() * 1e3 for c in executed
               if c.node_type not in LAYOUT_NODES and c.node_name != INPUT_QUANTIZE_NODE)  # fmt: skip
    assert session.kernel_ms()[-1] == pytest.approx(kept, abs=1e-9)
    assert session.kernel_ms()[-1] == pytest.approx(convs[0].real_time.total_seconds() * 1e3, abs=1e-9)
