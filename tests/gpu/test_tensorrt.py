"""Real TensorRT engines (fp32 / fp16 / int8) through `lappdeploy export --trt`, run and compared with
ONNX Runtime. Skipped cleanly where CUDA or the tensorrt package is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def trt():
    return pytest.importorskip("tensorrt", reason="needs the tensorrt Python package (pip install 'lappdeploy[trt]')")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_is_built_run_and_matches_onnx_runtime(cli, tiny_run, tmp_path, trt, precision):
    from lappdeploy.export.onnx_export import ort_session
    from lappdeploy.export.tensorrt import TOLERANCE, run_engine, trt_family

    out = tmp_path / "export"
    args = ["export", tiny_run, "--out", out, "--trt", "--precision", precision, "--batch", "1,4,8"]
    result = cli(*args, "--calib-images", "64", "--timing-cache-dir", tmp_path / "cache")
    assert result.code == 0, result.err
    report = json.loads((out / "export.json").read_text())["tensorrt"]
    family = trt_family(trt.__version__)
    assert report["status"] == "built" and report["family"] == family and report["trt_version"] == trt.__version__
    assert report["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert max(row["relative_error"] for row in report["parity"]) <= TOLERANCE[precision]
    assert json.loads((out / report["layer_info"]).read_text())
    if precision == "int8":  # every family parses the same Q/DQ graph (TensorRT's parser accepts it)
        assert report["onnx"] == "model_int8_qdq.onnx" and report["reduced_onnx"]["calibration_images"] == 64
    if family == "11" and precision == "fp16":
        assert report["onnx"] == "model_fp16.onnx" and (out / report["onnx"]).is_file()
    assert report["io_dtypes"] == {"input": "FLOAT", "logits": "FLOAT"}

    # the engine runs at every batch size of its profile and agrees with ONNX Runtime
    x = np.random.default_rng(1).standard_normal((8, 3, 16, 16), dtype=np.float32)
    (got,) = run_engine(out / report["engine"], [x], trt=trt)
    ref = ort_session(out / "model.onnx").run(None, {"input": x})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= TOLERANCE[precision]

    # a rebuild on this device reuses the timing cache
    result = cli(*args, "--force", "--calib-images", "64", "--timing-cache-dir", tmp_path / "cache")
    assert result.code == 0 and json.loads((out / "export.json").read_text())["tensorrt"]["timing_cache_hit"]
