"""`bench --runtime openvino` on the CPU this test runs on (OpenVINO installs on any x86-64 CPU): the records
are complete and say what ran; bf16 runs where the CPU has native bf16 and is refused where it has not (never
timed as fp32 under another name); precisions and options that do not apply are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lappdeploy.bench.openvino_session import MATRIX_FEATURES, OpenVinoSession, cpu_matrix_features
from lappdeploy.bench.run import bench_runs
from lappdeploy.config import BenchConfig
from lappdeploy.errors import BenchError, ConfigError
from lappdeploy.export.onnx_export import to_onnx
from lappdeploy.models import create_model
from lappdeploy.testing import write_tiny_run

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (the openvino extra)")
QUICK = {"min_seconds": 0.2, "min_samples": 5, "warmup_seconds": 0.05, "batch": (1, 4)}
NATIVE_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10).eval()
    path = tmp_path_factory.mktemp("ov") / "tiny.onnx"
    to_onnx(model, torch.randn(2, 3, 16, 16), path, dynamic_batch=True)
    return model, path


def test_fp32_computes_what_pytorch_computes(onnx_file):
    """The session runs the graph it was given: fp32 logits within 1e-4 of PyTorch's (float32 reassociation
    only), for a batch size other than the export's."""
    model, path = onnx_file
    session = OpenVinoSession(path, precision="fp32", threads=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = session.compiled({0: x})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_bench_records_say_what_ran_and_on_which_cpu(tmp_path):
    run = write_tiny_run(tmp_path / "run", keep_ratio=0.5)  # a pruned run: timed with its dense twin
    records, _ = bench_runs([run], BenchConfig(runtime="openvino", threads=1, vs_dense=True, **QUICK))
    assert len(records) == 4, "2 models x 2 batch sizes"
    for record in records:
        assert record.runtime == "openvino" and record.device == "cpu" and record.precision == "fp32"
        assert record.provider.startswith("openvino-") and record.provider.endswith("-cpu-fp32")
        assert record.cpu_features == cpu_matrix_features() and set(record.cpu_features) <= set(MATRIX_FEATURES)
        assert record.latency_median_ms > 0 and record.samples >= 5 and record.threads == 1


def test_bf16_runs_only_where_the_cpu_has_it(onnx_file):
    _, path = onnx_file
    if NATIVE_BF16:
        session = OpenVinoSession(path, precision="bf16", threads=1)
        assert session.provider.endswith("-cpu-bf16")
        assert "bf16" in str(session.compiled.get_property("INFERENCE_PRECISION_HINT"))
    else:
        with pytest.raises(BenchError, match="this CPU has no native bf16"):
            OpenVinoSession(path, precision="bf16", threads=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runtime": "openvino", "precision": "fp16"}, "runs fp32, bf16 or int8"),
        ({"runtime": "openvino", "device": "cuda"}, "drop --device cuda"),
        ({"runtime": "ort", "precision": "bf16"}, "--runtime openvino"),
        ({"runtime": "torch", "precision": "bf16"}, "--runtime openvino"),
    ],
)
def test_options_that_do_not_apply_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        BenchConfig(**options)


def test_matrix_features_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n")
    assert cpu_matrix_features(cpuinfo) == ["amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512f"]
    assert cpu_matrix_features(tmp_path / "missing") == []


def test_export_writes_openvino_ir_that_computes_what_pytorch_computes(tmp_path, cli):
    import json

    run = write_tiny_run(tmp_path / "run", keep_ratio=0.5)
    result = cli("export", run, "--openvino", "--batch", "1,4,8", "--out", tmp_path / "export")
    assert result.code == 0, result.err
    section = json.loads((tmp_path / "export" / "export.json").read_text())["openvino"]
    assert (tmp_path / "export" / "model.xml").is_file() and (tmp_path / "export" / "model.bin").is_file()
    assert [row["batch"] for row in section["parity"]] == [1, 8]
    assert all(row["relative_error"] <= section["parity_tolerance"] for row in section["parity"])
    # the IR reloaded on its own: the same logits as the ONNX Runtime graph of the same export
    import onnxruntime

    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ir = ov.Core().compile_model(str(tmp_path / "export" / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ort = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert np.allclose(ir({0: x})[0], ort.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)


@pytest.mark.timing
def test_a_table_profiled_on_openvino_orders_plans_of_very_different_sizes():
    """Profiled for real on OpenVINO's CPU plugin (fp32, one thread, a small grid): plans spanning a wide range
    of latency, measured interleaved, are predicted in the same order wherever they measure > 15% apart."""
    import copy

    from torch import nn

    from lappdeploy.latency import LatencyModel
    from lappdeploy.latency.profile import PointTiming, measure_models_ms, profile_model
    from lappdeploy.surgery import analyze, remove_channels_, round_plan, uniform_plan

    torch.manual_seed(0)
    layers, channels = [], 3
    for width in (32, 64, 64, 128):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, 10)).eval()
    shape = (3, 16, 16)
    timing = PointTiming(warmup_calls=3, warmup_seconds=0.0, calls=15, seconds=0.0, max_seconds=0.05, min_calls=8)
    table = profile_model(model, shape, model_name="chain", runtime="openvino", batch=8, threads=1, points=4,
                          timing=timing, dense_seconds=0.2, probe_steps=False)  # fmt: skip
    assert table.runtime == "openvino" and table.fingerprint["runtime_version"]
    groups = analyze(model, torch.zeros((2, *shape)))
    latency = LatencyModel(groups, table)
    plans = [round_plan(uniform_plan(groups, macs), groups, 8) for macs in (0.05, 0.2, 0.5)]
    pruned = [remove_channels_(copy.deepcopy(model), plan, torch.zeros((2, *shape))) for plan in plans]
    measured = measure_models_ms([model, *pruned], shape, runtime="openvino", batch=8, threads=1, seconds=0.3)
    predicted = [latency.dense_ms, *(latency.plan_ms(plan) for plan in plans)]
    assert max(measured) / min(measured) > 3, measured
    for i in range(len(measured)):
        for j in range(len(measured)):
            if measured[i] > 1.15 * measured[j]:
                assert predicted[i] > predicted[j], (predicted, measured)


