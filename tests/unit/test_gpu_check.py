"""tools/gpu_check.sh without a GPU, in its CPU smoke mode (tiny_resnet at 32 px, very short timings): every GPU
step is skipped with its reason instead of failing, the summary is written to $OUT and the check exits 0; a
failing step, or a Python without lappdeploy, fails it (exit 1, summary still written); a Python where
lappdeploy is only this source tree gets it through PYTHONPATH. The whole pipeline on the CPU (build, export,
bench, the summary's speed-ups) is the `slow` smoke run (about 30 s of CPU: six Python processes, each
importing torch and torch-pruning)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"
# steps that time or build on a GPU; without CUDA each must be a skip with its reason
GPU_STEPS = (
    "torch-fp32",
    "torch-fp16",
    "ort-cuda",
    "trt-fp16-build-dense",
    "trt-fp16-build-pruned",
    "trt-fp16",
    "trt-int8-build-dense",
    "trt-int8-build-pruned",
    "trt-int8",
    "ort-tensorrt",
    "torch-compile",
)


def run_check(tmp: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp / "out"
    (tmp / "tmp").mkdir(exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if k not in ("LAPPDEPLOY_DATA", "GPU_CHECK_SKIP")}
    environment.update(
        OUT=str(out),
        PYTHON=sys.executable,
        TMPDIR=str(tmp / "tmp"),  # the script's work directory (models, ONNX) goes here and is removed
        XDG_CACHE_HOME=str(tmp / "cache"),
        OMP_NUM_THREADS="1",
    )
    environment.update(env)
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp, env=environment, capture_output=True, text=True, timeout=900
    )
    return result, out


def steps_of(out: Path) -> dict[str, dict]:
    return {s["step"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}


def python_wrapper(path: Path, *flags: str, pythonpath: str = "") -> str:
    """An interpreter that runs this one with `flags` (and `pythonpath` in front of PYTHONPATH)."""
    lines = ["#!/bin/sh"]
    if pythonpath:
        lines.append(f'PYTHONPATH="{pythonpath}${{PYTHONPATH:+:$PYTHONPATH}}"; export PYTHONPATH')
    lines.append(f'exec "{sys.executable}" {" ".join(flags)} "$@"')
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return str(path)


def write_tests(directory: Path, body: str) -> str:
    """A test file for the pytest-gpu step (GPU_CHECK_PYTEST_ARGS): tests/gpu itself is checked to skip without
    CUDA by the suite, and its conftest would cost this test seconds more of imports."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "test_stand_in.py").write_text("import pytest\n\n\n" + body)
    return str(directory / "test_stand_in.py")


