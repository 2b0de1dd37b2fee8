"""The benchmark harness on a GPU: torch CUDA (CUDA events on a non-default stream, fp16), ONNX Runtime
CUDA (I/O binding) and real TensorRT engines. Skipped cleanly without CUDA / onnxruntime-gpu / tensorrt."""

from __future__ import annotations

import pytest
import torch

from lappdeploy.bench import read_records
from lappdeploy.testing import write_tiny_run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

QUICK = ("--min-seconds", "0.5", "--min-samples", "20", "--warmup-seconds", "0.2", "--batch", "1,8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_bench")
    return write_tiny_run(base / "dense"), write_tiny_run(base / "half", keep_ratio=0.5)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_uses_cuda_events_and_reports_host_latency(runs, tmp_path, cli, precision):
    out = tmp_path / "b"
    result = cli(
        "bench", *runs, "--runtime", "torch", "--device", "cuda", "--precision", precision, *QUICK, "--out", out
    )
    assert result.code == 0, result.err
    records = read_records(out)
    assert len(records) == 4
    for r in records:
        assert r.device == "cuda" and r.timing == "cuda-events" and r.threads is None
        assert r.device_name == torch.cuda.get_device_name(0)
        # the host sees at least the GPU time of the same calls (small slack for event resolution, ~0.5 us)
        assert r.host_latency_median_ms >= r.latency_median_ms - 0.01
        assert r.environment["cuda"] == torch.version.cuda and r.environment.get("driver")
        assert r.latency_min_ms <= r.latency_median_ms <= r.latency_p90_ms <= r.latency_p99_ms


def test_torch_cuda_fp32_means_fp32_unless_tf32(runs, tmp_path, cli):
    for flag, allowed in (("--no-tf32", False), ("--tf32", True)):
        out = tmp_path / flag
        result = cli("bench", runs[0], "--runtime", "torch", "--device", "cuda", flag, *QUICK, "--out", out)
        assert result.code == 0, result.err
        assert {r.tf32 for r in read_records(out)} == {allowed}
        assert torch.backends.cudnn.allow_tf32 is allowed and torch.backends.cuda.matmul.allow_tf32 is allowed
        assert torch.backends.cudnn.benchmark


def test_ort_cuda_runs_on_the_gpu_provider_with_cuda_events(runs, tmp_path, cli):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (install lappdeploy[ort-gpu])")
    out = tmp_path / "b"
    result = cli("bench", *runs, "--runtime", "ort", "--device", "cuda", *QUICK, "--out", out)
    assert result.code == 0, result.err
    records = read_records(out)
    assert {r.provider for r in records} == {"CUDAExecutionProvider"}
    # the same clock as torch and trt: CUDA events on the provider's stream, the host's view separately
    assert {r.timing for r in records} == {"cuda-events"} and {r.tf32 for r in records} == {False}
    assert all(r.host_latency_median_ms >= r.latency_median_ms - 0.01 for r in records)


def test_ort_gpu_session_places_every_conv_on_the_gpu(runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (install lappdeploy[ort-gpu])")
    from lappdeploy.bench.runtimes import OrtSession
    from lappdeploy.export import to_onnx
    from lappdeploy.models import create_model

    to_onnx(create_model("tiny_resnet", num_classes=10).eval(), torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    session = OrtSession(tmp_path / "m.onnx", provider="cuda", threads=1)
    assert set(session.placement) == {"CUDAExecutionProvider"} and session.placement["CUDAExecutionProvider"] > 0


def test_tensorrt_engines_are_timed(runs, tmp_path, cli):
    trt = pytest.importorskip("tensorrt", reason="needs the tensorrt Python package")
    for run in runs:
        built = cli("export", run, "--trt", "--precision", "fp16", "--batch", "1,8,16", "--timing-cache-dir", tmp_path)
        assert built.code == 0, built.err
    out = tmp_path / "b"
    result = cli("bench", *runs, "--runtime", "trt", "--precision", "fp16", *QUICK, "--out", out)
    assert result.code == 0, result.err
    records = read_records(out)
    assert {r.provider for r in records} == {f"tensorrt-{trt.__version__}"} and len(records) == 4
    assert all(r.timing == "cuda-events" and r.cuda_graph is True for r in records)
    eager = cli("bench", *runs, "--runtime", "trt", "--precision", "fp16", "--no-cuda-graph", *QUICK, "--out", out)
    assert eager.code == 0 and {r.cuda_graph for r in read_records(out)[4:]} == {False}
    outside = cli("bench", runs[0], "--runtime", "trt", "--precision", "fp16", "--batch", "32", "--out", tmp_path / "c")
    assert outside.code == 2 and "optimization profile" in outside.err