def test_performance_counters_give_the_mean_of_the_last_runs_without_the_layout_conversions(onnx_file):
    """OpenVINO's counters hold each node's mean time over every run since compilation, in whole microseconds: the
    session takes the mean over its last runs from the counters before and after them, so slow first runs are
    left out. It is below the mean wall time of those calls, as every call's wall time holds its kernels plus the
    call's overhead and the conversions between NCHW and the plugin's blocked layout (a mean against a mean: one
    call slowed by other load lifts both, where a median would drop it from one side only), and equals what the
    counters give by hand."""
    _, path = onnx_file
    session, _, means_after_one, wall = _profiled_runs(path, 20)
    expected_ms = (21 * _counted_us(session) - means_after_one) / 20 / 1e3
    assert session.typical_kernel_ms(20) == pytest.approx(expected_ms, abs=1e-12)
    assert 0 < session.typical_kernel_ms(20) < float(np.mean(wall)), (session.typical_kernel_ms(20), wall)
    with pytest.raises(BenchError, match="single runs"):
        session.run_back_to_back(3)
    executed = [c for c in session.request.get_profiling_info() if c.status == ov.ProfilingInfo.Status.EXECUTED]
    assert any(c.node_type == "Reorder" for c in executed), "the plugin converts the NCHW input to its blocked layout"
    with pytest.raises(BenchError, match="ran 21"):
        session.typical_kernel_ms(22)
    plain = OpenVinoSession(path, threads=1)
    assert not plain.kernel_profiled
    with pytest.raises(BenchError, match="without kernel_profile"):
        plain.typical_kernel_ms(1)


@pytest.mark.timing
def test_the_slow_first_run_of_a_dynamic_batch_graph_is_left_out_of_the_kernel_time(onnx_file):
    """The first run at a new batch prepares its shapes: slower than the typical call, and its counters above the
    kernel time of the runs after it. Timings of separate calls: alone on the machine (the timing tests)."""
    session, first, means_after_one, wall = _profiled_runs(onnx_file[1], 20)
    assert float(np.median(wall)) < first, (first, wall)
    assert session.typical_kernel_ms(20) < means_after_one / 1e3, "the slow first run is left out"


def _profiled_runs(path, calls: int) -> tuple[OpenVinoSession, float, int, list[float]]:
    """A kernel-profiled session at batch 4 after one first run and `calls` more: the session, the first run's
    wall time (ms), the counters' sum after it (us) and the later runs' wall times (ms)."""
    session = OpenVinoSession(path, threads=1, kernel_profile=True)
    session.set_batch(4)
    first = session.infer()[0]
    means_after_one = _counted_us(session)
    return session, first, means_after_one, [session.infer()[0] for _ in range(calls)]


def _counted_us(session) -> int:
    """Sum of the counters' running means (us) of the executed nodes but Reorder / Parameter / Result."""
    return sum(round(c.real_time.total_seconds() * 1e6) for c in session.request.get_profiling_info()
               if c.status == ov.ProfilingInfo.Status.EXECUTED
               and c.node_type not in ("Reorder", "Parameter", "Result"))  # fmt: skip


def test_layer_timing_is_chosen_per_runtime_and_refused_where_there_is_no_profiler():
    from lappdeploy.latency.profile import layer_timing

    assert layer_timing("ort", "cpu") == "kernels" and layer_timing("ort", "cuda") == "calls"
    assert layer_timing("openvino", "cpu") == "kernels", "the counters predicted whole models better (docs)"
    assert layer_timing("torch", "cpu") == "calls"
    assert layer_timing("openvino", "cpu", "kernels") == "kernels"
    assert layer_timing("openvino", "cpu", "calls") == "calls"
    with pytest.raises(ConfigError, match="no kernel profiler"):
        layer_timing("torch", "cpu", "kernels")
    with pytest.raises(ConfigError, match="choose one of"):
        layer_timing("ort", "cpu", "counters")


