#!/usr/bin/env python3
"""Log a Jetson's power rails (tegrastats) while a command runs, and print mean power and energy.

    python tools/jetson_power.py --out power.jsonl -- bash trtexec.sh
    python tools/jetson_power.py --from-log tegrastats.log --interval-ms 100

The JSONL has one line per sample: {"t": seconds since the start, "rails": {name: [instant mW,
average mW]}, "gpu_load": percent}; it is written when the command ends (also on Ctrl-C). Total power
is the module's input rail (VDD_IN / POM_5V_IN), or the sum of the rails on AGX Orin/Xavier (no input
rail). The summary goes to stderr when wrapping a command (its stdout stays its own), to stdout with
--from-log. Recorded logs are timed by their "MM-DD-YYYY HH:MM:SS" prefixes when every line has one and
they increase, else spaced by --interval-ms. Exits with the command's exit code; 2 on bad input.
Standard library plus lappdeploy.bench.jetson (the one tegrastats parser; no torch needed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

try:
    from lappdeploy.bench.jetson import (
        PowerSampler,
        TegrastatsSample,
        energy_joules,
        parse_tegrastats_line,
        tegrastats_path,
    )
except ModuleNotFoundError as exc:  # run from a checkout where lappdeploy is not installed
    if exc.name != "lappdeploy":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lappdeploy.bench.jetson import (
        PowerSampler,
        TegrastatsSample,
        energy_joules,
        parse_tegrastats_line,
        tegrastats_path,
    )


def _fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 2


def _write_jsonl(path: Path, samples: Sequence[TegrastatsSample], start_s: float) -> None:
    """Atomically (a temp file in the same directory, then rename): a reader never sees half a file."""
    lines = [
        json.dumps({"t": round(s.time_s - start_s, 4), "rails": s.rails, "gpu_load": s.gpu_load}) + "\n"
        for s in samples
    ]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _summary(samples: Sequence[TegrastatsSample]) -> str:
    """Duration (s), mean total power (W), energy (J) and the rail, over the span of the samples."""
    powered = [s for s in samples if s.rails]
    if len(powered) < 2:
        return (
            f"{len(samples)} tegrastats samples, {len(powered)} with power rails: too few to integrate "
            "(run longer, or this board has no power monitor)"
        )
    start, end = powered[0].time_s, powered[-1].time_s
    energy = energy_joules(powered, start, end)
    if energy is None:  # every sample at the same time
        return f"{len(powered)} samples at one instant: nothing to integrate"
    return (
        f"{len(powered)} samples over {end - start:.2f} s: mean power {energy['mean_power_w']:.2f} W, "
        f"energy {energy['energy_j']:.2f} J (rail {energy['rail']})"
    )


def _clock_s(clock: str | None) -> float | None:
    """Seconds of a tegrastats "MM-DD-YYYY HH:MM:SS" prefix (read as UTC: only differences matter)."""
    if clock is None:
        return None
    return datetime.strptime(clock, "%m-%d-%Y %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def _read_log(path: Path, interval_ms: int) -> list[TegrastatsSample]:
    """The log's samples, timed by their clock prefixes if all have one and they increase (1 s
    resolution: intervals under 1 s repeat them), else spaced by the interval."""
    samples = [s for s in map(parse_tegrastats_line, path.read_text(errors="replace").splitlines()) if s]
    clocks = [_clock_s(s.clock) for s in samples]
    if clocks and None not in clocks and all(b > a for a, b in itertools.pairwise(clocks)):
        times = [c - clocks[0] for c in clocks]
    else:
        times = [i * interval_ms / 1e3 for i in range(len(samples))]
    for sample, t in zip(samples, times, strict=True):
        sample.time_s = t
    return samples


def _run(command: list[str]) -> int:
    """Run the command; on Ctrl-C pass the interrupt on and wait briefly, so the samples are still kept."""
    process = subprocess.Popen(command)
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=5)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            process.kill()
            code = process.wait()
    return code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSONL file of the samples (written when the command ends)")
    parser.add_argument("--interval-ms", type=int, default=100, help="tegrastats interval, ms (default 100)")
    parser.add_argument("--from-log", type=Path, help="summarize a recorded tegrastats log instead of sampling")
    # tests: a command line that prints tegrastats lines, run instead of tegrastats
    parser.add_argument("--tegrastats-command", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...: the command to run while sampling")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    if args.interval_ms <= 0:
        return _fail(f"--interval-ms must be > 0, got {args.interval_ms}")
    if args.out is not None and not args.out.parent.is_dir():
        return _fail(f"the directory of --out {args.out} does not exist")

    if args.from_log is not None:
        if command:
            return _fail("give either --from-log FILE or a command after --, not both")
        if not args.from_log.is_file():
            return _fail(f"{args.from_log} does not exist; give a recorded tegrastats log file")
        samples = _read_log(args.from_log, args.interval_ms)
        if not samples:
            return _fail(f"{args.from_log} holds no tegrastats lines")
        print(_summary(samples))
        if args.out is not None:
            _write_jsonl(args.out, samples, samples[0].time_s)
        return 0

    if not command:
        return _fail("give the command to run after --, e.g. `-- bash trtexec.sh` (or --from-log FILE)")
    if args.out is None:
        return _fail("--out FILE is needed to keep the samples")
    sampler_command = shlex.split(args.tegrastats_command) if args.tegrastats_command else None
    if sampler_command is None and tegrastats_path() is None:
        return _fail("tegrastats not found: run this on a Jetson, or summarize a recorded log with --from-log FILE")
    start = time.perf_counter()  # s; "t" in the JSONL counts from here
    try:
        sampler = PowerSampler(args.interval_ms, command=sampler_command)
    except OSError as exc:
        return _fail(f"cannot start {(sampler_command or ['tegrastats'])[0]!r}: {exc.strerror or exc}")
    with sampler:
        try:
            code = _run(command)
        except OSError as exc:
            return _fail(f"cannot run {command[0]!r}: {exc.strerror or exc}")
        ran_s = time.perf_counter() - start
        # one more sample after the command's end, so the span covers it
        sampler.wait_for_samples(len(sampler.samples) + 1, timeout_s=2 * args.interval_ms / 1e3 + 0.5)
    samples = sampler.samples
    _write_jsonl(args.out, samples, start)
    print(f"command exited with {code} after {ran_s:.2f} s; {_summary(samples)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
