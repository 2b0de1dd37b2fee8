"""Jetson power and state: tegrastats parsing, a background power sampler, energy integration, and the
board's power mode / jetson_clocks state. Standard library only, so tools/jetson_power.py runs on a
Jetson without torch.

tegrastats prints one line per interval. The power rails appear as `NAME <instant>mW/<average>mW` on
Orin (JetPack 5/6) and as `NAME <instant>/<average>` (mW, no unit) on JetPack 4 boards (Nano, TX2,
Xavier); temperatures look similar (`CPU@44.5C`) and must not be taken for rails; `NC` rails are not
connected. Units: power in mW (as tegrastats prints it), time in s (time.perf_counter()), energy in J.
"""

from __future__ import annotations

import bisect
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
# every tegrastats version prints RAM (and GR3D_FREQ where there is a GPU); a line with neither is not
# tegrastats output, whatever else it holds
_TEGRASTATS = re.compile(r"\bRAM \d+/\d+[kMG]B|\bGR3D_FREQ \d+%")
# a rail: an upper-case name, then instant/average power in mW (the unit is absent on JetPack 4); the
# lookahead rejects memory figures ("RAM 2829/30536MB", "IRAM 0/252kB(lfb") and temperatures have no "/"
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_GPU_LOAD = re.compile(r"\bGR3D_FREQ\s+(\d+(?:\.\d+)?)%")  # "87%@[1300,1300]", "99%@1300", "0%"
_NOT_CONNECTED = "NC"  # Orin carrier boards list unused INA3221 channels as "NC 0mW/0mW"
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # whole-module input power, where the board measures it


@dataclass
class TegrastatsSample:
    """One tegrastats line."""

    time_s: float  # s: host time.perf_counter() when the line was read (or the time given to the parser)
    rails: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (instant mW, average mW)
    gpu_load: float | None = None  # GR3D_FREQ, percent
    clock: str | None = None  # the "MM-DD-YYYY HH:MM:SS" prefix of newer tegrastats, when present


def parse_tegrastats_line(line: str, time_s: float = 0.0) -> TegrastatsSample | None:
    """One tegrastats line -> a sample stamped `time_s` (s), or None when the line is not tegrastats
    output (blank lines, warnings, a shell's noise in a recorded log)."""
    if not _TEGRASTATS.search(line):
        return None
    clock = _CLOCK.match(line)
    rails = {}
    for name, instant, average in _RAIL.findall(line):
        if name != _NOT_CONNECTED:
            rails[name] = (int(instant), int(average))  # mW
    load = _GPU_LOAD.search(line)
    return TegrastatsSample(
        time_s=time_s,
        rails=rails,
        gpu_load=float(load.group(1)) if load else None,
        clock=clock.group(1) if clock else None,
    )


def total_power_mw(sample: TegrastatsSample) -> tuple[str, int]:
    """(rail name, instant mW) of the power of the whole module.

    The input rail where the board measures one: VDD_IN (Orin Nano/NX, Xavier NX, Nano 4GB, TX2 NX) or
    POM_5V_IN (Nano, TX2). AGX Orin and AGX Xavier have no input rail, only the module's supply rails, so
    their sum ("sum(VDD_GPU_SOC,VDD_CPU_CV,...)", in tegrastats order) stands for the total; jetson_stats
    (jtop.core.power.total_power) chooses the same way. Raises ValueError on a sample without rails
    (Jetson Nano 2GB has no power monitor)."""
    if not sample.rails:
        raise ValueError("this tegrastats sample has no power rails (the board has no power monitor)")
    for name in _INPUT_RAILS:
        if name in sample.rails:
            return name, sample.rails[name][0]
    return f"sum({','.join(sample.rails)})", sum(instant for instant, _ in sample.rails.values())


def _lerp(t: float, t0: float, p0: float, t1: float, p1: float) -> float:
    return p0 + (p1 - p0) * (t - t0) / (t1 - t0)


def energy_joules(samples: Sequence[TegrastatsSample], start_s: float, end_s: float) -> dict | None:
    """Energy of the total power (total_power_mw) over [start_s, end_s] (s), by the trapezoid rule.

    The samples inside the window are used as they are; the power at the window's edges is interpolated
    between the samples around each edge, so the integral is clipped to the window exactly. None unless
    samples bracket the window (one at or before its start, one at or after its end: at least 2 around
    it): a window the sampler did not cover is never extrapolated, which would report made-up energy.
    Returns {"energy_j": J, "mean_power_w": W, "rail": the total's name, "samples": samples used}."""
    timed = sorted((s for s in samples if s.rails), key=lambda s: s.time_s)
    if len(timed) < 2 or not end_s > start_s:
        return None
    times = [s.time_s for s in timed]
    first = bisect.bisect_right(times, start_s) - 1  # the last sample at or before the start
    last = bisect.bisect_left(times, end_s)  # the first sample at or after the end
    if first < 0 or last >= len(timed):
        return None
    used = timed[first : last + 1]  # >= 2 samples; the spans at both edges are > 0 s
    points = [(s.time_s, float(total_power_mw(s)[1])) for s in used]  # (s, mW)
    (t0, p0), (t1, p1) = points[0], points[1]
    (u0, q0), (u1, q1) = points[-2], points[-1]
    points[0] = (start_s, _lerp(start_s, t0, p0, t1, p1))
    points[-1] = (end_s, _lerp(end_s, u0, q0, u1, q1))
    millijoules = sum((b - a) * (pa + pb) / 2 for (a, pa), (b, pb) in itertools.pairwise(points))  # s * mW
    return {
        "energy_j": millijoules / 1e3,
        "mean_power_w": millijoules / 1e3 / (end_s - start_s),
        "rail": total_power_mw(used[0])[0],
        "samples": len(used),
    }