@pytest.mark.parametrize(
    ("runtime", "precision", "message"),
    [("ort", "bf16", "--runtime ort profiles fp32"), ("torch", "bf16", "--runtime torch profiles fp32"),
     ("openvino", "fp16", "--runtime openvino profiles fp32, bf16, int8"),
     ("trtexec", "int8", "--runtime trtexec profiles fp16 or fp32")],
)  # fmt: skip
def test_profile_precisions_that_do_not_apply_are_one_line_errors(tmp_path, cli, runtime, precision, message):
    out = tmp_path / "table.json"
    result = cli("profile", "tiny_resnet", "--runtime", runtime, "--precision", precision, "--out", out)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err
    assert not out.exists()


def test_a_refused_trtexec_precision_deletes_nothing_even_with_force(tmp_path, cli):
    out = tmp_path / "r20-jetson"
    out.mkdir()
    (out / "kept.txt").write_text("mine")
    result = cli("profile", "tiny_resnet", "--runtime", "trtexec", "--precision", "int8", "--force", "--out", out)
    assert result.code == 2 and "profiles fp16 or fp32" in result.err and "Traceback" not in result.err, result.err
    assert (out / "kept.txt").read_text() == "mine"


@pytest.mark.skipif(NATIVE_BF16, reason="this CPU runs bf16 natively: the profile itself is tested below")
def test_a_bf16_profile_is_refused_where_the_cpu_has_no_bf16(tmp_path, cli):
    out = tmp_path / "table.json"
    result = cli("profile", "tiny_resnet", "--runtime", "openvino", "--precision", "bf16", "--out", out)
    assert result.code != 0 and "no native bf16" in result.err and "Traceback" not in result.err, result.err
    assert not out.exists()


@pytest.mark.skipif(not NATIVE_BF16, reason="bf16 tables need a CPU with AMX or AVX-512 BF16")
def test_a_bf16_profile_records_its_precision_and_times_whole_models_at_bf16():
    from lappdeploy.latency.profile import PointTiming, profile_model

    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10).eval()
    timing = PointTiming(warmup_calls=2, warmup_seconds=0.0, calls=5, seconds=0.0, max_seconds=0.05, min_calls=3)
    table = profile_model(model, (3, 16, 16), model_name="tiny", runtime="openvino", precision="bf16", batch=4,
                          points=2, timing=timing, dense_seconds=0.1, probe_steps=False)  # fmt: skip
    assert table.provenance["precision"] == "bf16" and table.runtime == "openvino" and table.dense_ms > 0


def test_an_int8_profile_times_layers_and_whole_models_in_int8():
    """A table at int8: its layers timed with the Q/DQ pairs the INT8 graph gives them, its whole models as the
    INT8 graph `export` writes (below); recorded as such."""
    from lappdeploy.latency.profile import PointTiming, profile_model

    torch.manual_seed(0)
    model = create_model("tiny_resnet", num_classes=10).eval()
    timing = PointTiming(warmup_calls=2, warmup_seconds=0.0, calls=5, seconds=0.0, max_seconds=0.05, min_calls=3)
    table = profile_model(model, (3, 16, 16), model_name="tiny", runtime="openvino", precision="int8", batch=4,
                          points=2, timing=timing, dense_seconds=0.1, probe_steps=False)  # fmt: skip
    assert table.provenance["precision"] == "int8" and "Q/DQ" in table.provenance["layer_graph"]
    times = [ms for layer in table.layers.values() for row in layer.ms for ms in row]
    assert table.dense_ms > 0 and min(times) >= 0 and sum(times) > 0  # a 1-us Gemm may round to 0


def test_whole_models_are_timed_at_int8_as_the_int8_export_writes_them(onnx_file, tmp_path):
    import shutil

    import onnx

    from lappdeploy.latency.profile import _timing_int8_onnx

    _, path = onnx_file
    shutil.copy(path, tmp_path / "model.onnx")
    int8 = _timing_int8_onnx(tmp_path / "model.onnx", (3, 16, 16))
    session = OpenVinoSession(int8, precision="int8", threads=1, kernel_profile=True)
    session.set_batch(2)
    session.infer()
    kernels = [c.exec_type for c in session.request.get_profiling_info() if c.node_type == "Convolution"]
    graph = onnx.load(int8).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    quantized_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantized]
    # the convs ModelOpt quantizes run int8 kernels; tiny_resnet's narrow ones it keeps fp32 (its rules)
    assert quantized_convs and sum("i8" in kind.lower() for kind in kernels) == len(quantized_convs), kernels
