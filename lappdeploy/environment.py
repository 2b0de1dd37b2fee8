"""What produced a number: library versions and the machine (recorded with every report). The GPU and
Jetson state of a latency number is `lappdeploy.bench.environment`'s."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from lappdeploy import __version__
from lappdeploy.io import atomic_write_json

__all__ = ["cpu_name", "describe_machine", "package_version", "versions", "write_benchmark"]

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
        out["lappdeploy"] = __version__
    return out


def describe_machine(device) -> dict:
    """What a benchmark number depends on: device name, thread counts and library versions."""
    import torch

    device = torch.device(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }


def write_benchmark(name: str, rows: list[dict], out, *, device="cpu", **extra) -> None:
    """Write a benchmark's result rows with the machine they were measured on to JSON file `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"benchmark": name, **extra, "environment": describe_machine(device), "results": rows})
    print(f"wrote {out}")