def tegrastats_path() -> str | None:
    """tegrastats on PATH, else where JetPack installs it (/usr/bin is not on every service's PATH)."""
    found = shutil.which("tegrastats")
    if found:
        return found
    return "/usr/bin/tegrastats" if os.path.exists("/usr/bin/tegrastats") else None


class PowerSampler:
    """Runs `tegrastats --interval N` (or `command`) in the background and keeps its samples, stamped with
    the host's time.perf_counter() when each line is read, so they line up with the timing protocol's
    windows (s). A context manager: the process is stopped on exit. If it dies early, the samples read
    so far are kept (and a warning logged); energy() then returns None for windows it did not cover."""

    tegrastats_path = staticmethod(tegrastats_path)

    def __init__(self, interval_ms: int = 100, command: Sequence[str] | None = None) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        if command is None:
            path = tegrastats_path()
            if path is None:
                raise FileNotFoundError("tegrastats not found: power sampling needs a Jetson")
            command = [path, "--interval", str(int(interval_ms))]
        self.command = list(command)
        self._samples: list[TegrastatsSample] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name="tegrastats-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        try:
            for line in stream:
                sample = parse_tegrastats_line(line, time.perf_counter())
                if sample is not None:
                    with self._lock:
                        self._samples.append(sample)
        except (OSError, ValueError):  # the pipe closed under us by stop()
            pass
        if not self._stopping:
            log.warning(
                "%s stopped printing after %d samples (exit code %s)",
                self.command[0],
                len(self._samples),
                self._process.poll(),
            )

    @property
    def samples(self) -> list[TegrastatsSample]:
        """A copy of the samples so far (the reader keeps appending)."""
        with self._lock:
            return list(self._samples)

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def energy(self, start_s: float, end_s: float) -> dict | None:
        """energy_joules() of the samples so far over [start_s, end_s] (time.perf_counter() s)."""
        return energy_joules(self.samples, start_s, end_s)

    def wait_for_samples(self, count: int, timeout_s: float) -> bool:
        """Block until `count` samples arrived (or the timeout, in s, passed, or the process ended): True
        if they did. The last window of a measurement needs a sample after its end."""
        deadline = time.perf_counter() + timeout_s
        while len(self.samples) < count and time.perf_counter() < deadline and self._reader.is_alive():
            time.sleep(0.01)
        return len(self.samples) >= count

    def stop(self) -> None:
        """Terminate the process (kill it if it ignores SIGTERM for 5 s) and the reader; idempotent."""
        self._stopping = True
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=5)
        if self._process.stdout is not None and not self._reader.is_alive():
            self._process.stdout.close()

    def __enter__(self) -> PowerSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").replace("\0", "").strip()  # device-tree strings end in NUL
    except OSError:
        return None


def _online_cpus(cpu_dir: Path) -> set[int] | None:
    """Online CPU numbers from cpu/online ("0-3,6"), or None when the file is unreadable."""
    text = _read_text(cpu_dir / "online")
    if not text:
        return None
    online: set[int] = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            online.update(range(int(low), int(high or low) + 1))
    except ValueError:
        return None
    return online


def _clocks_pinned(root: Path) -> bool | None:
    """Whether jetson_clocks is on, judged without root: it pins every online CPU's minimum frequency to
    its maximum, so scaling_min_freq == scaling_max_freq on all of them means it ran (nvpmodel and the
    governor leave min below max). CPUs only: the GPU/EMC devfreq paths differ per board. None when no
    cpufreq file is readable."""
    cpu_dir = root / "sys/devices/system/cpu"
    online = _online_cpus(cpu_dir)
    pinned = []
    for cpufreq in sorted(cpu_dir.glob("cpu[0-9]*/cpufreq")):
        number = re.fullmatch(r"cpu(\d+)", cpufreq.parent.name)
        if number is None or (online is not None and int(number.group(1)) not in online):
            continue  # offline cores (fewer-core power modes) keep their own limits
        low, high = _read_text(cpufreq / "scaling_min_freq"), _read_text(cpufreq / "scaling_max_freq")
        if low and high:
            pinned.append(low == high)
    return all(pinned) if pinned else None


def _power_mode(nvpmodel: Sequence[str]) -> str | None:
    """The mode name from `nvpmodel -q` ("NV Power Mode: MAXN" then the mode number), None if unavailable."""
    try:
        out = subprocess.run(
            list(nvpmodel), capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvpmodel unavailable: %s", exc)
        return None
    for line in out.splitlines():
        found = re.match(r"\s*NV Power Mode:\s*(.+?)\s*$", line)
        if found:
            return found.group(1)
    return None


def jetson_environment(
    *, root: str | os.PathLike[str] = "/", nvpmodel: Sequence[str] = ("nvpmodel", "-q")
) -> dict | None:
    """Model, L4T release, nvpmodel power mode and jetson_clocks state of a Jetson; None elsewhere.

    A Jetson has /etc/nv_tegra_release or a device-tree model naming it. `root` (the filesystem root) and
    `nvpmodel` (the query command) are injectable for tests. See _clocks_pinned for the jetson_clocks
    heuristic."""
    root = Path(root)
    model = _read_text(root / "proc/device-tree/model") or ""
    release = _read_text(root / "etc/nv_tegra_release")
    if release is None and not any(k in model for k in ("NVIDIA Jetson", "Orin", "Xavier")):
        return None
    return {
        "jetson_model": model or None,
        "l4t_release": release.splitlines()[0] if release else None,
        "power_mode": _power_mode(nvpmodel),
        "jetson_clocks": _clocks_pinned(root),
    }
