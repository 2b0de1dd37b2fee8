"""Latency tables measured by trtexec on the target device (a Jetson, where only trtexec may exist):
docs/latency.md#tables-from-trtexec.

`write_trtexec_profile` writes, on the desktop, a directory holding every profiling graph (one ONNX per layer
shape and grid point, one per width-step probe width, plus the whole dense model and the calibration models,
all at a static batch),
`manifest.json` (what each graph is) and `profile_trtexec.sh`, which times every graph with trtexec on the
device (GPU compute time, flags spelled out per TensorRT family, resumable). `ingest_trtexec_profile` reads
the timings back into a `LatencyTable` (runtime `trtexec`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lappdeploy.bench.trtexec_results import compute_ms
from lappdeploy.errors import BenchError, ConfigError
from lappdeploy.export.onnx_export import deploy_copy, to_onnx
from lappdeploy.export.trt_recipes import trt_recipe
from lappdeploy.export.trtexec import FAMILY_OF_VERSION
from lappdeploy.io import atomic_write_json, atomic_write_text, read_json
from lappdeploy.latency.calibration import calibration_models, fit_calibration
from lappdeploy.latency.profile import layer_grids, layer_onnx, layer_specs, probed_specs
from lappdeploy.latency.steps import detect_multiple, probe_widths
from lappdeploy.latency.table import LatencyTable, LatencyTableError, LayerTable
from lappdeploy.surgery import ChannelPlan, analyze

__all__ = ["MANIFEST", "SCRIPT", "check_trtexec_precision", "ingest_trtexec_profile", "write_trtexec_profile"]

MANIFEST = "manifest.json"
SCRIPT = "profile_trtexec.sh"
FAMILIES = ("8.5", "8.6", "10", "11")
WARMUP_MS = 200  # per graph: tens of thousands of graphs would take hours at bench's 2 s
DURATION_S = 1


def check_trtexec_precision(precision: str) -> None:
    """trtexec tables are fp16 or fp32: the profiling graphs are fp32 (int8 would need each one's Q/DQ pairs)."""
    if precision not in ("fp16", "fp32"):
        raise ConfigError(f"--precision {precision}: --runtime trtexec profiles fp16 or fp32 engines")


def _family_flags(precision: str) -> dict[str, list[str]]:
    """trtexec flags per TensorRT family: the 11.x defaults spelled out for older ones, fp32 without TF32."""
    check_trtexec_precision(precision)
    flags = {}
    for family in FAMILIES:
        if precision == "fp16" and family == "11":
            continue  # strongly typed: FP16 needs an FP16 ONNX, which these graphs are not
        recipe = trt_recipe(family, precision, error=ConfigError)
        flags[family] = [*recipe.trtexec_flags, *recipe.cuda_graph_flags(True)]
    return flags


def _script(precision: str, model_name: str) -> str:
    cases = []
    for family, flags in _family_flags(precision).items():
        cases.append(f"    {family}) FLAGS=({' '.join(flags)}) ;;")
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# Time every profiling graph of {model_name} with trtexec on this device ({precision}); written by",
        "# `lappdeploy profile --runtime trtexec`. Resumable: graphs already timed are skipped. Afterwards copy this",
        "# directory back and run `lappdeploy profile MODEL --ingest DIR --out table.json`.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'if [ ! -x "$TRTEXEC" ]; then echo "no trtexec at $TRTEXEC; TRTEXEC=/path/to/trtexec bash $0" >&2; exit 2; fi',
        *FAMILY_OF_VERSION.strip().splitlines(),
        'case "$FAMILY" in',
        *cases,
        f'    *) echo "{SCRIPT}: TensorRT $TRT_VERSION is not supported for {precision} (8.5, 8.6, 10, 11 fp32)" >&2; '
        "exit 2 ;;",
        "esac",
        "DEVICE=$( (tr -d '\\0' 2>/dev/null < /proc/device-tree/model || "
        "nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo gpu) "
        "| tr -d '\\n' | tr -c 'A-Za-z0-9 ._-' '_')",
        'printf \'{"device": "%s", "trt_version": "%s", "family": "%s"}\\n\' "$DEVICE" "$TRT_VERSION" "$FAMILY" '
        "> device.json",
        "mkdir -p times logs",
        "total=$(find graphs -name '*.onnx' | wc -l); done=0; failed=0",
        "for graph in graphs/*.onnx; do",
        '    name=$(basename "$graph" .onnx); done=$((done + 1))',
        '    if [ -s "times/$name.json" ]; then continue; fi',
        '    echo "[$done/$total] $name"',
        f'    if ! "$TRTEXEC" --onnx="$graph" --warmUp={WARMUP_MS} --duration={DURATION_S} '
        '${FLAGS[@]+"${FLAGS[@]}"} --timingCacheFile=timing.cache '
        '--exportTimes="times/$name.json.tmp" > "logs/$name.log" 2>&1; then',
        '        echo "FAILED $name (see logs/$name.log)" >&2; failed=$((failed + 1)); continue',
        "    fi",
        '    mv "times/$name.json.tmp" "times/$name.json"',
        "done",
        'if [ "$failed" -gt 0 ]; then echo "$failed graphs failed; run again after a fix (timed ones are kept)" >&2; '
        "exit 1; fi",
        'echo "timed $total graphs; ingest with: lappdeploy profile MODEL --ingest $(pwd)"',
    ]) + "\n"  # fmt: skip


