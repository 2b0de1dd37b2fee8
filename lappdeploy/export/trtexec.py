"""trtexec.sh: the exact trtexec command that builds and times the engine on the target device.

Written where the TensorRT Python package is absent (typical inside Jetson venvs): copy the export
directory to the target and run `bash trtexec.sh` there. Every flag that changed meaning between
TensorRT families is spelled out: 11.x turned CUDA graphs and spin-wait on and data transfers off by
default and removed the precision flags (strong typing: the precision is in the ONNX), so 8.6/10
get those behaviours by explicit flags and 11 gets the FP16 / Q/DQ ONNX. The JSON files it writes
(--exportTimes, --exportProfile, --exportLayerInfo) are what `lappdeploy bench` reads.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from lappdeploy.errors import ConfigError
from lappdeploy.export.tensorrt import EngineProfile
from lappdeploy.export.trt_recipes import (
    engine_file,
    layer_info_file,
    trt_recipe,
    trtexec_log_file,
    trtexec_times_file,
)

__all__ = ["DEFAULT_FAMILY", "onnx_for", "trtexec_args", "trtexec_script"]

DEFAULT_FAMILY = "10"  # JetPack 6.x ships TensorRT 10.3
WARMUP_MS = 2000  # warm up by time after the build: >= 1-2 s (docs/deployment.md#trtexecsh)
DURATION_S = 10  # measure for at least 10 s
TIMING_CACHE = "timing-${DEVICE}-trt${TRT_VERSION}.cache"  # one per device and version; the script sets both


def onnx_for(family: str, precision: str) -> str:
    """The ONNX file trtexec reads: fp32 everywhere, except the precision-carrying graphs of strong
    typing (11.x FP16) and explicit quantization (INT8, every family)."""
    return trt_recipe(family, precision, error=ConfigError).trtexec_onnx


def trtexec_args(
    family: str,
    precision: str,
    *,
    input_shape: Sequence[int],
    batches: Sequence[int],
    workspace_mib: int = 1024,
    opt_level: int = 3,
    timing_cache: str = TIMING_CACHE,
) -> list[str]:
    """trtexec arguments (without the program name) for one engine build + timing run."""
    recipe = trt_recipe(family, precision, error=ConfigError)
    profile = EngineProfile.from_batches(batches)

    def shape(batch: int) -> str:
        return f"input:{'x'.join(str(s) for s in (batch, *input_shape))}"

    return [
        f"--onnx={recipe.trtexec_onnx}",
        f"--saveEngine={engine_file(precision)}",
        f"--minShapes={shape(profile.min)}",
        f"--optShapes={shape(profile.opt)}",
        f"--maxShapes={shape(profile.max)}",
        f"--shapes={shape(profile.opt)}",
        f"--memPoolSize=workspace:{int(workspace_mib)}M",
        f"--builderOptimizationLevel={int(opt_level)}",
        f"--timingCacheFile={timing_cache}",
        "--profilingVerbosity=detailed",
        f"--warmUp={WARMUP_MS}",
        f"--duration={DURATION_S}",
        f"--exportTimes={trtexec_times_file(precision)}",
        f"--exportProfile=profile_{precision}.json",
        f"--exportLayerInfo={layer_info_file(precision)}",
        *recipe.trtexec_flags,
    ]


def trtexec_script(
    family: str,
    precision: str,
    *,
    input_shape: Sequence[int],
    batches: Sequence[int],
    workspace_mib: int = 1024,
    opt_level: int = 3,
    model: str = "",
) -> str:
    """A bash script that runs trtexec from its own directory, with a timing cache per device."""
    args = trtexec_args(
        family,
        precision,
        input_shape=input_shape,
        batches=batches,
        workspace_mib=workspace_mib,
        opt_level=opt_level,
    )
    lines = [
        "#!/usr/bin/env bash",
        f"# Build and time the {precision} TensorRT engine of {model or 'this export'} on the target device",
        f"# (TensorRT {family}{'.x' if family != '8.6' else ''} family), written by `lappdeploy export --trt`.",
        "# Engines are specific to the GPU and the TensorRT version: run this on the device that will use it.",
        "#   bash trtexec.sh            (TRTEXEC=/path/to/trtexec bash trtexec.sh to choose the binary)",
    ]
    if trt_recipe(family, precision, error=ConfigError).strongly_typed:
        lines.append(
            "# TensorRT 11 defaults, relied on here: CUDA graphs on, no host<->device transfers in the timing, "
            "spin-wait on, separate profile run; strongly typed (the precision is in the ONNX)."
        )
    lines += [
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        "# one timing cache per device model and TensorRT version",
        "DEVICE=$( (tr -d '\\0' < /proc/device-tree/model 2>/dev/null || "
        "nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo gpu) "
        "| tr -c 'A-Za-z0-9._-' '_')",
        'TRT_VERSION=$("$TRTEXEC" --help 2>&1 | sed -n "s/.*TensorRT version: *\\([0-9.]*\\).*/\\1/p;'
        's/.*TensorRT v\\([0-9]*\\).*/\\1/p" | head -n 1)',
        'TRT_VERSION="${TRT_VERSION:-unknown}"',
        '"$TRTEXEC" \\',
    ]
    lines += [f"    {_quote(arg)} \\" for arg in args[:-1]]
    lines.append(f"    {_quote(args[-1])} | tee {trtexec_log_file(precision)}")
    return "\n".join(lines) + "\n"


def _quote(arg: str) -> str:
    """Quote an argument for bash, leaving ${VAR} expansions working."""
    if "${" in arg:
        return '"' + arg.replace('"', '\\"') + '"'
    return shlex.quote(arg)
