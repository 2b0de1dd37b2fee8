"""TensorRT's refusals and its runtime, through the FAKE TensorRT of lappdeploy.testing.fake_tensorrt: the parser's
and the builder's "no" reach the user as one-line ExportErrors naming what failed, an engine reports its graph's
I/O dtypes, and run_engine, engine_parity and `lappdeploy export --trt` run engines on the CPU (the fake computes
them with ONNX Runtime), where an engine that disagrees with its ONNX is rejected. onnx, onnxruntime, torch real."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from lappdeploy.errors import ExportError
from lappdeploy.export import to_onnx
from lappdeploy.export.onnx_export import ort_session
from lappdeploy.export.tensorrt import build_engine, engine_parity, run_engine, trt_family
from lappdeploy.models import create_model
from lappdeploy.testing import randomize_norms_
from lappdeploy.testing.fake_tensorrt import FAKE_ENGINE_MAGIC, fake_tensorrt

SHAPE = (3, 16, 16)  # of the tiny_run fixture too
VERSIONS = ["8.5.2", "8.6.1", "10.3.0", "11.1.0"]


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.manual_seed(0)
    example = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    to_onnx(randomize_norms_(create_model("tiny_resnet")), example, path)
    return path


def _build(onnx_path, out, trt, **kwargs):
    out.mkdir(parents=True, exist_ok=True)
    return build_engine(
        onnx_path, out, input_shape=SHAPE, batches=(1, 8, 32), trt=trt, device="Fake GPU sm90", capability=(9, 0),
        timing_cache_dir=out / "cache", **kwargs,
    )  # fmt: skip


def _edited(src, dst, edit):
    """A copy of the ONNX at `src`, changed in place by `edit(model)`, at `dst` (not checked: the parser decides)."""
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def _fused_conv(model, index: int = 0) -> None:
    """Conv + Relu as ONNX Runtime's offline graph optimisation writes them: its contrib op FusedConv."""
    node = [n for n in model.graph.node if n.op_type == "Conv"][index]
    node.domain, node.op_type = "com.microsoft", "FusedConv"
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _half_weights(model, *, io: bool) -> None:
    """FP16 weights (and with `io` FP16 inputs and outputs): the graphs strongly typed TensorRT builds FP16 from."""
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in [*model.graph.input, *model.graph.output] if io else []:
        value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16


def _parse(trt, path, *, explicit_batch: bool = True):
    """Parse into a network created as lappdeploy creates it (EXPLICIT_BATCH on 8.x), or without that flag."""
    network = trt.Builder(trt.Logger()).create_network(1 if explicit_batch and trt.__version__[0] == "8" else 0)
    parser = trt.OnnxParser(network, trt.Logger())
    return parser, parser.parse_from_file(str(path)), network


# ---------------------------------------------------------------------------------------------------
# the ONNX parser


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_unsupported_operator_is_a_one_line_export_error_naming_the_node(fp32_onnx, tmp_path, version):
    bad = _edited(fp32_onnx, tmp_path / "model.onnx", _fused_conv)
    first = next(i for i, n in enumerate(onnx.load(str(bad)).graph.node) if n.op_type == "FusedConv")
    name = onnx.load(str(bad)).graph.node[first].name
    with pytest.raises(ExportError, match=r"TensorRT's ONNX parser rejected model\.onnx") as failure:
        _build(bad, tmp_path / "out", fake_tensorrt(version))
    message = str(failure.value)
    # 10.0 gave parser errors the node's name; 8.x says its index only
    where = f"node {first} ({name}):" if version.startswith("10") else f"node {first}:"
    assert "\n" not in message and where in message and "op: FusedConv" in message
    assert not list((tmp_path / "out").glob("*.engine"))


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_parser_reports_every_bad_node_with_the_real_parser_error_api(fp32_onnx, tmp_path, version):
    bad = _edited(fp32_onnx, tmp_path / "model.onnx", lambda m: (_fused_conv(m, 0), _fused_conv(m, 1)))
    nodes = onnx.load(str(bad)).graph.node
    trt = fake_tensorrt(version)
    parser, parsed, network = _parse(trt, bad)
    assert parsed is False and parser.num_errors == 2 and network.num_inputs == 0
    expected = [i for i, n in enumerate(nodes) if n.op_type == "FusedConv"]
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    assert [e.node() for e in errors] == expected
    assert {e.code() for e in errors} == {trt.ErrorCode.UNSUPPORTED_NODE}
    assert all("No importer registered for op: FusedConv" in e.desc() for e in errors)
    if version.startswith("10"):
        assert [e.node_name() for e in errors] == [nodes[i].name for i in expected]
        assert {e.node_operator() for e in errors} == {"FusedConv"}
    else:
        assert not hasattr(errors[0], "node_name")  # 8.x parser errors carry the node's index only
    assert trt.OnnxParser(network, None).supports_operator("Conv") and not parser.supports_operator("FusedConv")


