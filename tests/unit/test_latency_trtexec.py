"""Latency tables measured by trtexec on the target device: the profiling directory (graphs, manifest, script),
the script run by a stand-in trtexec (TensorRT cannot be installed here), ingestion into a table, and a real
run where a trtexec exists."""

from __future__ import annotations

import os
import shutil
import subprocess

import onnx
import pytest
import torch

from lappdeploy.latency import LatencyModel, LatencyTable, LatencyTableError, synthetic_table
from lappdeploy.latency.calibration import CALIBRATION_MODELS
from lappdeploy.latency.steps import group_multiples
from lappdeploy.latency.trtexec_profile import MANIFEST, SCRIPT, ingest_trtexec_profile, write_trtexec_profile
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze

SHAPE = (3, 16, 16)
# Stands in for trtexec: the banner of TensorRT 10.3 on --help; for a graph, a GPU compute time that grows
# with the ONNX file (its weights), written as --exportTimes JSON; a width-step probe (..._probe_W.onnx) takes
# 0.01 ms plus 1 us per started block of 8 output channels, as FP16 Tensor Cores pad them.
FAKE_TRTEXEC = r"""#!/usr/bin/env bash
for a in "$@"; do case "$a" in
  --help) echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --help"; exit 0 ;;
  --onnx=*) onnx="${a#--onnx=}" ;;
  --exportTimes=*) times="${a#--exportTimes=}" ;;
esac; done
ms=$(awk -v s="$(stat -c %s "$onnx")" 'BEGIN { printf "%.6f", 0.01 + s / 1e6 }')
case "$onnx" in *_probe_*) w="${onnx##*_probe_}"; w="${w%.onnx}"
  ms=$(awk -v w="$w" 'BEGIN { printf "%.6f", 0.01 + 0.001 * int((w + 7) / 8) }') ;; esac
printf '[{"count": 2}, {"startComputeMs": 0, "endComputeMs": %s, "computeMs": %s}, ' "$ms" "$ms" > "$times"
printf '{"startComputeMs": 1, "endComputeMs": 2, "computeMs": %s}]\n' "$ms" >> "$times"
echo "$@" >> "$(dirname "$0")/calls.log"
"""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("tiny_resnet", num_classes=4, in_channels=3)


@pytest.fixture
def fake_trtexec(tmp_path):
    path = tmp_path / "bin" / "trtexec"
    path.parent.mkdir()
    path.write_text(FAKE_TRTEXEC)
    path.chmod(0o755)
    return path


def _run_script(directory, trtexec) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRTEXEC": str(trtexec)}
    return subprocess.run(["bash", str(directory / SCRIPT)], env=env, capture_output=True, text=True, timeout=300)


def test_the_profile_directory_holds_every_graph_a_manifest_and_a_valid_script(tmp_path, model):
    out = tmp_path / "prof"
    manifest = write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=2, points=3, precision="fp16")
    graphs = sorted(p.stem for p in (out / "graphs").glob("*.onnx"))
    points = sum(len(s["in_grid"]) * len(s["out_grid"]) for s in manifest["shapes"].values())
    probes = sum(len(s.get("probe_widths", [])) for s in manifest["shapes"].values())
    assert probes > 0 and set(manifest["probes"]) <= set(manifest["layers"])
    assert len(graphs) == points + probes + len(manifest["calibration"]) == points + probes + CALIBRATION_MODELS
    layer = onnx.load(out / "graphs" / f"{graphs[0]}.onnx")
    onnx.checker.check_model(layer)
    assert layer.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2, "static batch: the table's"
    assert subprocess.run(["bash", "-n", str(out / SCRIPT)]).returncode == 0
    text = (out / SCRIPT).read_text()
    assert "--fp16" in text and "--noDataTransfers" in text and "11)" not in text, "fp16 on 11 needs an FP16 ONNX"
    assert (out / MANIFEST).is_file() and not out.with_name("prof.partial").exists()
    with pytest.raises(Exception, match="exists"):
        write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet")


def test_timings_from_the_device_are_ingested_into_a_table(tmp_path, model, fake_trtexec):
    out = tmp_path / "prof"
    write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=2, points=3, precision="fp32")
    done = _run_script(out, fake_trtexec)
    assert done.returncode == 0, done.stderr
    calls = (fake_trtexec.parent / "calls.log").read_text().splitlines()
    assert len(calls) == len(list((out / "graphs").glob("*.onnx"))) and all("--noTF32" in c for c in calls)
    again = _run_script(out, fake_trtexec)  # resumable: nothing is timed twice
    assert again.returncode == 0 and len((fake_trtexec.parent / "calls.log").read_text().splitlines()) == len(calls)
    table = ingest_trtexec_profile(out, model)
    assert table.runtime == "trtexec" and table.fingerprint["runtime_version"] == "100300"
    assert table.fingerprint["family"] == "10" and table.batch == 2
    path = table.save(tmp_path / "table.json")
    latency = LatencyModel(analyze(model, torch.zeros((2, *SHAPE))), LatencyTable.load(path))
    assert latency.dense_ms > 0 and table.dense_ms == table.calibration[0]["measured_ms"]