SKIPPING_TESTS = (
    '@pytest.mark.skip(reason="needs a CUDA GPU")\ndef test_a():\n    pass\n\n\n'
    '@pytest.mark.skip(reason="needs a CUDA GPU")\ndef test_b():\n    pass\n'
)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The smoke run without the CPU pipeline (build, export, the CPU bench): probe, pytest, every GPU step."""
    tmp = tmp_path_factory.mktemp("gpu_check_quick")
    skipping = write_tests(tmp / "gpu_tests", SKIPPING_TESTS)
    result, out = run_check(
        tmp, "--cpu-smoke", GPU_CHECK_PYTEST_ARGS=skipping, GPU_CHECK_SKIP="build,export-onnx-*,ort-cpu"
    )
    return result, out, tmp


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The whole smoke run."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    result, out = run_check(tmp, "--cpu-smoke", GPU_CHECK_PYTEST_ARGS=write_tests(tmp / "gpu_tests", SKIPPING_TESTS))
    return result, out, tmp


def test_the_check_passes_where_gpu_runtimes_are_missing_and_writes_the_summary(quick):
    result, out, _ = quick
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "PASS: every step passed or was skipped" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "pass" and summary["mode"] == "cpu-smoke" and summary["counts"]["fail"] == 0
    assert summary["elapsed_s"] <= summary["budget_s"]
    steps = steps_of(out)
    assert steps["probe"]["status"] == "pass" and {s["status"] for s in steps.values()} <= {"pass", "skip"}
    assert {steps[name]["reason"] for name in ("build", "export-onnx-dense", "ort-cpu")} == {
        "skipped by GPU_CHECK_SKIP=build,export-onnx-*,ort-cpu"
    }
    environment = json.loads((out / "environment.json").read_text())
    assert environment["torch"] == torch.__version__ and environment["cuda_available"] == torch.cuda.is_available()
    assert environment["lappdeploy_path"] == str(REPO / "lappdeploy")
    markdown = (out / "summary.md").read_text()
    assert markdown.startswith("# GPU check: PASS") and "## Steps" in markdown
    assert (out / "steps.tsv").is_file() and (out / "gpu_check.log").is_file()


@pytest.mark.slow
def test_smoke_runs_the_cpu_pipeline(smoke):
    result, out, tmp = smoke
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "pass" and summary["counts"]["fail"] == 0
    assert summary["model"]["architecture"] == "tiny_resnet" and summary["model"]["input_shape"] == "3x32x32"
    steps = steps_of(out)
    assert {s["status"] for s in steps.values()} <= {"pass", "skip"}
    for name in ("probe", "build", "export-onnx-dense", "export-onnx-pruned", "ort-cpu"):
        assert steps[name]["status"] == "pass", steps[name]
        assert (out / steps[name]["log"]).is_file()
    assert "ort-cpu" in summary["runtimes_ran"]
    # the export records and the pruned run's report are kept; the heavy files left with the work directory
    assert json.loads((out / "exports" / "tiny_resnet-dense" / "export-onnx-dense.json").read_text())["onnx"]
    assert json.loads((out / "models" / "tiny_resnet-uniform-0.5.report.json").read_text())["method"] == "uniform"
    assert not list((tmp / "tmp").glob("gpu_check.*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the GPU steps run")
def test_without_cuda_every_gpu_step_is_skipped_with_its_reason(quick):
    _, out, _ = quick
    steps = steps_of(out)
    for name in GPU_STEPS:
        assert steps[name]["status"] == "skip", steps[name]
        assert "CUDA" in steps[name]["reason"], steps[name]
        assert not (out / "bench" / name).exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtimes_ran"] == [] and summary["gpu_runtimes_timed"] == 0
    assert set(summary["runtimes_skipped"]) - {"ort-cpu"} == {name for name in GPU_STEPS if "-build-" not in name}
    markdown = (out / "summary.md").read_text()
    assert "## Runtimes not timed" in markdown and "- torch-compile (skip): no CUDA" in markdown


def test_pytest_step_with_every_test_skipped_is_a_skip(quick):
    _, out, _ = quick
    step = steps_of(out)["pytest-gpu"]
    assert step["status"] == "skip" and step["reason"].startswith("no test ran: 2 skipped (")
    assert step["reason"].endswith("test_stand_in.py:4: needs a CUDA GPU)")
    assert json.loads((out / "summary.json").read_text())["pytest_gpu"] == {
        "passed": 0,
        "skipped": 2,
        "failed": 0,
        "errors": 0,
    }
    assert (out / "pytest_gpu.xml").is_file()


def test_a_failing_step_fails_the_check(tmp_path):
    failing = write_tests(tmp_path / "gpu_tests", "def test_a():\n    pass\n\n\ndef test_b():\n    assert 1 == 2\n")
    result, out = run_check(
        tmp_path, "--cpu-smoke", GPU_CHECK_PYTEST_ARGS=failing, GPU_CHECK_SKIP="build,export-*,ort-*,torch-*,trt-*"
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert "FAIL: a step failed" in result.stdout
    steps = steps_of(out)
    assert steps["pytest-gpu"]["status"] == "fail" and steps["pytest-gpu"]["exit_code"] == 1
    assert "1 failed, 1 passed" in steps["pytest-gpu"]["reason"]
    assert steps["probe"]["status"] == "pass"
    assert all(s["status"] == "skip" for n, s in steps.items() if n not in ("probe", "pytest-gpu"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "fail" and summary["pytest_gpu"]["failed"] == 1


@pytest.mark.slow
def test_summary_speedups_are_the_records_medians(smoke):
    _, out, _ = smoke
    records = [json.loads(line) for line in (out / "bench" / "ort-cpu" / "bench.jsonl").read_text().splitlines()]
    (runtime,) = [r for r in json.loads((out / "summary.json").read_text())["runtimes"] if r["step"] == "ort-cpu"]
    assert [row["batch"] for row in runtime["rows"]] == [1, 2]
    for row in runtime["rows"]:
        dense, pruned = (next(r for r in records if r["batch"] == row["batch"] and r["is_dense"] == d) for d in (1, 0))
        assert row["dense_median_ms"] == dense["latency_median_ms"]
        assert row["pruned_median_ms"] == pruned["latency_median_ms"]
        assert row["speedup"] == round(dense["latency_median_ms"] / pruned["latency_median_ms"], 3)
        assert row["macs_ratio"] <= 0.5 and row["provider"] == "CPUExecutionProvider"
    assert "| ort-cpu | CPUExecutionProvider | fp32 | 2 |" in (out / "summary.md").read_text()


def test_a_python_without_lappdeploy_fails_the_check_and_still_summarizes(tmp_path):
    isolated = python_wrapper(tmp_path / "python", "-I", "-S")  # no site-packages, no PYTHONPATH
    result, out = run_check(tmp_path, "--cpu-smoke", PYTHON=isolated)
    assert result.returncode == 1, result.stdout[-3000:]
    steps = steps_of(out)
    assert steps["probe"]["status"] == "fail" and "lappdeploy is not importable" in steps["probe"]["reason"]
    assert steps["build"]["status"] == steps["pytest-gpu"]["status"] == "skip"
    assert "lappdeploy is not importable" in steps["build"]["reason"]
    assert {s["status"] for name, s in steps.items() if name != "probe"} == {"skip"}
    assert json.loads((out / "summary.json").read_text())["status"] == "fail"
    assert (out / "summary.md").read_text().startswith("# GPU check: FAIL")


def test_lappdeploy_as_a_source_tree_comes_through_pythonpath(tmp_path):
    # site-packages on PYTHONPATH without `site`: the dependencies import, the editable install's hook does not
    no_install = python_wrapper(tmp_path / "python", "-S", pythonpath=sysconfig.get_paths()["purelib"])
    check = subprocess.run([no_install, "-c", "import lappdeploy"], cwd=tmp_path, capture_output=True)
    assert check.returncode != 0
    result, out = run_check(tmp_path, "--cpu-smoke", PYTHON=no_install, GPU_CHECK_SKIP="*")
    assert result.returncode == 0, result.stdout[-3000:]
    environment = json.loads((out / "environment.json").read_text())
    assert environment["lappdeploy_from"] == f"source tree {REPO} (PYTHONPATH)"
    assert environment["lappdeploy_path"] == str(REPO / "lappdeploy") and environment["torch"] == torch.__version__
    steps = steps_of(out)
    assert steps["probe"]["status"] == "pass"
    assert all(s["status"] == "skip" and "GPU_CHECK_SKIP" in s["reason"] for n, s in steps.items() if n != "probe")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_script_is_shellcheck_clean():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