@pytest.mark.parametrize(
    ("version", "opset", "accepted"),
    [("8.5.2", 17, True), ("8.6.1", 18, False), ("10.3.0", 18, True), ("10.3.0", 21, False), ("11.1.0", 8, False)],
)
def test_parser_imports_the_opsets_of_its_family_only(fp32_onnx, tmp_path, version, opset, accepted):
    # the opset number is what the parser checks first (18 is the dynamo exporter's, which 8.x cannot parse)
    path = _edited(fp32_onnx, tmp_path / "model.onnx", lambda m: setattr(m.opset_import[0], "version", opset))
    trt = fake_tensorrt(version)
    if accepted:
        assert _build(path, tmp_path / "out", trt).onnx == "model.onnx"
        return
    with pytest.raises(ExportError, match=rf"ONNX opset {opset} is not supported.*imports opsets \d+ to \d+"):
        _build(path, tmp_path / "out", trt)


def test_parser_refuses_an_implicit_batch_network_on_8x_and_an_int32_dequantize(fp32_onnx, tmp_path):
    trt = fake_tensorrt("8.6.1")
    parser, parsed, _ = _parse(trt, fp32_onnx, explicit_batch=False)
    assert parsed is False and "explicit batch" in parser.get_error(0).desc() and parser.get_error(0).node() == -1
    # a Conv bias quantized to int32 behind a DequantizeLinear (ONNX Runtime's quantize_static default)
    bias = numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q")
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "bias_scale")
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias"], name="bias_dq"),
         helper.make_node("Add", ["input", "bias"], ["logits"], name="add")],
        "int32_dq",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 4])],
        [bias, scale],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "dq.onnx"))
    parser, parsed, _ = _parse(trt, tmp_path / "dq.onnx")
    assert parsed is False and parser.num_errors == 1 and parser.get_error(0).node() == 0
    assert parser.get_error(0).desc() == "only activation types allowed as input to this layer"


# ---------------------------------------------------------------------------------------------------
# the builder


def test_a_failed_build_is_a_clean_one_line_error_with_the_reason_in_the_log(fp32_onnx, tmp_path, caplog):
    failed = pytest.raises(ExportError, match=r"could not build a fp32 engine from model\.onnx")
    with caplog.at_level("ERROR", logger="lappdeploy.export.tensorrt"), failed as failure:
        _build(fp32_onnx, tmp_path, fake_tensorrt("10.3.0"), workspace_mib=1)  # 1 MiB: no tactic fits
    assert "\n" not in str(failure.value)
    assert any("insufficient workspace" in r.getMessage() for r in caplog.records), "TensorRT's reason is logged"
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob("layers_*.json"))