def test_width_steps_timed_on_the_device_give_round_to_auto_its_multiples(tmp_path, model, fake_trtexec):
    """The probes are the ORT profile's (one conv per prunable group, every width of a window below full),
    and the block size read off the device's timings is what --round-to auto rounds each group to."""
    out = tmp_path / "prof"
    write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=1, points=2, precision="fp16")
    assert _run_script(out, fake_trtexec).returncode == 0
    table = ingest_trtexec_profile(out, model)
    groups = analyze(model, torch.zeros((2, *SHAPE)))
    ort_probed = synthetic_table(model, SHAPE, batch=1, points=2).steps
    assert set(table.steps) == set(ort_probed) and table.steps
    for name, probe in table.steps.items():
        assert probe["widths"] == ort_probed[name]["widths"] and probe["multiple"] == 8, (name, probe)
    assert set(group_multiples(groups, table).values()) == {8}
    timed = len(list((out / "times").glob("*.json")))
    assert table.measurements == timed - CALIBRATION_MODELS, "grid and probes, not models"
    assert LatencyTable.load(table.save(tmp_path / "t.json")).steps == table.steps


def test_a_profile_without_probes_ingests_and_round_to_auto_says_why_it_cannot(tmp_path, model, fake_trtexec):
    out = tmp_path / "prof"
    write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=1, points=2, probe_steps=False)
    assert not list((out / "graphs").glob("*_probe_*"))
    assert _run_script(out, fake_trtexec).returncode == 0
    table = ingest_trtexec_profile(out, model)
    assert table.steps == {}
    with pytest.raises(LatencyTableError, match=r"--round-to auto.*has none"):
        group_multiples(analyze(model, torch.zeros((2, *SHAPE))), table)


def test_an_unfinished_profile_is_a_one_line_error_naming_the_graph(tmp_path, model, fake_trtexec):
    out = tmp_path / "prof"
    write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=1, points=2, precision="fp32")
    assert _run_script(out, fake_trtexec).returncode == 0
    missing = sorted((out / "times").glob("*.json"))[0]
    missing.unlink()
    with pytest.raises(LatencyTableError, match=f"graph {missing.stem} has no timing.*bash {SCRIPT}"):
        ingest_trtexec_profile(out, model)


def test_profile_cli_writes_and_ingests_a_trtexec_profile(cli, tmp_path, fake_trtexec):
    out = tmp_path / "prof"
    common = ["profile", "tiny_resnet", "--input-shape", "3x16x16", "--batch", "1", "--points", "2"]
    result = cli(*common, "--runtime", "trtexec", "--precision", "fp32", "--out", out)
    assert result.code == 0, result.err
    assert SCRIPT in result.out
    assert _run_script(out, fake_trtexec).returncode == 0
    result = cli(*common, "--ingest", out, "--out", tmp_path / "t.json")
    assert result.code == 0, result.err
    assert LatencyTable.load(tmp_path / "t.json").runtime == "trtexec"


def test_a_failing_graph_does_not_stop_the_script_and_a_broken_manifest_is_one_error(tmp_path, model, fake_trtexec):
    out = tmp_path / "prof"
    write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=1, points=2, precision="fp32")
    first = sorted((out / "graphs").glob("*.onnx"))[0]
    broken = fake_trtexec.with_name("broken_trtexec")
    broken.write_text(FAKE_TRTEXEC.replace("ms=$(", f'case "$onnx" in *{first.name}) exit 3 ;; esac\nms=$('))
    broken.chmod(0o755)
    done = _run_script(out, broken)
    assert done.returncode == 1 and f"FAILED {first.stem}" in done.stderr
    assert len(list((out / "times").glob("*.json"))) == len(list((out / "graphs").glob("*.onnx"))) - 1
    manifest = (out / MANIFEST).read_text()
    (out / MANIFEST).write_text(manifest.replace('"shapes"', '"shapes_gone"'))
    with pytest.raises(LatencyTableError, match="incomplete"):
        ingest_trtexec_profile(out, model)


def test_force_never_deletes_timings_from_the_device(cli, tmp_path, fake_trtexec):
    out = tmp_path / "prof"
    common = ["profile", "tiny_resnet", "--input-shape", "3x16x16", "--batch", "1", "--points", "2"]
    assert cli(*common, "--runtime", "trtexec", "--precision", "fp32", "--out", out).code == 0
    assert cli(*common, "--runtime", "trtexec", "--precision", "fp32", "--out", out, "--force").code == 0
    assert _run_script(out, fake_trtexec).returncode == 0
    result = cli(*common, "--runtime", "trtexec", "--precision", "fp32", "--out", out, "--force")
    assert result.code == 2 and "timings from the device" in result.err
    assert any((out / "times").iterdir())


@pytest.mark.skipif(shutil.which("trtexec") is None, reason="needs TensorRT's trtexec")
def test_a_real_trtexec_times_the_profile(tmp_path, model):
    out = tmp_path / "prof"
    write_trtexec_profile(model, SHAPE, out, model_name="tiny_resnet", batch=1, points=2, precision="fp32")
    done = _run_script(out, shutil.which("trtexec"))
    assert done.returncode == 0, done.stderr[-2000:]
    table = ingest_trtexec_profile(out, model)
    assert table.dense_ms > 0 and all(v > 0 for layer in table.layers.values() for row in layer.ms for v in row)
