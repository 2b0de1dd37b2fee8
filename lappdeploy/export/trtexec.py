"""trtexec.sh: the exact trtexec command that builds and times the engine on the target device.

Written where the TensorRT Python package is absent (typical inside Jetson venvs): copy the export
directory to the target and run `bash trtexec.sh` there. Every flag that changed meaning between
TensorRT families is spelled out: 11.x turned CUDA graphs and spin-wait on and data transfers off by
default and removed the precision flags (strong typing: the precision is in the ONNX), so 8.5/8.6/10
get those behaviours by explicit flags and 11 gets the FP16 ONNX; INT8 is the Q/DQ ONNX everywhere.
8.5 (JetPack 5.1) has no --builderOptimizationLevel, and trtexec refuses unknown options.

With `--trt-version auto` the script holds the command of every family and picks one on the target
from trtexec's own version line (`TensorRT version: 8.5.2` in the banner of 8.x, `TensorRT v100300` /
`v110100` in that of 10/11). The JSON files it writes
(--exportTimes, --exportProfile, --exportLayerInfo) are what `lappdeploy bench` reads.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from lappdeploy.errors import ConfigError
from lappdeploy.export.tensorrt import EngineProfile
from lappdeploy.export.trt_recipes import (
    FAMILIES,
    engine_file,
    layer_info_file,
    trt_recipe,
    trtexec_log_file,
    trtexec_times_file,
)

__all__ = ["AUTO", "DEFAULT_FAMILY", "FAMILY_OF_VERSION", "onnx_for", "trtexec_args", "trtexec_script"]

DEFAULT_FAMILY = "10"  # JetPack 6.x ships TensorRT 10.3
AUTO = "auto"  # --trt-version auto: trtexec.sh picks the family on the target
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
    cuda_graph: bool = True,
    tf32: bool = False,
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
        *([f"--builderOptimizationLevel={int(opt_level)}"] if recipe.has_opt_level else []),
        f"--timingCacheFile={timing_cache}",
        "--profilingVerbosity=detailed",
        f"--warmUp={WARMUP_MS}",
        f"--duration={DURATION_S}",
        f"--exportTimes={trtexec_times_file(precision)}",
        f"--exportProfile=profile_{precision}.json",
        f"--exportLayerInfo={layer_info_file(precision)}",
        *(flag for flag in recipe.trtexec_flags if not (tf32 and flag == "--noTF32")),
        *recipe.cuda_graph_flags(cuda_graph),
    ]


FAMILY_OF_VERSION = r"""
# the TensorRT family of this trtexec, from the banner every trtexec prints ("[TensorRT v8502]" for
# 8.5.2, "v100300" for 10.3.0, "v110100" for 11.1.0) or a "TensorRT version: 8.5.2" line
TRT_VERSION=$( { "$TRTEXEC" --help 2>&1 || true; } | sed -n -e 's/.*TensorRT v\([0-9][0-9]*\).*/\1/p' \
    -e 's/.*TensorRT version: *\([0-9.][0-9.]*\).*/\1/p' | sed -n 1p)
case "$TRT_VERSION" in
    85[0-9][0-9] | 8.5*) FAMILY=8.5 ;;
    86[0-9][0-9] | 8.6*) FAMILY=8.6 ;;
    10[0-9][0-9][0-9][0-9] | 10.*) FAMILY=10 ;;
    11[0-9][0-9][0-9][0-9] | 11.*) FAMILY=11 ;;
    *) FAMILY=unknown ;;
esac
TRT_VERSION="${TRT_VERSION:-unknown}"
"""


def _command(args: Sequence[str], log_file: str, indent: str = "") -> list[str]:
    lines = [f'{indent}"$TRTEXEC" \\']
    lines += [f"{indent}    {_quote(arg)} \\" for arg in args[:-1]]
    lines.append(f"{indent}    {_quote(args[-1])} | tee {log_file}")
    return lines


def trtexec_script(
    family: str,
    precision: str,
    *,
    input_shape: Sequence[int],
    batches: Sequence[int],
    workspace_mib: int = 1024,
    opt_level: int = 3,
    cuda_graph: bool = True,
    tf32: bool = False,
    model: str = "",
) -> str:
    """A bash script that runs trtexec from its own directory, with a timing cache per device. `family`
    AUTO: one command per family, chosen on the target from trtexec's version."""
    options = {
        "input_shape": input_shape,
        "batches": batches,
        "workspace_mib": workspace_mib,
        "opt_level": opt_level,
        "cuda_graph": cuda_graph,
        "tf32": tf32,
    }
    families = FAMILIES if family == AUTO else (family,)
    commands = {f: trtexec_args(f, precision, **options) for f in families if _supports(f, cuda_graph)}
    lines = _header(family, precision, model, cuda_graph)
    log_file = trtexec_log_file(precision)
    if family != AUTO:
        lines += [
            f'if [ "$FAMILY" != {family} ]; then',
            f'    echo "trtexec.sh was written for the TensorRT {family} family; this trtexec is $TRT_VERSION:'
            ' re-export with --trt-version auto or the matching family" >&2',
            "    exit 2",
            "fi",
            *_command(commands[family], log_file),
        ]
        return "\n".join(lines) + "\n"
    lines.append('case "$FAMILY" in')
    for name, args in commands.items():
        lines += [f"    {name})", *_command(args, log_file, indent="        "), "        ;;"]
    lines += [
        '    *) echo "trtexec.sh: unsupported TensorRT version $TRT_VERSION (8.5, 8.6, 10 or 11)" >&2; exit 2 ;;',
        "esac",
    ]
    return "\n".join(lines) + "\n"


def _header(family: str, precision: str, model: str, cuda_graph: bool) -> list[str]:
    """The script up to the trtexec command: where trtexec is, the device tag and the TensorRT family."""
    return [
        "#!/usr/bin/env bash",
        f"# Build and time the {precision} TensorRT engine of {model or 'this export'} on the target device",
        f"# (TensorRT family: {family}), written by `lappdeploy export --trt`.",
        "# Engines are specific to the GPU and the TensorRT version: run this on the device that will use it.",
        "#   bash trtexec.sh            (TRTEXEC=/path/to/trtexec bash trtexec.sh to choose the binary)",
        "# TensorRT 11 defaults, spelled out for older families: no host<->device transfers in the timing,",
        "# spin-wait, separate profile run; CUDA graphs " + ("on" if cuda_graph else "off") + " (--cuda-graph).",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        'if [ ! -x "$TRTEXEC" ]; then',
        '    echo "trtexec.sh: no trtexec at $TRTEXEC; install TensorRT, or TRTEXEC=/path/to/trtexec bash $0" >&2',
        "    exit 2",
        "fi",
        "# one timing cache per device model and TensorRT version",
        "DEVICE=$( (tr -d '\\0' 2>/dev/null < /proc/device-tree/model || "
        "nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo gpu) "
        "| tr -c 'A-Za-z0-9._-' '_')",
        *FAMILY_OF_VERSION.strip().splitlines(),
    ]


def _supports(family: str, cuda_graph: bool) -> bool:
    return cuda_graph or not trt_recipe(family, "fp32", error=ConfigError).strongly_typed


def _quote(arg: str) -> str:
    """Quote an argument for bash, leaving ${VAR} expansions working."""
    if "${" in arg:
        return '"' + arg.replace('"', '\\"') + '"'
    return shlex.quote(arg)