@pytest.mark.parametrize(("version", "lacking"), [("8.6.1", "INT8"), ("10.3.0", "FP16"), ("11.1.0", "FP16")])
def test_build_returns_none_for_a_precision_the_platform_lacks(fp32_onnx, tmp_path, version, lacking):
    trt = fake_tensorrt(version, fast_fp16=lacking != "FP16", fast_int8=lacking != "INT8")
    source = fp32_onnx
    if version.startswith("11"):  # strongly typed: no flag to set, the FP16 is in the graph
        source = _edited(fp32_onnx, tmp_path / "half.onnx", lambda m: _half_weights(m, io=False))
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(1 if version.startswith("8") else 0)
    assert trt.OnnxParser(network, trt.Logger()).parse(source.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, *SHAPE), (8, *SHAPE), (32, *SHAPE))
    config.add_optimization_profile(profile)
    if not version.startswith("11"):
        config.set_flag(getattr(trt.BuilderFlag, lacking))
    assert builder.build_serialized_network(network, config) is None
    config = builder.create_builder_config()  # the same network builds without the precision...
    config.add_optimization_profile(profile)
    assert (builder.build_serialized_network(network, config) is None) == version.startswith("11")
    config = builder.create_builder_config()  # ...and no network with a dynamic batch builds without a profile
    assert builder.build_serialized_network(network, config) is None


@pytest.mark.parametrize("version", VERSIONS)
def test_builder_config_has_the_attributes_of_its_family_only(version):
    trt = fake_tensorrt(version)
    config = trt.Builder(trt.Logger()).create_builder_config()
    family = trt_family(version)
    if family == "8.5":  # optimization levels came with 8.6
        with pytest.raises(AttributeError, match="builder_optimization_level"):
            config.builder_optimization_level = 3
    else:
        config.builder_optimization_level = 5
        assert config.builder_optimization_level == 5
    if family == "11":  # strongly typed: no calibrators
        with pytest.raises(AttributeError, match="int8_calibrator"):
            config.int8_calibrator = None
    with pytest.raises(AttributeError, match="builder_optimisation_level"):
        config.builder_optimisation_level = 3  # a misspelt attribute is refused, as by the pybind11 class
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    config.flags = 0
    assert config.flags == 0 and not config.get_flag(trt.BuilderFlag.TF32)


@pytest.mark.parametrize("io", [True, False])
def test_engine_io_dtypes_are_the_built_graphs(fp32_onnx, tmp_path, io):
    half = _edited(fp32_onnx, tmp_path / "half.onnx", lambda m: _half_weights(m, io=io))
    trt = fake_tensorrt("11.1.0")
    if not io:  # FP16 weights behind float32 inputs and outputs: what lappdeploy's FP16 graphs are
        assert _build(half, tmp_path / "out", trt).io_dtypes == {"input": "FLOAT", "logits": "FLOAT"}
        return
    with pytest.raises(ExportError, match=r"has I/O \{'input': 'HALF', 'logits': 'HALF'\}") as failure:
        _build(half, tmp_path / "out", trt)
    assert "\n" not in str(failure.value) and not list((tmp_path / "out").glob("*.engine"))
    builder = trt.Builder(trt.Logger())
    network = builder.create_network(0)
    assert trt.OnnxParser(network, None).parse(half.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, *SHAPE), (1, *SHAPE), (4, *SHAPE))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(None).deserialize_cuda_engine(bytes(builder.build_serialized_network(network, config)))
    assert [engine.get_tensor_dtype(engine.get_tensor_name(i)) for i in range(2)] == [trt.DataType.HALF] * 2
    assert engine.get_tensor_profile_shape("input", 0) == [(1, *SHAPE), (1, *SHAPE), (4, *SHAPE)]


# ---------------------------------------------------------------------------------------------------
# the runtime


