"""What produced a number: library versions and the machine (recorded with every report)."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = [
    "capture_environment",
    "cpu_name",
    "describe_machine",
    "gpu_state",
    "package_version",
    "versions",
    "write_benchmark",
]

_PACKAGES = ("lappdeploy", "torch", "torchvision", "torch-pruning", "numpy")


def package_version(name: str) -> str | None:
    """Installed distribution version (importlib.metadata: torch-pruning's own __version__ is stale)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model ('AMD EPYC 9454 48-Core Processor'), from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    out.update({name: package_version(name) for name in _PACKAGES})
    if out["lappdeploy"] is None:  # running from a source tree that is not installed
        from lappdeploy import __version__

        out["lappdeploy"] = __version__
    return out


def describe_machine(device) -> dict:
    """What a benchmark number depends on: device name, thread counts and library versions."""
    import os

    import torch

    device = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }


_GPU_QUERY = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit,pstate"


def gpu_state(index: int = 0) -> dict[str, str]:
    """Driver version and current clocks of GPU `index` from nvidia-smi (empty where it is absent: Jetson,
    CPU machines). Clocks in MHz, power limit in W; a GPU far below its max SM clock is throttling."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--id={index}", f"--query-gpu={_GPU_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.split(",")]
    keys = ["gpu_name", "driver", "sm_clock_mhz", "mem_clock_mhz", "max_sm_clock_mhz", "power_limit_w", "pstate"]
    return dict(zip(keys, values, strict=False)) if len(values) == len(keys) else {}


def capture_environment(device: str, *, extra_packages: tuple[str, ...] = ()) -> dict:
    """Everything a latency number depends on besides the model: machine, threads, library versions;
    on CUDA the driver, CUDA/cuDNN versions and clocks; on a Jetson its model, power mode and whether
    jetson_clocks pinned the clocks."""
    import torch

    from lappdeploy.bench.jetson import jetson_environment

    env = describe_machine("cpu")
    env["cpu"] = cpu_name()
    env["versions"].update({name: package_version(name) for name in extra_packages})
    if device == "cuda" and torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env.update(gpu_state(0))
    jetson = jetson_environment()
    if jetson:
        env["jetson"] = jetson
    return env


def write_benchmark(name: str, rows: list[dict], out, *, device="cpu", **extra) -> None:
    """Write a benchmark's result rows with the machine they were measured on to JSON file `out`."""
    from pathlib import Path

    from lappdeploy.io import atomic_write_json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"benchmark": name, **extra, "environment": describe_machine(device), "results": rows})
    print(f"wrote {out}")
