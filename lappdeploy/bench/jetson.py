"""Jetson power and state: tegrastats parsing, a background power sampler, energy integration, and the
board's power mode / jetson_clocks state. Standard library only (tools/jetson_power.py uses it without
torch).

tegrastats prints one line per interval. The rails appear as `NAME <instant>mW/<average>mW` on Orin
(JetPack 5/6) and as `NAME <instant>/<average>` (mW, no unit) on JetPack 4 boards (Nano, TX2, Xavier);
temperatures look similar (`CPU@44.5C`) and must not be taken for rails; `NC` rails are not connected.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PowerSampler",
    "TegrastatsSample",
    "energy_joules",
    "jetson_environment",
    "parse_tegrastats_line",
    "tegrastats_path",
    "total_power_mw",
]

log = logging.getLogger(__name__)

_CLOCK = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
# a rail: an upper-case name, then instant/average power in mW (the unit is absent on JetPack 4)
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ\s+(\d+)%")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}  # "RAM 2829/30536MB" is memory, not power
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power where the board measures it


@dataclass
class TegrastatsSample:
    time_s: float  # host time.perf_counter() when the line was read (or as given)
    rails: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (instant mW, average mW)
    gpu_load: float | None = None  # GR3D_FREQ, percent
    clock: str | None = None  # the "MM-DD-YYYY HH:MM:SS" prefix of newer tegrastats, when present


def parse_tegrastats_line(line: str, time_s: float = 0.0) -> TegrastatsSample | None:
    """One tegrastats line -> a sample, or None when the line is not tegrastats output."""
    if "RAM" not in line and not _RAIL.search(line):
        return None
    clock = _CLOCK.match(line)
    rails = {}
    for name, instant, average in _RAIL.findall(line):
        # memory figures end in MB ("RAM 2829/30536MB") and fail the lookahead; NC = not connected
        if name in _NOT_RAILS or name == "NC":
            continue
        rails[name] = (int(instant), int(average))
    load = _GPU_LOAD.search(line)
    if not rails and load is None:
        return None
    return TegrastatsSample(
        time_s=time_s,
        rails=rails,
        gpu_load=float(load.group(1)) if load else None,
        clock=clock.group(1) if clock else None,
    )


def total_power_mw(sample: TegrastatsSample) -> tuple[str, int]:
    """(rail name, instant mW) of the power of the whole module: its input rail (VDD_IN on Orin Nano/NX,
    Xavier NX and Nano; POM_5V_IN on TX2/Xavier) where the board measures one, else the sum of all rails
    (AGX Orin has no input rail; jetson_stats totals it the same way)."""
    for name in _INPUT_RAILS:
        if name in sample.rails:
            return name, sample.rails[name][0]
    names = sorted(sample.rails)
    return f"sum({','.join(names)})", sum(sample.rails[n][0] for n in names)


def _power_at(samples: Sequence[TegrastatsSample], t: float) -> float:
    """Total power (mW) at time t, linearly interpolated between the samples around it."""
    for a, b in itertools.pairwise(samples):
        if a.time_s <= t <= b.time_s:
            pa, pb = total_power_mw(a)[1], total_power_mw(b)[1]
            span = b.time_s - a.time_s
            return pa if span == 0 else pa + (pb - pa) * (t - a.time_s) / span
    return float(total_power_mw(samples[0] if t < samples[0].time_s else samples[-1])[1])


def energy_joules(samples: Sequence[TegrastatsSample], start_s: float, end_s: float) -> dict | None:
    """Energy (J) of the total power over [start_s, end_s] by the trapezoid rule on the sample times,
    the window's edges interpolated; None unless samples bracket the window (a sample at or before its
    start and one at or after its end), so a window between two samples is never extrapolated."""
    samples = sorted((s for s in samples if s.rails), key=lambda s: s.time_s)
    if len(samples) < 2 or end_s <= start_s or samples[0].time_s > start_s or samples[-1].time_s < end_s:
        return None
    inside = [s for s in samples if start_s < s.time_s < end_s]
    points = [(start_s, _power_at(samples, start_s))]
    points += [(s.time_s, float(total_power_mw(s)[1])) for s in inside]
    points.append((end_s, _power_at(samples, end_s)))
    millijoules = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(points))
    return {
        "energy_j": millijoules / 1e3,
        "mean_power_w": millijoules / 1e3 / (end_s - start_s),
        "rail": total_power_mw(samples[0])[0],
        "samples": len(inside) + 2,
    }


def tegrastats_path() -> str | None:
    found = shutil.which("tegrastats")
    if found:
        return found
    return "/usr/bin/tegrastats" if os.path.exists("/usr/bin/tegrastats") else None


class PowerSampler:
    """Runs tegrastats (or `command`) in the background and keeps its samples, stamped with the host's
    time.perf_counter() so they line up with the timing protocol's windows."""

    def __init__(self, interval_ms: int = 100, command: Sequence[str] | None = None) -> None:
        if command is None:
            path = tegrastats_path()
            if path is None:
                raise FileNotFoundError("tegrastats not found: power sampling needs a Jetson")
            command = [path, "--interval", str(int(interval_ms))]
        self._samples: list[TegrastatsSample] = []
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self._reader = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            sample = parse_tegrastats_line(line, time.perf_counter())
            if sample is not None:
                with self._lock:
                    self._samples.append(sample)

    @property
    def samples(self) -> list[TegrastatsSample]:
        with self._lock:
            return list(self._samples)

    def energy(self, start_s: float, end_s: float) -> dict | None:
        return energy_joules(self.samples, start_s, end_s)

    def wait_for_samples(self, count: int, timeout_s: float) -> bool:
        """Block until `count` samples arrived (or the timeout, in s, passed): True if they did."""
        deadline = time.perf_counter() + timeout_s
        while len(self.samples) < count and time.perf_counter() < deadline and self._reader.is_alive():
            time.sleep(0.01)
        return len(self.samples) >= count

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=5)

    def __enter__(self) -> PowerSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\0", "").strip()
    except OSError:
        return None


def jetson_environment(root: str | os.PathLike[str] = "/", nvpmodel: Sequence[str] = ("nvpmodel", "-q")) -> dict | None:
    """Model, L4T release, nvpmodel power mode and jetson_clocks state of a Jetson; None elsewhere.

    jetson_clocks is judged without root: it pins every CPU's minimum frequency to its maximum, so
    scaling_min_freq == scaling_max_freq on all CPUs means it is on (None when unreadable)."""
    root = Path(root)
    model = _read_text(root / "proc/device-tree/model") or ""
    release = _read_text(root / "etc/nv_tegra_release")
    if release is None and not any(k in model for k in ("NVIDIA Jetson", "Orin", "Xavier")):
        return None
    mode = None
    try:
        out = subprocess.run(list(nvpmodel), capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"NV Power Mode:\s*(\S+)", out)
        mode = found.group(1) if found else None
    except (OSError, subprocess.SubprocessError):
        pass
    pinned = []
    for cpufreq in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq")):
        low, high = _read_text(cpufreq / "scaling_min_freq"), _read_text(cpufreq / "scaling_max_freq")
        if low is not None and high is not None:
            pinned.append(low == high)
    return {
        "jetson_model": model or None,
        "l4t_release": release.splitlines()[0] if release else None,
        "power_mode": mode,
        "jetson_clocks": all(pinned) if pinned else None,
    }