def write_trtexec_profile(
    model: nn.Module,
    input_shape: tuple[int, ...],
    out_dir: str | os.PathLike[str],
    *,
    model_name: str,
    batch: int = 1,
    points: int = 12,
    step: int = 8,
    precision: str = "fp16",
    probe_steps: bool = True,
) -> dict[str, Any]:
    """Write the profiling graphs, manifest and script into `out_dir` (which must not exist); returns the manifest.
    With `probe_steps`, also the width-step probes `--round-to auto` reads (`_write_probes`)."""
    out = Path(out_dir)
    if out.exists():
        raise ConfigError(f"--out {out} exists; pass --force to replace it or choose another directory")
    _family_flags(precision)  # an unsupported precision stops here
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted write
    (tmp / "graphs").mkdir(parents=True)
    specs = layer_specs(deploy_copy(model, torch.zeros((2, *input_shape))), input_shape)
    keys: dict[tuple, str] = {}
    shapes: dict[str, dict[str, Any]] = {}
    for spec in specs:
        if spec.shape_key in keys:
            continue
        key = keys[spec.shape_key] = f"s{len(keys):03d}"
        in_grid, out_grid = layer_grids(spec, step, points)
        for c_in in in_grid:
            for c_out in out_grid:
                layer_in = c_out if spec.kind == "depthwise" else c_in
                layer_onnx(spec, layer_in, c_out, batch, tmp / "graphs" / f"{key}_{c_in}_{c_out}.onnx")
        shapes[key] = {"in_grid": in_grid, "out_grid": out_grid}
    probes = _write_probes(model, input_shape, specs, keys, shapes, batch, tmp / "graphs") if probe_steps else {}
    layers = {
        spec.name: {"kind": spec.kind, "shape": keys[spec.shape_key], "geometry": spec.geometry()} for spec in specs
    }
    _, models = calibration_models(model, input_shape, step)
    calibration = []
    for index, (plan, pruned) in enumerate(models):
        name = f"model{index}"
        to_onnx(pruned, torch.zeros((batch, *input_shape)), tmp / "graphs" / f"{name}.onnx", dynamic_batch=False)
        calibration.append({"graph": name, "plan": plan.to_dict()})
    manifest = {
        "format": "lappdeploy.trtexec_profile", "model": model_name, "input_shape": list(input_shape),
        "batch": batch, "points": points, "step": step, "precision": precision,
        "shapes": shapes, "layers": layers, "calibration": calibration, "probes": probes,
    }  # fmt: skip
    atomic_write_json(tmp / MANIFEST, manifest)
    atomic_write_text(tmp / SCRIPT, _script(precision, model_name))
    (tmp / SCRIPT).chmod(0o755)
    os.replace(tmp, out)
    return manifest


def _write_probes(model, input_shape, specs, keys: dict, shapes: dict, batch: int, graphs: Path) -> dict[str, str]:
    """Per probed layer (`probed_specs`, as ORT profiles choose them), one graph per output width of
    `probe_widths` at full input width, shared by layers of one shape (`shapes[key]["probe_widths"]`); returns
    {layer name: shape key}. FP16 Tensor Cores step at multiples of 8 channels, which the grid alone misses."""
    probes = {}
    for spec in probed_specs(model, input_shape, specs):
        key = probes[spec.name] = keys[spec.shape_key]
        if "probe_widths" in shapes[key]:
            continue
        shapes[key]["probe_widths"] = probe_widths(spec.out_channels)
        for width in shapes[key]["probe_widths"]:
            layer_onnx(spec, spec.in_channels, width, batch, graphs / f"{key}_probe_{width}.onnx")
    return probes


