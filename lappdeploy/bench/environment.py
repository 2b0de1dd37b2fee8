"""What a latency number depends on besides the model: the machine, its GPU clocks and driver, and on a
Jetson its power mode (recorded with every bench record)."""

from __future__ import annotations

import shutil
import subprocess

import torch

from lappdeploy.bench.jetson import jetson_environment
from lappdeploy.environment import cpu_name, describe_machine, package_version

__all__ = ["capture_environment", "gpu_state"]

_GPU_QUERY = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit,pstate"


def gpu_state(index: int = 0) -> dict[str, str]:
    """Driver version and current clocks of GPU `index` from nvidia-smi (empty where it is absent: Jetson,
    CPU machines). Clocks in MHz, power limit in W; a GPU far below its max SM clock is throttling."""
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