def test_run_engine_returns_what_onnx_runtime_computes(fp32_onnx, tmp_path):
    trt = fake_tensorrt("10.3.0")
    build = _build(fp32_onnx, tmp_path, trt)
    engine = tmp_path / build.engine
    assert engine.read_bytes().startswith(FAKE_ENGINE_MAGIC)
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((batch, *SHAPE), dtype=np.float32) for batch in (1, 8, 32)]
    got = run_engine(engine, inputs, trt=trt)
    session = ort_session(fp32_onnx)
    for x, y in zip(inputs, got, strict=True):
        np.testing.assert_allclose(y, session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    assert [shape["input"] for name, shape in trt.calls if name == "execute"] == [x.shape for x in inputs]
    with pytest.raises(ExportError, match=r"refuses the input shape \(33, 3, 16, 16\)"):  # above the profile's 32
        run_engine(engine, [np.zeros((33, *SHAPE), np.float32)], trt=trt)
    with pytest.raises(ExportError, match=r"is not an engine this TensorRT \(8.6.1\)"):  # plans are per version
        run_engine(engine, inputs[:1], trt=fake_tensorrt("8.6.1"))


def _noisy(src, dst, noise: float):
    """The ONNX with every weight scaled by 1 + noise * N(0, 1)."""
    rng = np.random.default_rng(0)

    def perturb(model) -> None:
        for init in model.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT:
                weights = numpy_helper.to_array(init)
                noisy = weights * (1 + noise * rng.standard_normal(weights.shape))
                init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))

    return _edited(src, dst, perturb)


def test_engine_parity_rejects_an_engine_that_disagrees_with_its_onnx(fp32_onnx, tmp_path):
    trt = fake_tensorrt("10.3.0")
    good = tmp_path / "good" / _build(fp32_onnx, tmp_path / "good", trt).engine
    rows = engine_parity(good, fp32_onnx, SHAPE, (1, 32), "fp32", trt=trt)
    assert [row["batch"] for row in rows] == [1, 32] and max(row["max_abs_error"] for row in rows) < 1e-5
    # an engine built from other weights (5% noise) than those of the ONNX it is checked against
    noisy = _noisy(fp32_onnx, tmp_path / "noisy.onnx", 0.05)
    bad = tmp_path / "bad" / _build(noisy, tmp_path / "bad", trt).engine
    x = np.random.default_rng(5).standard_normal((8, *SHAPE), dtype=np.float32)
    (wrong,) = run_engine(bad, [x], trt=trt)
    ref = ort_session(fp32_onnx).run(None, {"input": x})[0]
    assert np.abs(wrong - ref).max() > 0.01 * np.abs(ref).max(), "the perturbed engine must really be wrong"
    with pytest.raises(ExportError, match="fp32 TensorRT engine disagrees with ONNX Runtime") as failure:
        engine_parity(bad, fp32_onnx, SHAPE, (1, 32), "fp32", trt=trt)
    assert "\n" not in str(failure.value)

    def off_by_a_percent(engine_path, inputs, *, trt):  # a runner whose results are shifted by 1% of their scale
        return [y + 0.01 * np.abs(y).max() for y in run_engine(engine_path, inputs, trt=trt)]

    with pytest.raises(ExportError, match="disagrees with ONNX Runtime"):
        engine_parity(good, fp32_onnx, SHAPE, (1, 32), "fp32", trt=trt, runner=off_by_a_percent)


def test_export_command_runs_the_engine_it_built_and_refuses_a_wrong_one(cli, tiny_run, tmp_path, monkeypatch):
    trt = fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    out = tmp_path / "export"
    result = cli("export", tiny_run, "--out", out, "--trt", "--batch", "1,4")
    assert result.code == 0, result.err
    report = json.loads((out / "export.json").read_text())["tensorrt"]
    assert report["status"] == "built" and [row["batch"] for row in report["parity"]] == [1, 4]
    assert max(row["max_abs_error"] for row in report["parity"]) < 1e-5
    assert [name for name, _ in trt.calls].count("execute") == 2, "the export's parity check ran the engine"
    trt.state.weight_noise = 0.05  # the builder now makes an engine that disagrees with its ONNX
    result = cli("export", tiny_run, "--out", tmp_path / "wrong", "--trt", "--batch", "1,4")
    assert result.code == 2, result.err
    last = result.err.strip().splitlines()[-1]  # after the build's INFO line: one line of error, no traceback
    assert last.startswith("Error: the fp32 TensorRT engine disagrees with ONNX Runtime"), result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "wrong").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