def _ingest_probes(directory: Path, manifest: dict[str, Any]) -> dict[str, dict]:
    """The table's `steps` from the timed probe graphs (none in a profile written with --no-probe-steps)."""
    timed = {}
    for key, shape in manifest["shapes"].items():
        if "probe_widths" in shape:
            widths = shape["probe_widths"]
            ms = [_median_ms(directory, f"{key}_probe_{width}") for width in widths]
            timed[key] = {"widths": widths, "ms": ms, "multiple": detect_multiple(widths, ms)}
    return {name: dict(timed[key]) for name, key in manifest.get("probes", {}).items()}


def _board_fingerprint(directory: Path) -> dict[str, Any]:
    """The fingerprint of the board that ran the script, from the device.json it wrote."""
    try:
        device = read_json(directory / "device.json") if (directory / "device.json").is_file() else {}
    except ValueError:  # written on the device; a broken one loses only the fingerprint
        device = {}
    return {
        "runtime": "trtexec", "runtime_version": device.get("trt_version"), "device": "cuda",
        "processor": device.get("device"), "family": device.get("family"),
    }  # fmt: skip


def _graphs_timed(manifest: dict[str, Any]) -> int:
    """Layer graphs timed on the device: grid points and probe widths."""
    shapes = manifest["shapes"].values()
    return sum(len(s["in_grid"]) * len(s["out_grid"]) + len(s.get("probe_widths", [])) for s in shapes)


def _median_ms(directory: Path, graph: str) -> float:
    path = directory / "times" / f"{graph}.json"
    if not path.is_file():
        raise LatencyTableError(
            f"{directory}: graph {graph} has no timing ({path.name} missing); run `bash {SCRIPT}` there to finish"
        )
    try:
        return float(np.median(compute_ms(path)))
    except BenchError as exc:
        raise LatencyTableError(str(exc)) from None


def ingest_trtexec_profile(directory: str | os.PathLike[str], model: nn.Module) -> LatencyTable:
    """The latency table of a profile directory whose graphs `profile_trtexec.sh` has timed; `model` is the
    dense model it was written for (its groups give the calibration plans' summed layer latency)."""
    directory = Path(directory)
    try:
        manifest = read_json(directory / MANIFEST)
    except (OSError, ValueError):
        raise LatencyTableError(f"{directory} holds no readable {MANIFEST}: write it with --runtime trtexec") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "lappdeploy.trtexec_profile":
        raise LatencyTableError(f"{directory / MANIFEST} is not a lappdeploy trtexec profile")
    try:
        return _ingest(directory, manifest, model)
    except (KeyError, TypeError) as exc:
        raise LatencyTableError(f"{directory / MANIFEST} is incomplete ({exc}); write the profile again") from None


def _ingest(directory: Path, manifest: dict[str, Any], model: nn.Module) -> LatencyTable:
    grids = {}
    for key, shape in manifest["shapes"].items():
        ms = [[_median_ms(directory, f"{key}_{i}_{o}") for o in shape["out_grid"]] for i in shape["in_grid"]]
        grids[key] = (shape["in_grid"], shape["out_grid"], ms)
    layers = {
        name: LayerTable(entry["kind"], *grids[entry["shape"]], geometry=entry["geometry"])
        for name, entry in manifest["layers"].items()
    }
    input_shape = tuple(manifest["input_shape"])
    groups = analyze(model, torch.zeros((2, *input_shape)))
    measured = [(ChannelPlan.from_dict(c["plan"]), _median_ms(directory, c["graph"])) for c in manifest["calibration"]]
    specs = layer_specs(deploy_copy(model, torch.zeros((2, *input_shape))), input_shape)
    written = {name: entry["geometry"] for name, entry in manifest["layers"].items()}
    if written != {spec.name: json.loads(json.dumps(spec.geometry())) for spec in specs}:
        raise LatencyTableError(
            f"{directory} was written for another model or input ({manifest['model']}, {list(input_shape)}); "
            "ingest with the same model options (--dataset / --input-shape / --num-classes)"
        )
    fit = fit_calibration(groups, layers, measured)
    return LatencyTable(
        model=manifest["model"], input_shape=list(input_shape), batch=manifest["batch"], threads=0,
        runtime="trtexec", device="cuda", fingerprint=_board_fingerprint(directory), layers=layers,
        dense_ms=measured[0][1], **fit.table_fields(),
        points=manifest["points"], step=manifest["step"], steps=_ingest_probes(directory, manifest),
        measurements=_graphs_timed(manifest),
        provenance={"precision": manifest["precision"], "timing": f"trtexec GPU compute time, warm-up "
                    f"{WARMUP_MS} ms, {DURATION_S} s per graph"},
    )  # fmt: skip
