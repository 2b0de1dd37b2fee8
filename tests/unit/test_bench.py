"""The benchmark harness on tiny models with the real runtimes (torch, ONNX Runtime): the timing
protocol, records, reports and plots, trtexec results, and the errors users get."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lappdeploy.bench import BenchRecord, TimingPolicy, measure_batch, plan_id, read_records
from lappdeploy.bench.ort_session import check_gpu_placement
from lappdeploy.bench.runtimes import RUNTIMES, OrtSession, TorchSession
from lappdeploy.bench.trtexec_results import read_trtexec
from lappdeploy.config import RUNTIMES as RUNTIME_NAMES
from lappdeploy.config import BenchConfig
from lappdeploy.errors import BenchError, ConfigError
from lappdeploy.models import create_model
from lappdeploy.report.bench_report import compare, latest, markdown_table
from lappdeploy.report.plots import pareto_front
from lappdeploy.testing import write_tiny_run

QUICK = ("--min-seconds", "0.3", "--min-samples", "5", "--warmup-seconds", "0.05")
POLICY = TimingPolicy(min_seconds=0.3, min_samples=5, warmup_seconds=0.05, throughput_seconds=0.3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """A dense and a pruned (random plan, half the channels) tiny_resnet run at 3x16x16."""
    base = tmp_path_factory.mktemp("bench_runs")
    return write_tiny_run(base / "dense"), write_tiny_run(base / "half", keep_ratio=0.5)


def _session(width_model: str = "tiny_resnet") -> TorchSession:
    return TorchSession(create_model(width_model, num_classes=10), (3, 16, 16))


def test_protocol_statistics_are_complete_and_ordered():
    (timing,) = measure_batch([_session()], 8, POLICY)
    lat = timing.latency
    assert lat.samples >= POLICY.min_samples and timing.measured_s >= POLICY.min_seconds
    assert lat.samples == len(timing.latencies_ms)
    assert lat.min_ms <= lat.median_ms <= lat.p90_ms <= lat.p99_ms <= max(timing.latencies_ms)
    assert lat.std_ms > 0 and lat.mean_ms > 0
    assert timing.warmup_calls >= 2 and timing.host_latency is None  # CPU: one clock
    # throughput with the pipeline full ~ batch / latency for a synchronous CPU runtime; the factor 3 leaves
    # room for a loaded machine (pytest -n 2 on 2 cores) yet catches images counted per call (a factor 8)
    expected = 8 / (lat.median_ms / 1e3)
    assert expected / 3 < timing.throughput_ips < 3 * expected
    assert sum(w[2] for w in timing.throughput_windows) % 8 == 0


def test_warm_up_needs_both_its_time_and_its_call_count():
    quick = TimingPolicy(min_seconds=0.02, min_samples=2, warmup_seconds=0.0, throughput_seconds=0.02)
    (timing,) = measure_batch([_session()], 1, quick)
    assert timing.warmup_calls >= 50  # was 2: the time was reached, so the count did not matter
    slow = TimingPolicy(min_seconds=0.02, min_samples=2, warmup_seconds=0.4, throughput_seconds=0.02)
    (timing,) = measure_batch([_session()], 1, slow)
    assert timing.warmup_s >= 0.4 and timing.warmup_calls >= 50  # was: 50 quick calls ended it after ~0.05 s


def test_profiled_run_refuses_conv_on_the_cpu_provider(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from lappdeploy.export import to_onnx

    to_onnx(create_model("tiny_convnet", num_classes=10).eval(), torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})
    profile = session.end_profiling()
    with pytest.raises(BenchError, match=r"Conv/Gemm/MatMul node\(s\) of m.onnx on CPUExecutionProvider"):
        check_gpu_placement(profile, "m.onnx")  # the check a GPU OrtSession runs before timing anything


def test_protocol_interleaves_sessions_with_rotating_order():
    sessions = [_session("tiny_resnet"), _session("tiny_convnet"), _session("tiny_resnet")]
    order: list[int] = []
    progress: list[float] = []
    timings = measure_batch(sessions, 2, POLICY, order_log=order, on_round=progress.append)
    n = len(sessions)
    rounds = [order[i : i + n] for i in range(0, len(order), n)]
    assert len(order) % n == 0 and len(rounds) >= 2
    for index, chunk in enumerate(rounds):
        assert sorted(chunk) == list(range(n))  # every session in every round
        assert chunk[0] == index % n  # the order rotates: A B C, B C A, C A B ...
    assert all(t.latency.samples >= POLICY.min_samples for t in timings)
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_ort_session_refuses_a_provider_that_would_fall_back(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: nothing would fall back")
    from lappdeploy.export import to_onnx

    model = create_model("tiny_convnet", num_classes=10).eval()
    to_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx", dynamic_batch=True)
    with pytest.raises(BenchError, match="silently run on the CPU"):
        OrtSession(tmp_path / "m.onnx", provider="cuda", threads=1)
    session = OrtSession(tmp_path / "m.onnx", provider="cpu", threads=1)
    assert session.provider == "CPUExecutionProvider"


def test_bench_dense_vs_pruned_records_and_report(runs, tmp_path, cli):
    dense, half = runs
    out = tmp_path / "bench"
    result = cli("bench", dense, half, "--runtime", "ort", "--batch", "1,4", *QUICK, "--threads", "1", "--out", out)
    assert result.code == 0, result.err
    records = read_records(out)
    assert len(records) == 4  # 2 models x 2 batch sizes
    assert {(r.label, r.batch) for r in records} == {("dense", 1), ("dense", 4), ("half", 1), ("half", 4)}
    assert len({r.session for r in records}) == 1
    by_label = {r.label: r for r in records if r.batch == 4}
    assert by_label["dense"].is_dense and by_label["dense"].plan_id == "dense"
    assert not by_label["half"].is_dense and len(by_label["half"].plan_id) == 10
    assert by_label["half"].macs < by_label["dense"].macs
    for r in records:
        assert r.provider == "CPUExecutionProvider" and r.device == "cpu" and r.threads == 1
        assert r.latency_min_ms <= r.latency_median_ms <= r.latency_p90_ms <= r.latency_p99_ms
        assert r.samples >= 5 and r.throughput_ips > 0 and r.warmup_calls >= 2
        assert r.environment["versions"]["onnxruntime"] and r.environment["config"]["runtime"] == "ort"
        assert r.tf32 is None and r.cuda_graph is None and r.environment["config"]["tf32"] is False
        assert r.order == (0 if r.label == "dense" else 1)
    # the table shows the speed-up next to the MACs ratio
    assert "speed-up" in result.out and "MACs ratio" in result.out
    for name in ("bench.csv", "bench.md", "latency_vs_macs.png", "speedup_vs_batch.png"):
        assert (out / name).is_file()
    for png in ("latency_vs_macs.png", "speedup_vs_batch.png"):
        pixels = __import__("matplotlib.image", fromlist=["imread"]).imread(out / png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels[..., :3].std() > 0.05  # not a blank canvas
    csv_lines = (out / "bench.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and "speedup" in csv_lines[0]
    md = (out / "bench.md").read_text()
    assert md.count("\n") == 6 and "| tiny_resnet | half |" in md

    # a second bench appends (never clobbers), and reports keep the newest of each
    again = cli("bench", half, "--runtime", "torch", "--batch", "2", *QUICK, "--out", out, "--no-plot")
    assert again.code == 0, again.err
    assert len(read_records(out)) == 5
    assert len(latest(read_records(out))) == 5


def test_vs_dense_times_the_dense_architecture(runs, tmp_path, cli):
    _, half = runs
    out = tmp_path / "b"
    result = cli("bench", half, "--runtime", "torch", "--vs-dense", "--batch", "2", *QUICK, "--out", out)
    assert result.code == 0, result.err
    records = {r.label: r for r in read_records(out)}
    assert set(records) == {"tiny_resnet dense", "half"}
    twin = records["tiny_resnet dense"]
    assert twin.is_dense and twin.order == 0 and twin.macs > records["half"].macs
    assert twin.provider == "torch-eager"
    (comparison,) = [c for c in compare(list(records.values())) if c.record.label == "half"]
    assert comparison.reference is twin
    assert comparison.macs_ratio == pytest.approx(records["half"].macs / twin.macs)
    assert comparison.speedup == pytest.approx(twin.latency_median_ms / records["half"].latency_median_ms)


def test_report_command_rebuilds_tables_and_plots(runs, tmp_path, cli):
    _, half = runs
    bench = tmp_path / "b"
    assert cli("bench", half, "--vs-dense", "--batch", "1", *QUICK, "--out", bench, "--no-plot").code == 0
    assert not (bench / "latency_vs_macs.png").exists()
    out = tmp_path / "report"
    result = cli("report", bench, "--out", out)
    assert result.code == 0, result.err
    assert (out / "latency_vs_macs.png").stat().st_size > 10_000
    rows = (out / "bench.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == ["tiny_resnet dense", "half"]


def test_trtexec_results_become_records(runs, tmp_path, cli):
    """trtexec JSON as TensorRT 10 writes it (first entry {"count": N}), plus its log."""
    export = tmp_path / "jetson-export"
    export.mkdir()
    args = ["--onnx=model.onnx", "--shapes=input:8x3x16x16", "--exportTimes=times_fp16.json"]
    (export / "export.json").write_text(
        json.dumps(
            {
                "model": "tiny_resnet",
                "input_shape": [3, 16, 16],
                "onnx": {"macs": 1_000_000, "params": 5000},
                "tensorrt": {"trtexec_args": args},
                "plan_id": "dense",
                "method": "dense",
            }
        )
    )
    compute = [0.50, 0.52, 0.51, 0.55, 0.49, 0.60]
    entries = [{"count": len(compute)}]
    start = 100.0
    for ms in compute:
        entries.append(
            {
                "startComputeMs": start,
                "endComputeMs": start + ms,
                "computeMs": ms,
                "latencyMs": ms,
                "h2dMs": 0.0,
                "d2hMs": 0.0,
            }
        )
        start += ms
    (export / "times_fp16.json").write_text(json.dumps(entries))
    (export / "trtexec_fp16.log").write_text(
        "[11/22/2026-10:00:00] [I] TensorRT version: 10.3.0\n"
        "[11/22/2026-10:00:00] [I] Selected Device: Orin\n"
        "[11/22/2026-10:00:12] [I] Throughput: 1850.5 qps\n"
    )
    result = read_trtexec(export, "fp16")
    assert result.batch == 8 and result.latency.samples == 6
    assert result.latency.median_ms == pytest.approx(float(np.median(compute)))
    assert result.throughput_ips == pytest.approx(1850.5 * 8)
    assert result.trt_version == "10.3.0" and result.device_name == "Orin"

    out = tmp_path / "b"
    bench = cli("bench", export, "--runtime", "trtexec", "--precision", "fp16", "--out", out, "--no-plot")
    assert bench.code == 0, bench.err
    (record,) = read_records(out)
    assert record.provider == "tensorrt-10.3.0".replace("tensorrt", "trtexec") and record.device_name == "Orin"
    assert record.timing == "trtexec-gpu-compute" and record.batch == 8 and record.macs == 1_000_000
    assert record.cuda_graph is True and record.tf32 is None  # recorded with every trtexec record

    (export / "times_fp16.json").unlink()
    missing = cli("bench", export, "--runtime", "trtexec", "--precision", "fp16", "--out", tmp_path / "c")
    assert missing.code == 2 and "bash trtexec.sh" in missing.err


def test_bad_input_gives_one_line_errors_and_writes_nothing(runs, tmp_path, cli):
    dense, _ = runs
    cases = [
        (("bench", dense, "--batch", "0"), "batch must be"),
        (("bench", tmp_path / "nope"), "does not exist"),
        (("bench", dense, "--runtime", "trt", "--device", "cpu"), "drop --device cpu"),
        (("bench", dense, "--runtime", "trt"), "no fp32 TensorRT engine"),
        (("bench", dense, "--runtime", "ort", "--precision", "int8"), "Q/DQ"),
        (("bench", dense, "--runtime", "torch", "--precision", "fp16", "--device", "cpu"), "fp16"),
        (("report", tmp_path / "nope"), "does not exist"),
    ]
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cases.append((("bench", dense, "--runtime", "ort", "--device", "cuda", *QUICK), "silently run on the CPU"))
    for args, message in cases:
        result = cli(*args, "--out", tmp_path / "out") if args[0] == "bench" else cli(*args)
        assert result.code == 2, (args, result.err)
        assert message in result.err, (args, result.err)
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert not (tmp_path / "out" / "bench.jsonl").exists()


def test_engine_present_but_tensorrt_missing_is_a_clear_error(runs, tmp_path, cli):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    run = shutil.copytree(runs[0], tmp_path / "run")
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text(json.dumps({"onnx": {"macs": 1}}))
    (run / "export" / "model_fp32.engine").write_bytes(b"not really an engine")
    result = cli("bench", run, "--runtime", "trt", "--out", tmp_path / "out")
    assert result.code == 2 and "lappdeploy[trt]" in result.err
    # TensorRT fixes TF32 at build time: a TF32 timing of an engine built without it is refused, not mislabelled
    result = cli("bench", run, "--runtime", "trt", "--tf32", "--out", tmp_path / "out")
    assert result.code == 2 and "built without TF32" in result.err


def test_out_dir_holding_other_files_is_refused(runs, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = cli("bench", runs[0], *QUICK, "--out", out)
    assert result.code == 2 and "not lappdeploy bench output" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    (out / "precious.txt").unlink()
    (out / "bench.jsonl").write_text("{not json\n")
    corrupt = cli("bench", runs[0], *QUICK, "--out", out)
    assert corrupt.code == 2 and "bench.jsonl:1 is not a bench record" in corrupt.err


def test_records_round_trip_and_plan_ids(tmp_path):
    plan = {"groups": {"g0": {"channels": 8, "keep": [0, 1, 2, 3]}, "g1": {"channels": 4, "keep": [0, 1, 2, 3]}}}
    same = {"groups": {"g1": {"channels": 4, "keep": [3, 2, 1, 0]}, "g0": {"channels": 8, "keep": [3, 2, 1, 0]}}}
    assert plan_id([]) == "dense" and plan_id([{"groups": {"g": {"channels": 2, "keep": [0, 1]}}}]) == "dense"
    assert plan_id([plan]) == plan_id([same]) != plan_id([{"groups": {"g0": {"channels": 8, "keep": [0]}}}])
    with pytest.raises(BenchError, match="missing"):
        BenchRecord.from_dict({"label": "x"})


def test_pareto_front_and_config_validation():
    # (MACs, latency): (2.0, 3.5) and (1.5, 4.0) are beaten by (2.0, 3.0): as many MACs, less latency
    points = [(2.0, 3.5), (1.0, 2.0), (3.0, 5.0), (2.0, 3.0), (1.5, 4.0)]
    assert pareto_front(points) == [(1.0, 2.0), (2.0, 3.0), (3.0, 5.0)]
    assert BenchConfig(batch=(8, 1)).batch == (1, 8)
    for bad in ({"batch": (1, 1)}, {"min_seconds": 0}, {"ort_provider": "cuda", "runtime": "torch"}):
        with pytest.raises(ConfigError):
            BenchConfig(**bad)


def test_runtime_table_is_the_runtime_option_choices():
    assert RUNTIMES.names() == sorted(RUNTIME_NAMES)
    for name in RUNTIME_NAMES:
        spec = RUNTIMES.get(name)
        # each runtime either times a model here or reads timings made on the target, never both
        assert (spec.open_session is None) != (spec.read_results is None), name


def test_markdown_table_states_efficiency(runs):
    base = dict(
        model="m", source="s", method="dense", input_shape=[3, 8, 8], params=1, runtime="ort",
        provider="CPUExecutionProvider", device="cpu", device_name="cpu", precision="fp32", batch=8, threads=2,
        timing="host-clock", latency_p90_ms=1, latency_p99_ms=1, latency_mean_ms=1, latency_std_ms=0,
        latency_min_ms=1, samples=10, measured_s=1, throughput_ips=1, session="s1",
    )  # fmt: skip
    dense = BenchRecord(label="d", plan_id="dense", is_dense=True, macs=100, latency_median_ms=10.0, **base)
    half = BenchRecord(label="p", plan_id="abc", is_dense=False, macs=50, latency_median_ms=5.5, **base)
    comparisons = compare([dense, half])
    assert comparisons[1].speedup == pytest.approx(10 / 5.5)
    assert comparisons[1].efficiency == pytest.approx(10 / 5.5 * 0.5)  # 0.91: 91% of perfect scaling
    assert "| 1.82 | 0.91 |" in markdown_table(comparisons)
